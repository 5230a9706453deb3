/* Helpers shared by the load tests: seeded random safetensors models, temp
 * stores, and the byte-for-byte comparison of a loaded tensor table with its
 * source files. See load_util.h. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "load_util.h"

#define TMPFS_MAGIC_ 0x01021994

static uint64_t g_seed, g_state;

uint64_t lt_seed_init(void)
{
	const char *e = getenv("QV_TEST_SEED");
	if (e && *e) {
		g_seed = strtoull(e, NULL, 0);
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		g_seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
	}
	g_state = g_seed;
	printf("# seed %llu (QV_TEST_SEED=%llu repeats this run)\n", (unsigned long long)g_seed,
	       (unsigned long long)g_seed);
	fflush(stdout);
	return g_seed;
}

uint64_t lt_seed(void)
{
	return g_seed;
}

uint64_t lt_rand(void) /* splitmix64 */
{
	uint64_t z = (g_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void lt_fill_random(unsigned char *p, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t r = lt_rand();
		memcpy(p + i, &r, 8);
	}
	if (i < n) {
		uint64_t r = lt_rand();
		memcpy(p + i, &r, n - i);
	}
}

void lt_fail(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fail_msg("[seed %llu] %s", (unsigned long long)g_seed, buf);
	abort();
}

/* ---- folders ----------------------------------------------------------------------- */
void lt_tmpdir(char *out, size_t len, const char *tag)
{
	const char *base = "/var/tmp";
	struct statfs sf;
	if (statfs(base, &sf) == 0 && sf.f_type == TMPFS_MAGIC_)
		print_message("# note: %s is tmpfs; O_DIRECT may be refused there\n", base);
	snprintf(out, len, "%s/qv-%s-XXXXXX", base, tag);
	LT_CHECK(mkdtemp(out) != NULL, "mkdtemp(%s): %s", out, strerror(errno));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void lt_rmrf(const char *path)
{
	if (path && *path)
		nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

/* ---- models ------------------------------------------------------------------------ */
struct lt_file *lt_file_add(struct lt_model *m, const char *rel)
{
	LT_CHECK(m->n < LT_FILES_MAX, "too many files");
	struct lt_file *f = &m->f[m->n++];
	memset(f, 0, sizeof(*f));
	snprintf(f->rel, sizeof(f->rel), "%s", rel);
	return f;
}

static const struct { const char *name; unsigned size; } dts[] = {
	{"F64", 8}, {"I64", 8}, {"F32", 4}, {"I32", 4}, {"BF16", 2}, {"F16", 2}, {"U8", 1}, {"I8", 1},
};

size_t lt_tensor_add(struct lt_file *f, const char *name, uint64_t bytes, const unsigned char *data)
{
	if (f->n == f->cap) {
		f->cap = f->cap ? 2 * f->cap : 16;
		f->t = realloc(f->t, f->cap * sizeof(*f->t));
		LT_CHECK(f->t, "out of memory");
	}
	if (f->data_len + bytes > f->data_cap) {
		size_t c = f->data_cap ? f->data_cap : 1 << 16;
		while (c < f->data_len + bytes)
			c *= 2;
		f->data = realloc(f->data, c);
		LT_CHECK(f->data, "out of memory");
		f->data_cap = c;
	}
	struct lt_tensor *t = &f->t[f->n];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	/* a random dtype whose size divides bytes */
	size_t cand[8], nc = 0;
	for (size_t i = 0; i < sizeof(dts) / sizeof(dts[0]); i++)
		if (bytes % dts[i].size == 0)
			cand[nc++] = i;
	size_t d = cand[lt_rand() % nc];
	snprintf(t->dtype, sizeof(t->dtype), "%s", dts[d].name);
	uint64_t elems = bytes / dts[d].size;
	/* shape: [elems], or [a, elems / a] / [a, b, elems / ab] for small factors */
	t->ndim = 1;
	t->shape[0] = (int64_t)elems;
	unsigned want = (unsigned)(lt_rand() % 3);
	uint64_t rest = elems;
	int64_t dims[3];
	unsigned nd = 0;
	for (unsigned k = 0; k < want && rest > 1; k++) {
		uint64_t a = 0;
		for (uint64_t c = 2; c <= 16; c++)
			if (rest % c == 0) {
				a = c;
				if (lt_rand() & 1)
					break;
			}
		if (!a)
			break;
		dims[nd++] = (int64_t)a;
		rest /= a;
	}
	if (nd) {
		for (unsigned k = 0; k < nd; k++)
			t->shape[k] = dims[k];
		t->shape[nd] = (int64_t)rest;
		t->ndim = nd + 1;
	}
	t->bytes = bytes;
	t->data_off = f->data_len;
	if (data)
		memcpy(f->data + f->data_len, data, bytes);
	else
		lt_fill_random(f->data + f->data_len, bytes);
	f->data_len += bytes;
	return f->n++;
}

const unsigned char *lt_tensor_data(const struct lt_file *f, size_t i)
{
	return f->data + f->t[i].data_off;
}

static void write_file(struct lt_file *f, const char *path)
{
	size_t cap = 256 + f->n * (LT_NAME_MAX + 160), len = 0;
	char *h = malloc(cap);
	LT_CHECK(h, "out of memory");
	len += (size_t)snprintf(h + len, cap - len, "{");
	for (size_t i = 0; i < f->n; i++) {
		const struct lt_tensor *t = &f->t[i];
		len += (size_t)snprintf(h + len, cap - len, "\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
		                        t->dtype);
		for (uint32_t k = 0; k < t->ndim; k++)
			len += (size_t)snprintf(h + len, cap - len, "%s%lld", k ? "," : "",
			                        (long long)t->shape[k]);
		len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]},",
		                        (unsigned long long)t->data_off,
		                        (unsigned long long)(t->data_off + t->bytes));
	}
	len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":{\"format\":\"pt\"}}");
	while (len % 8)
		h[len++] = ' ';
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	LT_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	uint64_t hl = len;
	unsigned char le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (unsigned char)(hl >> (8 * i));
	LT_CHECK(write(fd, le, 8) == 8, "write %s", path);
	LT_CHECK(write(fd, h, len) == (ssize_t)len, "write %s", path);
	size_t off = 0;
	while (off < f->data_len) {
		ssize_t w = write(fd, f->data + off, f->data_len - off);
		LT_CHECK(w > 0, "write %s: %s", path, strerror(errno));
		off += (size_t)w;
	}
	close(fd);
	f->size = 8 + len + f->data_len;
	free(h);
}

