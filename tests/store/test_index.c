/* Tests of the store through its public API (store/index.c, publish.c,
 * version.c, gc.c, export.c) on a fresh temp root per test.
 *
 * The inputs are small safetensors files written here: a 1 MiB tensor (big
 * enough for a shard of its own, so two versions can share it) and a few
 * small ones (packed into one shard per file). Data comes from a seeded
 * PRNG, so a tensor with the same seed has the same bytes in every file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "store_int.h"

#define MIB (1u << 20)

/* ---- scratch folders ------------------------------------------------------------- */

struct env {
	char base[64];
	char root[128];
	char in[128];
	char out[128];
	qv_store *s;
};

static void store_open(struct env *e)
{
	char err[512] = "";
	int rc = qv_store_open(e->root, &e->s, err, sizeof(err));
	if (rc)
		fail_msg("qv_store_open(%s): %d %s", e->root, rc, err);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	snprintf(e->base, sizeof(e->base), "/tmp/qv-index-XXXXXX");
	if (!mkdtemp(e->base)) {
		free(e);
		return -1;
	}
	snprintf(e->root, sizeof(e->root), "%s/store", e->base);
	snprintf(e->in, sizeof(e->in), "%s/in", e->base);
	snprintf(e->out, sizeof(e->out), "%s/out", e->base);
	if (mkdir(e->in, 0755) < 0 || mkdir(e->out, 0755) < 0)
		return -1;
	char err[512] = "";
	if (qv_store_open(e->root, &e->s, err, sizeof(err))) {
		fprintf(stderr, "qv_store_open: %s\n", err);
		return -1;
	}
	*state = e;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	qv_store_close(e->s);
	nftw(e->base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(e);
	return 0;
}

static void store_reopen(struct env *e)
{
	qv_store_close(e->s);
	e->s = NULL;
	store_open(e);
}

static size_t n_regular;
static int count_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if (flag == FTW_F && S_ISREG(st->st_mode))
		n_regular++;
	return 0;
}

/* Regular files under dir (recursively). */
static size_t count_files(const char *dir)
{
	n_regular = 0;
	nftw(dir, count_one, 16, FTW_PHYS);
	return n_regular;
}

static size_t count_shards(const struct env *e)
{
	char p[256];
	snprintf(p, sizeof(p), "%s/shards", e->root);
	return count_files(p);
}

static size_t count_tmp(const struct env *e)
{
	char p[256];
	snprintf(p, sizeof(p), "%s/tmp", e->root);
	return count_files(p);
}

static void shard_file(const struct env *e, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t n)
{
	char hex[QV_HEX_LEN + 1];
	qv_digest_hex(d, hex);
	snprintf(buf, n, "%s/shards/%.2s/%.2s/%s", e->root, hex, hex + 2, hex);
}

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static uint64_t file_size(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		fail_msg("stat %s: %s", path, strerror(errno));
	return (uint64_t)st.st_size;
}

static void mkdir_p(const char *path)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		mkdir(buf, 0755);
		*p = '/';
	}
	mkdir(buf, 0755);
}

/* ---- input files ------------------------------------------------------------------ */

static void fill(uint8_t *buf, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 0x9e3779b9u;
	if (!x)
		x = 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
}

static void write_bytes(const char *path, const void *buf, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	if (n && fwrite(buf, 1, n, f) != n)
		fail_msg("%s: short write", path);
	assert_int_equal(fclose(f), 0);
}

static void write_random(const char *path, size_t n, uint32_t seed)
{
	uint8_t *buf = malloc(n ? n : 1);
	assert_non_null(buf);
	fill(buf, n, seed);
	write_bytes(path, buf, n);
	free(buf);
}