void lt_model_write(struct lt_model *m, const char *dir, int single)
{
	char path[PATH_MAX];
	LT_CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", dir, strerror(errno));
	for (size_t i = 0; i < m->n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, m->f[i].rel);
		write_file(&m->f[i], path);
	}
	if (single && m->n == 1)
		snprintf(m->path, sizeof(m->path), "%s/%s", dir, m->f[0].rel);
	else
		snprintf(m->path, sizeof(m->path), "%s", dir);
}

void lt_model_free(struct lt_model *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->f[i].data);
		free(m->f[i].t);
	}
	memset(m, 0, sizeof(*m));
}

size_t lt_model_tensors(const struct lt_model *m)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n; i++)
		n += m->f[i].n;
	return n;
}

/* ---- the store --------------------------------------------------------------------- */
qv_store *lt_store_open(const char *root)
{
	char err[512] = "";
	qv_store *s = NULL;
	int rc = qv_store_open(root, &s, err, sizeof(err));
	LT_CHECK(rc == 0, "qv_store_open(%s): %d %s", root, rc, err);
	return s;
}

void lt_publish(qv_store *s, const char *model, const struct lt_model *m, const char *label)
{
	qv_publish_opts o = {.label = label};
	int rc = qv_publish(s, model, m->path, &o, NULL);
	LT_CHECK(rc == 0, "qv_publish(%s, %s, %s): %d (%s) %s", model, m->path, label ? label : "-",
	         rc, qv_strerror(rc), qv_store_errmsg(s));
}

uint64_t lt_distinct_shard_bytes(qv_store *s, const char *model, const char *ref, size_t *n)
{
	qv_version *v = NULL;
	int rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	LT_CHECK(rc == 0, "qv_version_get(%s@%s): %d %s", model, ref ? ref : "current", rc,
	         qv_store_errmsg(s));
	size_t cap = 16, k = 0;
	uint8_t (*seen)[QV_DIGEST_LEN] = malloc(cap * QV_DIGEST_LEN);
	uint64_t total = 0;
	for (size_t i = 0; i < v->n_files; i++)
		for (size_t j = 0; j < v->files[i].n_tensors; j++) {
			const uint8_t *d = v->files[i].tensors[j].shard;
			size_t q = 0;
			while (q < k && memcmp(seen[q], d, QV_DIGEST_LEN) != 0)
				q++;
			if (q < k)
				continue;
			if (k == cap) {
				cap *= 2;
				seen = realloc(seen, cap * QV_DIGEST_LEN);
			}
			memcpy(seen[k++], d, QV_DIGEST_LEN);
			qv_shard_info info;
			rc = qv_shard_info_get(s, d, &info);
			LT_CHECK(rc == 0, "qv_shard_info_get: %d", rc);
			total += info.size;
		}
	free(seen);
	qv_version_free(v);
	if (n)
		*n = k;
	return total;
}