static uint8_t *read_all(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *buf = malloc((size_t)len + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return buf;
}

static void assert_same_file(const char *a, const char *b)
{
	size_t na, nb;
	uint8_t *x = read_all(a, &na), *y = read_all(b, &nb);
	if (na != nb)
		fail_msg("%s is %zu bytes, %s is %zu", a, na, b, nb);
	for (size_t i = 0; i < na; i++)
		if (x[i] != y[i])
			fail_msg("%s and %s differ at byte %zu", a, b, i);
	free(x);
	free(y);
}

typedef struct tspec {
	const char *name;
	size_t bytes;
	uint32_t seed;
} tspec;

/* A U8 tensor per spec, in the given order; the header is padded with
 * spaces to a multiple of 8, as real writers do. */
static void write_st(const char *path, const tspec *t, size_t n)
{
	char hdr[4096];
	size_t h = 0, off = 0, data_len = 0;
	h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (size_t i = 0; i < n; i++) {
		h += (size_t)snprintf(hdr + h, sizeof(hdr) - h,
		                      ",\"%s\":{\"dtype\":\"U8\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
		                      t[i].name, t[i].bytes, off, off + t[i].bytes);
		off += t[i].bytes;
	}
	hdr[h++] = '}';
	while (h % 8)
		hdr[h++] = ' ';
	data_len = off;
	uint8_t *buf = malloc(8 + h + data_len);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
	memcpy(buf + 8, hdr, h);
	off = 8 + h;
	for (size_t i = 0; i < n; i++) {
		fill(buf + off, t[i].bytes, t[i].seed);
		off += t[i].bytes;
	}
	write_bytes(path, buf, off);
	free(buf);
}

/* A and B share tensor "w" (1 MiB, its own shard); their small tensors
 * differ, so each has its own pack. C shares nothing. */
static const tspec SPEC_A[] = {{"w", MIB, 1}, {"b1", 100, 2}, {"b2", 5000, 3}};
static const tspec SPEC_B[] = {{"w", MIB, 1}, {"b1", 100, 4}, {"b2", 5000, 3}};
static const tspec SPEC_C[] = {{"x", 300, 9}};
#define PACK_SIZE (QV_ALIGN + 5000) /* b1 at 0, b2 at 4096 */

struct inputs {
	char a[256], b[256], c[256];
};

static void make_inputs(const struct env *e, struct inputs *in)
{
	snprintf(in->a, sizeof(in->a), "%s/A.safetensors", e->in);
	snprintf(in->b, sizeof(in->b), "%s/B.safetensors", e->in);
	snprintf(in->c, sizeof(in->c), "%s/C.safetensors", e->in);
	write_st(in->a, SPEC_A, QV_ARRAY_LEN(SPEC_A));
	write_st(in->b, SPEC_B, QV_ARRAY_LEN(SPEC_B));
	write_st(in->c, SPEC_C, QV_ARRAY_LEN(SPEC_C));
}

/* ---- API helpers ---------------------------------------------------------------------- */

static void publish_ok(struct env *e, const char *model, const char *path,
                       const qv_publish_opts *o, qv_publish_result *res)
{
	qv_publish_result r;
	int rc = qv_publish(e->s, model, path, o, res ? res : &r);
	if (rc)
		fail_msg("publish %s as %s: %d (%s): %s", path, model, rc, qv_strerror(rc),
		         qv_store_errmsg(e->s));
}

static qv_version *get_ok(struct env *e, const char *model, const char *ref, unsigned flags)
{
	qv_version *v = NULL;
	int rc = qv_version_get(e->s, model, ref, flags, &v);
	if (rc)
		fail_msg("get %s@%s: %d: %s", model, ref ? ref : "(current)", rc,
		         qv_store_errmsg(e->s));
	return v;
}

static void expect_label(struct env *e, const char *model, const char *ref, const char *label)
{
	qv_version *v = get_ok(e, model, ref, 0);
	if (strcmp(v->label, label) != 0)
		fail_msg("%s@%s resolves to %s, want %s", model, ref ? ref : "(current)", v->label,
		         label);
	qv_version_free(v);
}

static void expect_get_err(struct env *e, const char *model, const char *ref, int code)
{
	qv_version *v = (qv_version *)1;
	int rc = qv_version_get(e->s, model, ref, 0, &v);
	if (rc != code)
		fail_msg("get %s@%s: rc %d, want %d", model, ref ? ref : "(current)", rc, code);
	assert_null(v);
	assert_true(strlen(qv_store_errmsg(e->s)) > 0);
}

static void expect_errmsg(struct env *e, const char *word)
{
	if (!strstr(qv_store_errmsg(e->s), word))
		fail_msg("message '%s' lacks '%s'", qv_store_errmsg(e->s), word);
}

static int has_alias(const qv_version *v, const char *name)
{
	for (size_t i = 0; i < v->n_aliases; i++)
		if (strcmp(v->aliases[i], name) == 0)
			return 1;
	return 0;
}

static qv_history *history_ok(struct env *e, const char *model)
{
	qv_history *h = NULL;
	int rc = qv_history_get(e->s, model, &h);
	if (rc)
		fail_msg("history %s: %d: %s", model, rc, qv_store_errmsg(e->s));
	return h;
}

static void expect_entry(const qv_history *h, size_t i, const char *action, const char *from,
                         const char *to)
{
	if (i >= h->n)
		fail_msg("history has %zu entries, want entry %zu", h->n, i);
	const qv_history_entry *x = &h->e[i];
	if (strcmp(x->action, action) || strcmp(x->from, from) || strcmp(x->to, to))
		fail_msg("history[%zu] = (%s, '%s' -> '%s'), want (%s, '%s' -> '%s')", i, x->action,
		         x->from, x->to, action, from, to);
}

static size_t history_len(struct env *e, const char *model)
{
	qv_history *h = history_ok(e, model);
	size_t n = h->n;
	qv_history_free(h);
	return n;
}

static qv_verify_report *verify_ok(struct env *e, const char *model, const char *ref)
{
	qv_verify_report *r = NULL;
	int rc = qv_verify(e->s, model, ref, &r, NULL, NULL);
	if (rc)
		fail_msg("verify: %d: %s", rc, qv_store_errmsg(e->s));
	return r;
}

static const qv_tensor *find_tensor(const qv_version *v, const char *name)
{
	for (size_t i = 0; i < v->n_files; i++)
		for (size_t k = 0; k < v->files[i].n_tensors; k++)
			if (strcmp(v->files[i].tensors[k].name, name) == 0)
				return &v->files[i].tensors[k];
	fail_msg("%s@%s has no tensor %s", v->model, v->label, name);
	return NULL;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_publish_and_get(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	assert_string_equal(qv_store_root(e->s), e->root);

	qv_publish_result r1, r2;
	publish_ok(e, "m", in.a, NULL, &r1);
	assert_string_equal(r1.label, "v1");
	assert_int_equal(r1.files, 1);
	assert_int_equal(r1.tensors, 3);
	assert_int_equal(r1.bytes, file_size(in.a));
	assert_int_equal(r1.shards, 2);
	assert_int_equal(r1.new_shards, 2);
	assert_int_equal(r1.new_bytes, MIB + PACK_SIZE);
	assert_int_equal(count_shards(e), 2);
	assert_int_equal(count_tmp(e), 0);

	qv_publish_opts o = {.message = "second one"};
	publish_ok(e, "m", in.b, &o, &r2);
	assert_string_equal(r2.label, "v2");
	assert_int_equal(r2.shards, 2);
	assert_int_equal(r2.new_shards, 1); /* "w" is shared with v1 */
	assert_int_equal(r2.new_bytes, PACK_SIZE);
	assert_memory_not_equal(r1.digest, r2.digest, QV_DIGEST_LEN);
	assert_int_equal(count_shards(e), 3);

	/* current */
	qv_version *v = get_ok(e, "m", NULL, 0);
	assert_string_equal(v->model, "m");
	assert_string_equal(v->label, "v2");
	assert_memory_equal(v->digest, r2.digest, QV_DIGEST_LEN);
	assert_int_equal(v->is_current, 1);
	assert_string_equal(v->parent, "v1");
	assert_string_equal(v->message, "second one");
	assert_int_equal(v->n_aliases, 1);
	assert_string_equal(v->aliases[0], "current");
	assert_int_equal(v->single_file, 1);
	assert_int_equal(v->n_tensors, 3);
	assert_int_equal(v->bytes, file_size(in.b));
	assert_int_equal(v->n_files, 0);
	assert_true(v->created_ns > 0);
	qv_version_free(v);
	expect_label(e, "m", "current", "v2");
	expect_label(e, "m", "", "v2");

	/* by label, with the manifest */
	v = get_ok(e, "m", "v1", QV_WITH_MANIFEST);
	assert_string_equal(v->label, "v1");
	assert_int_equal(v->is_current, 0);
	assert_int_equal(v->n_aliases, 0);
	assert_string_equal(v->parent, "");
	assert_string_equal(v->message, "");
	assert_int_equal(v->n_files, 1);
	const qv_file *f = &v->files[0];
	assert_string_equal(f->name, "A.safetensors");
	assert_int_equal(f->safetensors, 1);
	assert_int_equal(f->size, file_size(in.a));
	assert_int_equal(f->n_tensors, 3);
	{
		size_t n;
		uint8_t *raw = read_all(in.a, &n);
		uint64_t hl = 0;
		for (int i = 7; i >= 0; i--)
			hl = hl << 8 | raw[i];
		assert_int_equal(f->header_len, hl);
		assert_memory_equal(f->header, raw + 8, hl);
		free(raw);
	}
	assert_string_equal(f->tensors[0].name, "w");
	assert_int_equal(f->tensors[0].bytes, MIB);
	assert_int_equal(f->tensors[0].shard_offset, 0);
	assert_string_equal(f->tensors[1].name, "b1");
	assert_int_equal(f->tensors[1].data_offset, MIB);
	assert_int_equal(f->tensors[1].shard_offset, 0);
	assert_string_equal(f->tensors[2].name, "b2");
	assert_int_equal(f->tensors[2].shard_offset, QV_ALIGN);
	assert_memory_equal(f->tensors[1].shard, f->tensors[2].shard, QV_DIGEST_LEN);
	assert_memory_not_equal(f->tensors[0].shard, f->tensors[1].shard, QV_DIGEST_LEN);
	char path[512];
	shard_file(e, f->tensors[0].shard, path, sizeof(path));
	assert_int_equal(file_size(path), MIB);
	shard_file(e, f->tensors[1].shard, path, sizeof(path));
	assert_int_equal(file_size(path), PACK_SIZE);
	qv_version_free(v);

	/* by digest prefix: the shortest unique one of 4+ digits, sha256:, full */
	char h1[QV_HEX_LEN + 1], h2[QV_HEX_LEN + 1], ref[80];
	qv_digest_hex(r1.digest, h1);
	qv_digest_hex(r2.digest, h2);
	size_t l = 4;
	while (strncmp(h1, h2, l) == 0)
		l++;
	snprintf(ref, sizeof(ref), "%.*s", (int)l, h1);
	expect_label(e, "m", ref, "v1");
	snprintf(ref, sizeof(ref), "%.*s", (int)l, h2);
	expect_label(e, "m", ref, "v2");
	snprintf(ref, sizeof(ref), "sha256:%.*s", (int)l, h1);
	expect_label(e, "m", ref, "v1");
	snprintf(ref, sizeof(ref), "sha256:%s", h2);
	expect_label(e, "m", ref, "v2");
	expect_label(e, "m", h1, "v1");
	snprintf(ref, sizeof(ref), "%.3s", h1); /* too short */
	expect_get_err(e, "m", ref, QV_ENOTFOUND);
	snprintf(ref, sizeof(ref), "%.63s%c", h1, h1[63] == '0' ? '1' : '0'); /* last digit off */
	expect_get_err(e, "m", ref, QV_ENOTFOUND);

	expect_get_err(e, "m", "nope", QV_ENOTFOUND);
	expect_get_err(e, "m", "v3", QV_ENOTFOUND);
	expect_get_err(e, "other", NULL, QV_ENOTFOUND);
	expect_get_err(e, "other", "v1", QV_ENOTFOUND);
	expect_get_err(e, "../x", "v1", QV_ENAME);

	/* everything is still there through a new handle */
	store_reopen(e);
	v = get_ok(e, "m", NULL, 0);
	assert_string_equal(v->label, "v2");
	assert_memory_equal(v->digest, r2.digest, QV_DIGEST_LEN);
	assert_string_equal(v->message, "second one");
	qv_version_free(v);
	v = get_ok(e, "m", "v1", QV_WITH_MANIFEST);
	assert_memory_equal(v->digest, r1.digest, QV_DIGEST_LEN);
	assert_int_equal(v->n_files, 1);
	assert_int_equal(v->files[0].n_tensors, 3);
	qv_version_free(v);
	/* the next default label continues the sequence */
	qv_publish_result r3;
	publish_ok(e, "m", in.c, NULL, &r3);
	assert_string_equal(r3.label, "v3");
}

static void test_publish_label_and_failures(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);

	qv_publish_result r1, r;
	qv_publish_opts o = {.label = "prod-1"};
	publish_ok(e, "m", in.a, &o, &r1);
	assert_string_equal(r1.label, "prod-1");
	expect_label(e, "m", NULL, "prod-1");
	size_t shards = count_shards(e), hist = history_len(e, "m");
	assert_int_equal(shards, 2);
	assert_int_equal(hist, 1);

	/* the label is taken: QV_EEXIST and nothing changes */
	int rc = qv_publish(e->s, "m", in.b, &o, &r);
	assert_int_equal(rc, QV_EEXIST);
	expect_errmsg(e, "already exists");

	/* other bad input */
	qv_publish_opts bad = {.label = "a/b"};
	assert_int_equal(qv_publish(e->s, "m", in.b, &bad, &r), QV_ENAME);
	bad.label = "..";
	assert_int_equal(qv_publish(e->s, "m", in.b, &bad, &r), QV_ENAME);
	const char *bad_alias[] = {"ok", "not ok"};
	qv_publish_opts ba = {.aliases = bad_alias, .n_aliases = 2};
	assert_int_equal(qv_publish(e->s, "m", in.b, &ba, &r), QV_ENAME);
	assert_int_equal(qv_publish(e->s, "bad model", in.b, NULL, &r), QV_ENAME);
	assert_int_equal(qv_publish(e->s, "/abs", in.b, NULL, &r), QV_ENAME);
	char *msg = malloc(QV_MESSAGE_MAX + 2);
	assert_non_null(msg);
	memset(msg, 'x', QV_MESSAGE_MAX + 1);
	msg[QV_MESSAGE_MAX + 1] = 0;
	qv_publish_opts om = {.message = msg};
	assert_int_equal(qv_publish(e->s, "m", in.b, &om, &r), QV_ELIMIT);
	free(msg);

	char p[512];
	snprintf(p, sizeof(p), "%s/weights.bin", e->in);
	write_random(p, 64, 3);
	assert_int_equal(qv_publish(e->s, "m", p, NULL, &r), QV_EFORMAT);
	snprintf(p, sizeof(p), "%s/short.safetensors", e->in);
	write_bytes(p, "\x10\x00\x00", 3);
	assert_int_equal(qv_publish(e->s, "m", p, NULL, &r), QV_EFORMAT);
	expect_errmsg(e, "short.safetensors");
	snprintf(p, sizeof(p), "%s/gap.safetensors", e->in);
	{
		/* valid JSON, 4 data bytes not covered by any tensor */
		const char json[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
		uint8_t body[8 + sizeof(json) + 8] = {0};
		body[0] = (uint8_t)(sizeof(json) - 1);
		memcpy(body + 8, json, sizeof(json) - 1);
		memcpy(body + 8 + sizeof(json) - 1, "abcdefgh", 8);
		write_bytes(p, body, 8 + sizeof(json) - 1 + 8);
	}
	assert_int_equal(qv_publish(e->s, "m", p, NULL, &r), QV_EFORMAT);
	expect_errmsg(e, "not covered");
	snprintf(p, sizeof(p), "%s/missing.safetensors", e->in);
	assert_int_equal(qv_publish(e->s, "m", p, NULL, &r), -ENOENT);
	snprintf(p, sizeof(p), "%s/emptydir", e->in);
	mkdir_p(p);
	assert_int_equal(qv_publish(e->s, "m", p, NULL, &r), QV_EFORMAT);

	/* after all of that: the store is as it was */
	assert_int_equal(count_shards(e), shards);
	assert_int_equal(count_tmp(e), 0);
	assert_int_equal(history_len(e, "m"), hist);
	qv_version_list *l = NULL;
	assert_int_equal(qv_version_list_get(e->s, "m", &l), 0);
	assert_int_equal(l->n, 1);
	assert_string_equal(l->v[0].label, "prod-1");
	qv_version_list_free(l);
	qv_version *v = get_ok(e, "m", NULL, 0);
	assert_string_equal(v->label, "prod-1");
	assert_memory_equal(v->digest, r1.digest, QV_DIGEST_LEN);
	qv_version_free(v);
	expect_get_err(e, "bad model", NULL, QV_ENAME);

	/* a default label still works after a chosen one */
	qv_publish_result r2;
	publish_ok(e, "m", in.b, NULL, &r2);
	assert_true(r2.label[0] == 'v');
	expect_label(e, "m", NULL, r2.label);
	/* and a chosen label that looks like a default one is honoured */
	qv_publish_opts o9 = {.label = "v9"};
	publish_ok(e, "m", in.c, &o9, &r);
	assert_string_equal(r.label, "v9");
}

static void test_no_activate_and_aliases(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);

	publish_ok(e, "m", in.a, NULL, NULL);
	const char *aliases[] = {"staging", "canary"};
	qv_publish_opts o = {.no_activate = 1, .aliases = aliases, .n_aliases = 2};
	qv_publish_result r;
	publish_ok(e, "m", in.b, &o, &r);
	assert_string_equal(r.label, "v2");

	expect_label(e, "m", NULL, "v1");
	qv_version *v = get_ok(e, "m", "staging", 0);
	assert_string_equal(v->label, "v2");
	assert_int_equal(v->is_current, 0);
	assert_int_equal(v->n_aliases, 2);
	assert_true(has_alias(v, "staging"));
	assert_true(has_alias(v, "canary"));
	assert_string_equal(v->parent, "v1");
	qv_version_free(v);
	expect_label(e, "m", "canary", "v2");

	qv_history *h = history_ok(e, "m");
	assert_int_equal(h->n, 1);
	expect_entry(h, 0, "publish", "", "v1");
	qv_history_free(h);

	qv_switch_result sr;
	assert_int_equal(qv_activate(e->s, "m", "staging", &sr), 0);
	assert_string_equal(sr.from, "v1");
	assert_string_equal(sr.to, "v2");
	v = get_ok(e, "m", NULL, 0);
	assert_string_equal(v->label, "v2");
	assert_int_equal(v->is_current, 1);
	assert_int_equal(v->n_aliases, 3);
	assert_true(has_alias(v, "current"));
	qv_version_free(v);
	h = history_ok(e, "m");
	assert_int_equal(h->n, 2);
	expect_entry(h, 1, "activate", "v1", "v2");
	qv_history_free(h);

	/* a failed activate changes nothing */
	assert_int_equal(qv_activate(e->s, "m", "v9", &sr), QV_ENOTFOUND);
	assert_int_equal(qv_activate(e->s, "nomodel", "v1", &sr), QV_ENOTFOUND);
	assert_int_equal(qv_activate(e->s, "a//b", "v1", &sr), QV_ENAME);
	expect_label(e, "m", NULL, "v2");
	assert_int_equal(history_len(e, "m"), 2);

	/* activating the current version is a no-op in history */
	assert_int_equal(qv_activate(e->s, "m", "v2", &sr), 0);
	assert_string_equal(sr.from, "v2");
	assert_string_equal(sr.to, "v2");
	assert_int_equal(history_len(e, "m"), 2);

	/* by digest prefix */
	char hex[QV_HEX_LEN + 1], ref[16];
	v = get_ok(e, "m", "v1", 0);
	qv_digest_hex(v->digest, hex);
	qv_version_free(v);
	snprintf(ref, sizeof(ref), "%.10s", hex);
	assert_int_equal(qv_activate(e->s, "m", ref, &sr), 0);
	assert_string_equal(sr.to, "v1");
	expect_label(e, "m", NULL, "v1");
}

static void test_rollback(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "m", in.a, NULL, NULL);
	publish_ok(e, "m", in.b, NULL, NULL);
	publish_ok(e, "m", in.c, NULL, NULL);
	expect_label(e, "m", NULL, "v3");

	qv_switch_result sr;
	assert_int_equal(qv_rollback(e->s, "m", NULL, &sr), 0);
	assert_string_equal(sr.from, "v3");
	assert_string_equal(sr.to, "v2");
	expect_label(e, "m", NULL, "v2");

	assert_int_equal(qv_rollback(e->s, "m", "v1", &sr), 0);
	assert_string_equal(sr.from, "v2");
	assert_string_equal(sr.to, "v1");
	expect_label(e, "m", NULL, "v1");

	qv_history *h = history_ok(e, "m");
	assert_int_equal(h->n, 5);
	expect_entry(h, 0, "publish", "", "v1");
	expect_entry(h, 1, "publish", "v1", "v2");
	expect_entry(h, 2, "publish", "v2", "v3");
	expect_entry(h, 3, "rollback", "v3", "v2");
	expect_entry(h, 4, "rollback", "v2", "v1");
	qv_history_free(h);

	/* explicit target that does not exist */
	assert_int_equal(qv_rollback(e->s, "m", "v7", &sr), QV_ENOTFOUND);
	expect_label(e, "m", NULL, "v1");

	/* nothing to roll back to */
	publish_ok(e, "solo", in.a, NULL, NULL);
	assert_int_equal(qv_rollback(e->s, "solo", NULL, &sr), QV_ENOTFOUND);
	expect_label(e, "solo", NULL, "v1");
	assert_int_equal(qv_rollback(e->s, "ghost", NULL, &sr), QV_ENOTFOUND);

	/* the previous version has been removed */
	publish_ok(e, "r", in.a, NULL, NULL);
	publish_ok(e, "r", in.b, NULL, NULL);
	qv_free_result fr;
	assert_int_equal(qv_version_rm(e->s, "r", "v1", 0, &fr), 0);
	assert_int_equal(qv_rollback(e->s, "r", NULL, &sr), QV_ENOTFOUND);
	expect_errmsg(e, "removed");
	expect_label(e, "r", NULL, "v2");
}

static void test_alias(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	qv_publish_result r1;
	publish_ok(e, "m", in.a, NULL, &r1);
	publish_ok(e, "m", in.b, NULL, NULL);

	assert_int_equal(qv_alias_set(e->s, "m", "stable", "v1"), 0);
	expect_label(e, "m", "stable", "v1");
	qv_version *v = get_ok(e, "m", "v1", 0);
	assert_int_equal(v->n_aliases, 1);
	assert_string_equal(v->aliases[0], "stable");
	assert_int_equal(v->is_current, 0);
	qv_version_free(v);

	/* moving it */
	assert_int_equal(qv_alias_set(e->s, "m", "stable", "current"), 0);
	expect_label(e, "m", "stable", "v2");
	v = get_ok(e, "m", "v1", 0);
	assert_int_equal(v->n_aliases, 0);
	qv_version_free(v);
	/* by digest prefix */
	char hex[QV_HEX_LEN + 1], ref[24];
	qv_digest_hex(r1.digest, hex);
	snprintf(ref, sizeof(ref), "sha256:%.8s", hex);
	assert_int_equal(qv_alias_set(e->s, "m", "stable", ref), 0);
	expect_label(e, "m", "stable", "v1");
	/* an alias to an alias */
	assert_int_equal(qv_alias_set(e->s, "m", "lts", "stable"), 0);
	expect_label(e, "m", "lts", "v1");

	/* refusals */
	assert_int_equal(qv_alias_set(e->s, "m", "a/b", "v1"), QV_ENAME);
	assert_int_equal(qv_alias_set(e->s, "m", ".x", "v1"), QV_ENAME);
	assert_int_equal(qv_alias_set(e->s, "m", "x", "nope"), QV_ENOTFOUND);
	expect_get_err(e, "m", "x", QV_ENOTFOUND);
	assert_int_equal(qv_alias_set(e->s, "ghost", "x", "v1"), QV_ENOTFOUND);
	assert_int_equal(qv_alias_set(e->s, "../m", "x", "v1"), QV_ENAME);

	/* "current" is activate */
	assert_int_equal(qv_alias_set(e->s, "m", "current", "v1"), 0);
	expect_label(e, "m", NULL, "v1");
	qv_history *h = history_ok(e, "m");
	assert_int_equal(h->n, 3); /* two publishes and this; other aliases leave no trace */
	expect_entry(h, 2, "activate", "v2", "v1");
	qv_history_free(h);

	assert_int_equal(qv_alias_rm(e->s, "m", "stable"), 0);
	expect_get_err(e, "m", "stable", QV_ENOTFOUND);
	assert_int_equal(qv_alias_rm(e->s, "m", "stable"), QV_ENOTFOUND);
	assert_int_equal(qv_alias_rm(e->s, "m", "a/b"), QV_ENAME);
	assert_int_equal(qv_alias_rm(e->s, "ghost", "x"), QV_ENOTFOUND);
	expect_label(e, "m", "lts", "v1");
	v = get_ok(e, "m", "v1", 0);
	assert_int_equal(v->n_aliases, 2);
	assert_true(has_alias(v, "lts"));
	assert_true(has_alias(v, "current"));
	qv_version_free(v);

	store_reopen(e);
	expect_get_err(e, "m", "stable", QV_ENOTFOUND);
	expect_label(e, "m", "lts", "v1");
	expect_label(e, "m", NULL, "v1");
}