void lt_shard_of(qv_store *s, const char *model, const char *ref, const char *name, char *path,
                 size_t len, uint64_t *shard_off)
{
	qv_version *v = NULL;
	int rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	LT_CHECK(rc == 0, "qv_version_get: %d %s", rc, qv_store_errmsg(s));
	int found = 0;
	for (size_t i = 0; i < v->n_files && !found; i++)
		for (size_t j = 0; j < v->files[i].n_tensors && !found; j++) {
			const qv_tensor *x = &v->files[i].tensors[j];
			if (strcmp(x->name, name) == 0) {
				LT_CHECK(qv_shard_path(s, x->shard, path, len) == 0, "qv_shard_path");
				if (shard_off)
					*shard_off = x->shard_offset;
				found = 1;
			}
		}
	qv_version_free(v);
	LT_CHECK(found, "tensor %s not in %s@%s", name, model, ref ? ref : "current");
}

/* ---- the comparison ------------------------------------------------------------------ */
void lt_check_table(const struct lt_model *m, const qv_load *l, const void *host_arena,
                    const char *what)
{
	size_t n = 0;
	const qv_load_tensor *tab = qv_load_tensors(l, &n);
	const qv_load_stats *st = qv_load_get_stats(l);
	char *arena = qv_load_arena(l);
	size_t want = lt_model_tensors(m);
	LT_CHECK(n == want, "%s: table has %zu tensors, the source %zu", what, n, want);
	LT_CHECK(st->tensors == want, "%s: stats.tensors %llu, want %zu", what,
	         (unsigned long long)st->tensors, want);
	const struct lt_file *prev_f = NULL;
	size_t prev_i = 0;
	for (size_t k = 0; k < n; k++) {
		const qv_load_tensor *x = &tab[k];
		LT_CHECK(x->name && x->file, "%s: tensor %zu has no name or file", what, k);
		const struct lt_file *f = NULL;
		for (size_t i = 0; i < m->n && !f; i++)
			if (strcmp(m->f[i].rel, x->file) == 0)
				f = &m->f[i];
		LT_CHECK(f, "%s: tensor %s names file '%s', not in the source", what, x->name, x->file);
		size_t ti = 0;
		while (ti < f->n && strcmp(f->t[ti].name, x->name) != 0)
			ti++;
		LT_CHECK(ti < f->n, "%s: tensor '%s' not in source file %s", what, x->name, f->rel);
		const struct lt_tensor *t = &f->t[ti];
		if (f == prev_f)
			LT_CHECK(ti > prev_i, "%s: tensor %s out of manifest (data offset) order", what,
			         x->name);
		prev_f = f;
		prev_i = ti;
		LT_CHECK(strcmp(x->dtype, t->dtype) == 0, "%s: %s dtype %s, source %s", what, x->name,
		         x->dtype, t->dtype);
		LT_CHECK(x->ndim == t->ndim, "%s: %s ndim %u, source %u", what, x->name, x->ndim, t->ndim);
		for (uint32_t d = 0; d < t->ndim; d++)
			LT_CHECK(x->shape[d] == t->shape[d], "%s: %s shape[%u] %lld, source %lld", what,
			         x->name, d, (long long)x->shape[d], (long long)t->shape[d]);
		LT_CHECK(x->bytes == t->bytes, "%s: %s has %llu bytes, source %llu", what, x->name,
		         (unsigned long long)x->bytes, (unsigned long long)t->bytes);
		LT_CHECK(x->ptr == arena + x->offset, "%s: %s ptr %p != arena %p + offset %llu", what,
		         x->name, x->ptr, (void *)arena, (unsigned long long)x->offset);
		LT_CHECK(x->offset + x->bytes <= st->arena_bytes,
		         "%s: %s [%llu, +%llu) beyond the arena's %llu bytes", what, x->name,
		         (unsigned long long)x->offset, (unsigned long long)x->bytes,
		         (unsigned long long)st->arena_bytes);
		const unsigned char *got = (const unsigned char *)host_arena + x->offset;
		const unsigned char *src = lt_tensor_data(f, ti);
		if (memcmp(got, src, t->bytes) != 0) {
			size_t b = 0;
			while (got[b] == src[b])
				b++;
			lt_fail("%s: tensor %s (%s, %llu bytes, arena offset %llu) differs from the source "
			        "first at byte %zu: 0x%02x, source 0x%02x",
			        what, x->name, f->rel, (unsigned long long)t->bytes,
			        (unsigned long long)x->offset, b, got[b], src[b]);
		}
	}
}

const char *lt_io_name(enum qv_io_mode io)
{
	switch (io) {
	case QV_IO_AUTO: return "auto";
	case QV_IO_DIRECT: return "direct";
	case QV_IO_BUFFERED: return "buffered";
	}
	return "?";
}