static void test_history(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "org/m", in.a, NULL, NULL);
	publish_ok(e, "org/m", in.b, NULL, NULL);
	assert_int_equal(qv_activate(e->s, "org/m", "v1", NULL), 0);
	assert_int_equal(qv_rollback(e->s, "org/m", NULL, NULL), 0);
	expect_label(e, "org/m", NULL, "v2");
	qv_free_result fr;
	assert_int_equal(qv_version_rm(e->s, "org/m", "v2", 1, &fr), 0);
	expect_get_err(e, "org/m", NULL, QV_ENOTFOUND);

	/* another model's history stays apart, even one whose name is a prefix */
	publish_ok(e, "org", in.c, NULL, NULL);

	qv_history *h = history_ok(e, "org/m");
	assert_int_equal(h->n, 5);
	expect_entry(h, 0, "publish", "", "v1");
	expect_entry(h, 1, "publish", "v1", "v2");
	expect_entry(h, 2, "activate", "v2", "v1");
	expect_entry(h, 3, "rollback", "v1", "v2");
	expect_entry(h, 4, "rm", "v2", "");
	for (size_t i = 0; i < h->n; i++) {
		assert_true(h->e[i].time_ns > 0);
		if (i)
			assert_true(h->e[i].time_ns >= h->e[i - 1].time_ns);
	}
	qv_history_free(h);

	h = history_ok(e, "org");
	assert_int_equal(h->n, 1);
	expect_entry(h, 0, "publish", "", "v1");
	qv_history_free(h);

	store_reopen(e);
	assert_int_equal(history_len(e, "org/m"), 5);

	h = (qv_history *)1;
	assert_int_equal(qv_history_get(e->s, "ghost", &h), QV_ENOTFOUND);
	assert_null(h);
	assert_int_equal(qv_history_get(e->s, "a/../b", &h), QV_ENAME);
	assert_null(h);
}

static void test_version_rm(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "m", in.a, NULL, NULL);
	publish_ok(e, "m", in.b, NULL, NULL);

	char w_path[512], pack1[512], pack2[512];
	qv_version *v = get_ok(e, "m", "v1", QV_WITH_MANIFEST);
	shard_file(e, find_tensor(v, "w")->shard, w_path, sizeof(w_path));
	shard_file(e, find_tensor(v, "b1")->shard, pack1, sizeof(pack1));
	qv_version_free(v);
	v = get_ok(e, "m", "v2", QV_WITH_MANIFEST);
	shard_file(e, find_tensor(v, "b1")->shard, pack2, sizeof(pack2));
	qv_version_free(v);
	assert_true(exists(w_path) && exists(pack1) && exists(pack2));

	/* current: refused without force */
	qv_free_result fr;
	assert_int_equal(qv_version_rm(e->s, "m", "v2", 0, &fr), QV_EINUSE);
	expect_errmsg(e, "current");
	assert_int_equal(fr.versions, 0);
	expect_label(e, "m", NULL, "v2");
	/* aliased: refused without force */
	assert_int_equal(qv_alias_set(e->s, "m", "stable", "v1"), 0);
	assert_int_equal(qv_version_rm(e->s, "m", "v1", 0, &fr), QV_EINUSE);
	expect_errmsg(e, "stable");
	assert_int_equal(count_shards(e), 3);
	assert_int_equal(qv_alias_rm(e->s, "m", "stable"), 0);

	assert_int_equal(qv_version_rm(e->s, "m", "nope", 0, &fr), QV_ENOTFOUND);
	assert_int_equal(qv_version_rm(e->s, "ghost", "v1", 0, &fr), QV_ENOTFOUND);

	/* v1: its pack goes, the shard it shares with v2 stays */
	assert_int_equal(qv_version_rm(e->s, "m", "v1", 0, &fr), 0);
	assert_int_equal(fr.versions, 1);
	assert_int_equal(fr.shards, 1);
	assert_int_equal(fr.bytes, PACK_SIZE);
	assert_false(exists(pack1));
	assert_true(exists(w_path));
	assert_true(exists(pack2));
	assert_int_equal(count_shards(e), 2);
	expect_get_err(e, "m", "v1", QV_ENOTFOUND);

	char out[256], got[512];
	snprintf(out, sizeof(out), "%s/v2", e->out);
	assert_int_equal(qv_export(e->s, "m", "v2", out, NULL, NULL), 0);
	snprintf(got, sizeof(got), "%s/B.safetensors", out);
	assert_same_file(got, in.b);
	qv_verify_report *rep = verify_ok(e, NULL, NULL);
	assert_int_equal(rep->versions, 1);
	assert_int_equal(rep->shards, 2);
	assert_int_equal(rep->n_damaged, 0);
	qv_verify_report_free(rep);

	/* the last one, forced: everything goes */
	assert_int_equal(qv_version_rm(e->s, "m", NULL, 1, &fr), 0);
	assert_int_equal(fr.versions, 1);
	assert_int_equal(fr.shards, 2);
	assert_int_equal(fr.bytes, MIB + PACK_SIZE);
	assert_int_equal(count_shards(e), 0);
	expect_get_err(e, "m", NULL, QV_ENOTFOUND);
	expect_get_err(e, "m", "v2", QV_ENOTFOUND);
	qv_version_list *l = (qv_version_list *)1;
	assert_int_equal(qv_version_list_get(e->s, "m", &l), QV_ENOTFOUND);
	assert_null(l);

	store_reopen(e);
	qv_model_list *ml = NULL;
	assert_int_equal(qv_model_list_get(e->s, &ml), 0);
	assert_int_equal(ml->n, 0);
	qv_model_list_free(ml);
	assert_int_equal(count_shards(e), 0);
}

static void test_same_content_twice(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	qv_publish_result r1, r2;
	publish_ok(e, "m", in.a, NULL, &r1);
	publish_ok(e, "m", in.a, NULL, &r2);
	assert_string_equal(r2.label, "v2");
	assert_memory_equal(r1.digest, r2.digest, QV_DIGEST_LEN);
	assert_int_equal(r2.shards, 2);
	assert_int_equal(r2.new_shards, 0);
	assert_int_equal(r2.new_bytes, 0);
	assert_int_equal(count_shards(e), 2);

	/* one digest, two labels: every prefix is ambiguous, labels are not */
	char hex[QV_HEX_LEN + 1], ref[80];
	qv_digest_hex(r1.digest, hex);
	snprintf(ref, sizeof(ref), "%.4s", hex);
	expect_get_err(e, "m", ref, QV_EAMBIGUOUS);
	expect_errmsg(e, "matches");
	snprintf(ref, sizeof(ref), "sha256:%s", hex);
	expect_get_err(e, "m", ref, QV_EAMBIGUOUS);
	qv_switch_result sr;
	assert_int_equal(qv_activate(e->s, "m", hex, &sr), QV_EAMBIGUOUS);
	expect_label(e, "m", "v1", "v1");
	expect_label(e, "m", NULL, "v2");

	/* removing one label keeps the manifest and every shard */
	qv_free_result fr;
	assert_int_equal(qv_version_rm(e->s, "m", "v1", 0, &fr), 0);
	assert_int_equal(fr.versions, 1);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(count_shards(e), 2);
	expect_label(e, "m", hex, "v2"); /* now unique */
	char out[256], got[512];
	snprintf(out, sizeof(out), "%s/x", e->out);
	assert_int_equal(qv_export(e->s, "m", NULL, out, NULL, NULL), 0);
	snprintf(got, sizeof(got), "%s/A.safetensors", out);
	assert_same_file(got, in.a);
	qv_verify_report *rep = verify_ok(e, "m", NULL);
	assert_int_equal(rep->n_damaged, 0);
	assert_int_equal(rep->shards, 2);
	qv_verify_report_free(rep);
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(fr.index_fixes, 0);
	assert_int_equal(count_shards(e), 2);

	assert_int_equal(qv_version_rm(e->s, "m", "v2", 1, &fr), 0);
	assert_int_equal(fr.shards, 2);
	assert_int_equal(count_shards(e), 0);
}

static void test_lists(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "org/alpha", in.a, NULL, NULL);
	publish_ok(e, "org/alpha", in.b, NULL, NULL);
	publish_ok(e, "beta", in.c, NULL, NULL);
	publish_ok(e, "org", in.c, NULL, NULL);
	assert_int_equal(qv_alias_set(e->s, "org/alpha", "stable", "v1"), 0);

	qv_version_list *l = NULL;
	assert_int_equal(qv_version_list_get(e->s, "org/alpha", &l), 0);
	assert_int_equal(l->n, 2);
	assert_string_equal(l->v[0].label, "v1");
	assert_string_equal(l->v[1].label, "v2");
	assert_string_equal(l->v[0].model, "org/alpha");
	assert_int_equal(l->v[0].is_current, 0);
	assert_int_equal(l->v[1].is_current, 1);
	assert_true(l->v[0].created_ns <= l->v[1].created_ns);
	assert_int_equal(l->v[0].bytes, file_size(in.a));
	assert_int_equal(l->v[1].bytes, file_size(in.b));
	assert_int_equal(l->v[0].n_aliases, 1);
	assert_string_equal(l->v[0].aliases[0], "stable");
	assert_int_equal(l->v[0].n_files, 0);
	qv_version_list_free(l);

	assert_int_equal(qv_version_list_get(e->s, "org", &l), 0);
	assert_int_equal(l->n, 1);
	assert_string_equal(l->v[0].model, "org");
	qv_version_list_free(l);

	l = (qv_version_list *)1;
	assert_int_equal(qv_version_list_get(e->s, "ghost", &l), QV_ENOTFOUND);
	assert_null(l);
	assert_int_equal(qv_version_list_get(e->s, "../x", &l), QV_ENAME);

	qv_model_list *ml = NULL;
	assert_int_equal(qv_model_list_get(e->s, &ml), 0);
	assert_int_equal(ml->n, 3);
	assert_string_equal(ml->m[0].name, "beta");
	assert_int_equal(ml->m[0].n_versions, 1);
	assert_string_equal(ml->m[0].current, "v1");
	assert_int_equal(ml->m[0].bytes, file_size(in.c));
	assert_string_equal(ml->m[1].name, "org");
	assert_int_equal(ml->m[1].n_versions, 1);
	assert_string_equal(ml->m[2].name, "org/alpha");
	assert_int_equal(ml->m[2].n_versions, 2);
	assert_string_equal(ml->m[2].current, "v2");
	assert_int_equal(ml->m[2].bytes, file_size(in.a) + file_size(in.b));
	qv_model_list_free(ml);

	/* a model without a current version */
	qv_publish_opts o = {.no_activate = 1};
	publish_ok(e, "gamma", in.c, &o, NULL);
	store_reopen(e);
	assert_int_equal(qv_model_list_get(e->s, &ml), 0);
	assert_int_equal(ml->n, 4);
	assert_string_equal(ml->m[1].name, "gamma");
	assert_string_equal(ml->m[1].current, "");
	qv_model_list_free(ml);
	expect_get_err(e, "gamma", NULL, QV_ENOTFOUND);
}

static void test_gc(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "m", in.a, NULL, NULL);
	publish_ok(e, "m", in.b, NULL, NULL);
	assert_int_equal(count_shards(e), 3);

	/* an orphan shard file (a crashed publisher) and a temp file */
	char orphan[600], tmpf[512], dir[256];
	snprintf(dir, sizeof(dir), "%s/shards/ab/cd", e->root);
	mkdir_p(dir);
	snprintf(orphan, sizeof(orphan), "%s/abcd%060d", dir, 0);
	write_bytes(orphan, "junk!", 5);
	snprintf(tmpf, sizeof(tmpf), "%s/tmp/pub-999999-0.tmp", e->root);
	write_random(tmpf, 10, 5);
	assert_int_equal(count_shards(e), 4);

	qv_free_result fr;
	assert_int_equal(qv_gc(e->s, 1, &fr), 0);
	assert_int_equal(fr.shards, 1);
	assert_int_equal(fr.bytes, 5);
	assert_int_equal(fr.temp_files, 1);
	assert_int_equal(fr.versions, 0);
	assert_true(exists(orphan));
	assert_true(exists(tmpf));

	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 1);
	assert_int_equal(fr.bytes, 5);
	assert_int_equal(fr.temp_files, 1);
	assert_int_equal(fr.index_fixes, 0);
	assert_false(exists(orphan));
	assert_false(exists(tmpf));
	assert_int_equal(count_shards(e), 3);

	/* nothing referenced went */
	qv_verify_report *rep = verify_ok(e, NULL, NULL);
	assert_int_equal(rep->versions, 2);
	assert_int_equal(rep->shards, 3);
	assert_int_equal(rep->n_damaged, 0);
	qv_verify_report_free(rep);
	char out[256], got[512];
	snprintf(out, sizeof(out), "%s/v1", e->out);
	assert_int_equal(qv_export(e->s, "m", "v1", out, NULL, NULL), 0);
	snprintf(got, sizeof(got), "%s/A.safetensors", out);
	assert_same_file(got, in.a);

	/* a second gc has nothing to do */
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(fr.temp_files, 0);
	assert_int_equal(fr.index_fixes, 0);
	assert_int_equal(count_shards(e), 3);

	/* after an rm, the shared shard is still referenced and stays */
	assert_int_equal(qv_version_rm(e->s, "m", "v1", 0, &fr), 0);
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(count_shards(e), 2);
	snprintf(out, sizeof(out), "%s/v2", e->out);
	assert_int_equal(qv_export(e->s, "m", "v2", out, NULL, NULL), 0);
	snprintf(got, sizeof(got), "%s/B.safetensors", out);
	assert_same_file(got, in.b);
}

static void test_export_dir(void **state)
{
	struct env *e = *state;
	char src[512], p[600];
	snprintf(src, sizeof(src), "%s/model", e->in);
	snprintf(p, sizeof(p), "%s/sub/deeper", src);
	mkdir_p(p);

	static const char *names[] = {
		"config.json",
		"empty.txt",
		"model-00001-of-00002.safetensors",
		"model-00002-of-00002.safetensors",
		"model.safetensors.index.json",
		"sub/deeper/notes.txt",
		"z.safetensors",
	};
	snprintf(p, sizeof(p), "%s/config.json", src);
	write_random(p, 200, 11);
	snprintf(p, sizeof(p), "%s/empty.txt", src);
	write_bytes(p, "", 0);
	snprintf(p, sizeof(p), "%s/model-00001-of-00002.safetensors", src);
	write_st(p, SPEC_A, QV_ARRAY_LEN(SPEC_A));
	snprintf(p, sizeof(p), "%s/model-00002-of-00002.safetensors", src);
	write_st(p, SPEC_C, QV_ARRAY_LEN(SPEC_C));
	snprintf(p, sizeof(p), "%s/model.safetensors.index.json", src);
	{
		const char idx[] = "{\"metadata\":{},\"weight_map\":{"
		                   "\"w\":\"model-00001-of-00002.safetensors\","
		                   "\"b1\":\"model-00001-of-00002.safetensors\","
		                   "\"b2\":\"model-00001-of-00002.safetensors\","
		                   "\"x\":\"model-00002-of-00002.safetensors\"}}\n";
		write_bytes(p, idx, sizeof(idx) - 1);
	}
	snprintf(p, sizeof(p), "%s/sub/deeper/notes.txt", src);
	write_random(p, 5000, 12);
	/* a zero-size tensor at the very end */
	static const tspec z[] = {{"d", 64, 5}, {"e", 0, 0}};
	snprintf(p, sizeof(p), "%s/z.safetensors", src);
	write_st(p, z, QV_ARRAY_LEN(z));

	qv_publish_result r;
	publish_ok(e, "dir", src, NULL, &r);
	assert_int_equal(r.files, QV_ARRAY_LEN(names));
	assert_int_equal(r.tensors, 3 + 1 + 2);

	qv_version *v = get_ok(e, "dir", NULL, QV_WITH_MANIFEST);
	assert_int_equal(v->single_file, 0);
	assert_int_equal(v->n_files, QV_ARRAY_LEN(names));
	for (size_t i = 0; i < v->n_files; i++) {
		int found = 0;
		for (size_t k = 0; k < QV_ARRAY_LEN(names); k++)
			found |= strcmp(v->files[i].name, names[k]) == 0;
		if (!found)
			fail_msg("unexpected file %s in the manifest", v->files[i].name);
		int st = strstr(v->files[i].name, ".safetensors") &&
		         !strstr(v->files[i].name, ".json");
		assert_int_equal(v->files[i].safetensors, st);
	}
	qv_version_free(v);

	/* export twice into the same folder: both times byte for byte, no leftovers */
	for (int round = 0; round < 2; round++) {
		char out[512], a[700], b[700];
		snprintf(out, sizeof(out), "%s/dir", e->out);
		assert_int_equal(qv_export(e->s, "dir", NULL, out, NULL, NULL), 0);
		for (size_t k = 0; k < QV_ARRAY_LEN(names); k++) {
			snprintf(a, sizeof(a), "%s/%s", src, names[k]);
			snprintf(b, sizeof(b), "%s/%s", out, names[k]);
			assert_same_file(a, b);
		}
		assert_int_equal(count_files(out), QV_ARRAY_LEN(names));
	}

	/* a single file */
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "single", in.a, NULL, NULL);
	char out[512], got[600];
	snprintf(out, sizeof(out), "%s/new/nested/single", e->out);
	assert_int_equal(qv_export(e->s, "single", "v1", out, NULL, NULL), 0);
	snprintf(got, sizeof(got), "%s/A.safetensors", out);
	assert_same_file(got, in.a);
	assert_int_equal(count_files(out), 1);

	assert_int_equal(qv_export(e->s, "single", "v5", out, NULL, NULL), QV_ENOTFOUND);
	assert_int_equal(qv_export(e->s, "ghost", NULL, out, NULL, NULL), QV_ENOTFOUND);

	/* a broken index json is refused at publish */
	snprintf(p, sizeof(p), "%s/model.safetensors.index.json", src);
	{
		const char bad[] = "{\"weight_map\":{\"nope\":\"z.safetensors\"}}";
		write_bytes(p, bad, sizeof(bad) - 1);
	}
	assert_int_equal(qv_publish(e->s, "dir", src, NULL, &r), QV_EFORMAT);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		fail_msg("%s: %s", path, strerror(errno));
	unsigned char c;
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x40;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static const qv_damage *find_damage(const qv_verify_report *r, const char *path_of,
                                    const struct env *e)
{
	for (size_t i = 0; i < r->n_damaged; i++) {
		char p[512];
		shard_file(e, r->damaged[i].shard, p, sizeof(p));
		if (strcmp(p, path_of) == 0)
			return &r->damaged[i];
	}
	fail_msg("no damage reported for %s", path_of);
	return NULL;
}

static int names_version(const qv_damage *d, const char *name)
{
	for (size_t i = 0; i < d->n_versions; i++)
		if (strcmp(d->versions[i], name) == 0)
			return 1;
	return 0;
}

static void test_verify(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "m", in.a, NULL, NULL);
	publish_ok(e, "m", in.b, NULL, NULL);
	publish_ok(e, "other", in.c, NULL, NULL);

	qv_verify_report *r = verify_ok(e, NULL, NULL);
	assert_int_equal(r->versions, 3);
	assert_int_equal(r->shards, 4);
	assert_int_equal(r->bytes, MIB + 2 * PACK_SIZE + 300);
	assert_int_equal(r->n_damaged, 0);
	qv_verify_report_free(r);

	char w_path[512], pack1[512];
	qv_version *v = get_ok(e, "m", "v1", QV_WITH_MANIFEST);
	shard_file(e, find_tensor(v, "w")->shard, w_path, sizeof(w_path));
	shard_file(e, find_tensor(v, "b2")->shard, pack1, sizeof(pack1));
	qv_version_free(v);

	/* one flipped byte in the shard both versions of m use */
	flip_byte(w_path, 12345);
	r = verify_ok(e, NULL, NULL);
	assert_int_equal(r->versions, 3);
	assert_int_equal(r->n_damaged, 1);
	const qv_damage *d = find_damage(r, w_path, e);
	assert_string_equal(d->reason, "digest mismatch");
	assert_int_equal(d->n_versions, 2);
	assert_true(names_version(d, "m@v1"));
	assert_true(names_version(d, "m@v2"));
	qv_verify_report_free(r);

	r = verify_ok(e, "m", "v1");
	assert_int_equal(r->versions, 1);
	assert_int_equal(r->shards, 2);
	assert_int_equal(r->n_damaged, 1);
	assert_int_equal(r->damaged[0].n_versions, 1);
	assert_string_equal(r->damaged[0].versions[0], "m@v1");
	qv_verify_report_free(r);
	r = verify_ok(e, "other", NULL);
	assert_int_equal(r->n_damaged, 0);
	qv_verify_report_free(r);

	/* export refuses damaged bytes and leaves no file behind */
	char out[512], got[600];
	snprintf(out, sizeof(out), "%s/bad", e->out);
	assert_int_equal(qv_export(e->s, "m", "v1", out, NULL, NULL), QV_ECORRUPT);
	snprintf(got, sizeof(got), "%s/A.safetensors", out);
	assert_false(exists(got));
	assert_int_equal(count_files(out), 0);

	/* a missing shard file too */
	assert_int_equal(unlink(pack1), 0);
	r = verify_ok(e, NULL, NULL);
	assert_int_equal(r->n_damaged, 2);
	d = find_damage(r, pack1, e);
	assert_string_equal(d->reason, "missing");
	assert_int_equal(d->n_versions, 1);
	assert_string_equal(d->versions[0], "m@v1");
	d = find_damage(r, w_path, e);
	assert_int_equal(d->n_versions, 2);
	qv_verify_report_free(r);

	r = (qv_verify_report *)1;
	assert_int_equal(qv_verify(e->s, "ghost", NULL, &r, NULL, NULL), QV_ENOTFOUND);
	assert_null(r);
}

/* Identical bytes inside one publish: two equal big tensors and a blob equal
 * to them are one shard; equal small tensors still get their own pack slots. */
static void test_duplicate_data(void **state)
{
	struct env *e = *state;
	char src[512], p[600];
	snprintf(src, sizeof(src), "%s/dup", e->in);
	mkdir_p(src);
	static const tspec d[] = {{"w1", MIB, 7}, {"s1", 10, 8}, {"w2", MIB, 7}, {"s2", 10, 8}};
	snprintf(p, sizeof(p), "%s/d.safetensors", src);
	write_st(p, d, QV_ARRAY_LEN(d));
	snprintf(p, sizeof(p), "%s/raw.bin", src);
	write_random(p, MIB, 7); /* the same bytes as w1 and w2 */

	qv_publish_result r;
	publish_ok(e, "dup", src, NULL, &r);
	assert_int_equal(r.files, 2);
	assert_int_equal(r.tensors, 4);
	assert_int_equal(r.shards, 2);
	assert_int_equal(r.new_shards, 2);
	assert_int_equal(r.new_bytes, MIB + QV_ALIGN + 10);
	assert_int_equal(count_shards(e), 2);

	qv_version *v = get_ok(e, "dup", NULL, QV_WITH_MANIFEST);
	const qv_tensor *w1 = find_tensor(v, "w1"), *w2 = find_tensor(v, "w2");
	const qv_tensor *s1 = find_tensor(v, "s1"), *s2 = find_tensor(v, "s2");
	assert_memory_equal(w1->shard, w2->shard, QV_DIGEST_LEN);
	assert_memory_equal(s1->shard, s2->shard, QV_DIGEST_LEN);
	assert_int_equal(s1->shard_offset, 0);
	assert_int_equal(s2->shard_offset, QV_ALIGN);
	const qv_file *blob = NULL;
	for (size_t i = 0; i < v->n_files; i++)
		if (!v->files[i].safetensors)
			blob = &v->files[i];
	assert_non_null(blob);
	assert_string_equal(blob->name, "raw.bin");
	assert_int_equal(blob->size, MIB);
	assert_memory_equal(blob->blob, w1->shard, QV_DIGEST_LEN);
	qv_version_free(v);

	char out[256], a[700], b[700];
	snprintf(out, sizeof(out), "%s/dup", e->out);
	assert_int_equal(qv_export(e->s, "dup", NULL, out, NULL, NULL), 0);
	static const char *names[] = {"d.safetensors", "raw.bin"};
	for (size_t k = 0; k < 2; k++) {
		snprintf(a, sizeof(a), "%s/%s", src, names[k]);
		snprintf(b, sizeof(b), "%s/%s", out, names[k]);
		assert_same_file(a, b);
	}
	qv_verify_report *rep = verify_ok(e, NULL, NULL);
	assert_int_equal(rep->shards, 2);
	assert_int_equal(rep->n_damaged, 0);
	qv_verify_report_free(rep);

	/* refcounts are per manifest: gc finds nothing to fix, rm frees both */
	qv_free_result fr;
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.index_fixes, 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(qv_version_rm(e->s, "dup", NULL, 1, &fr), 0);
	assert_int_equal(fr.shards, 2);
	assert_int_equal(fr.bytes, MIB + QV_ALIGN + 10);
	assert_int_equal(count_shards(e), 0);
}

struct progress {
	size_t calls;
	uint64_t last_done, last_total;
	int backwards;
};

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress *p = arg;
	if (p->calls && (done < p->last_done || total != p->last_total))
		p->backwards = 1;
	p->calls++;
	p->last_done = done;
	p->last_total = total;
}

static void expect_progress_complete(const struct progress *p, const char *what)
{
	if (p->calls == 0)
		fail_msg("%s: no progress reported", what);
	if (p->backwards)
		fail_msg("%s: progress went backwards or changed its total", what);
	if (p->last_done != p->last_total)
		fail_msg("%s: progress ended at %llu of %llu bytes", what,
		         (unsigned long long)p->last_done, (unsigned long long)p->last_total);
}

static void test_progress(void **state)
{
	struct env *e = *state;
	struct inputs in;
	make_inputs(e, &in);

	struct progress pp = {0};
	qv_publish_opts o = {.progress = on_progress, .progress_arg = &pp};
	publish_ok(e, "m", in.a, &o, NULL);
	expect_progress_complete(&pp, "publish");

	struct progress vp = {0};
	qv_verify_report *r = NULL;
	assert_int_equal(qv_verify(e->s, "m", NULL, &r, on_progress, &vp), 0);
	assert_int_equal(r->n_damaged, 0);
	assert_int_equal(vp.last_total, r->bytes);
	qv_verify_report_free(r);
	expect_progress_complete(&vp, "verify");

	/* export counts the bytes of the files it writes: total is the file size,
	 * and the last call must reach it */
	struct progress ep = {0};
	char out[256];
	snprintf(out, sizeof(out), "%s/p", e->out);
	assert_int_equal(qv_export(e->s, "m", NULL, out, on_progress, &ep), 0);
	assert_int_equal(ep.last_total, file_size(in.a));
	expect_progress_complete(&ep, "export");
}

/* gc on a store without versions: a fresh one, and one whose only version
 * was removed (with an orphan shard file to collect). Last in the list: with
 * UBSan, a failure here aborts the binary. */
static void test_gc_no_versions(void **state)
{
	struct env *e = *state;
	qv_free_result fr;
	assert_int_equal(qv_gc(e->s, 1, &fr), 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 0);
	assert_int_equal(fr.index_fixes, 0);

	struct inputs in;
	make_inputs(e, &in);
	publish_ok(e, "m", in.a, NULL, NULL);
	assert_int_equal(qv_version_rm(e->s, "m", NULL, 1, &fr), 0);
	assert_int_equal(count_shards(e), 0);
	char dir[256], orphan[600];
	snprintf(dir, sizeof(dir), "%s/shards/00/11", e->root);
	mkdir_p(dir);
	snprintf(orphan, sizeof(orphan), "%s/0011%060d", dir, 0);
	write_bytes(orphan, "abc", 3);
	assert_int_equal(qv_gc(e->s, 0, &fr), 0);
	assert_int_equal(fr.shards, 1);
	assert_int_equal(fr.bytes, 3);
	assert_int_equal(fr.index_fixes, 0);
	assert_false(exists(orphan));
}

/* Sets or (v == NULL) unsets the variable name. */
static void set_env(const char *name, const char *v)
{
	if (v)
		assert_int_equal(setenv(name, v, 1), 0);
	else
		assert_int_equal(unsetenv(name), 0);
}

static void test_default_root(void **state)
{
	(void)state;
	char *env = getenv("QUIVER_ROOT"), *home = getenv("HOME");
	char *env0 = env ? strdup(env) : NULL, *home0 = home ? strdup(home) : NULL;
	char buf[64], tiny[8];

	set_env("QUIVER_ROOT", "/srv/weights");
	set_env("HOME", "/home/u");
	assert_int_equal(qv_store_default_root(buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/srv/weights");
	set_env("QUIVER_ROOT", ""); /* empty counts as unset */
	assert_int_equal(qv_store_default_root(buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/home/u/.local/share/quiver");
	assert_int_equal(qv_store_default_root(tiny, sizeof(tiny)), -ENAMETOOLONG);
	/* exactly fits: 27 characters and the NUL */
	assert_int_equal(qv_store_default_root(buf, 28), 0);
	assert_int_equal(qv_store_default_root(buf, 27), -ENAMETOOLONG);
	set_env("QUIVER_ROOT", NULL);
	set_env("HOME", "");
	assert_int_equal(qv_store_default_root(buf, sizeof(buf)), -ENOENT);
	set_env("HOME", NULL);
	assert_int_equal(qv_store_default_root(buf, sizeof(buf)), -ENOENT);
	char err[128] = "";
	qv_store *s = NULL;
	assert_int_equal(qv_store_open(NULL, &s, err, sizeof(err)), -ENOENT);
	assert_null(s);
	assert_non_null(strstr(err, "QUIVER_ROOT"));

	set_env("QUIVER_ROOT", env0);
	set_env("HOME", home0);
	free(env0);
	free(home0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_publish_and_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_publish_label_and_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_activate_and_aliases, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rollback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alias, setup, teardown),
		cmocka_unit_test_setup_teardown(test_history, setup, teardown),
		cmocka_unit_test_setup_teardown(test_version_rm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_content_twice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_progress, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_no_versions, setup, teardown),
		cmocka_unit_test(test_default_root),
	};
	/* QV_TEST_FILTER=test_gc (a glob) runs a subset, e.g. to get past a test
	 * that a sanitizer aborts. */
	const char *filter = getenv("QV_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("index", tests, NULL, NULL);
}
