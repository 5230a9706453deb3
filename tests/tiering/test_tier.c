/* Tests of the tiers (tiering/migrate.c, tiering/policy.c, the cold read path
 * of stream/cold.c, and the store's tier-aware export, verify and gc) on
 * fresh temp stores under /var/tmp that have a hot and a cold tier.
 *
 * Versions are built from a seeded PRNG (QV_TEST_SEED repeats a run): BF16
 * and F32 tensors of normally distributed values, which the cold codec
 * compresses, and random bytes, which it cannot. Every load is compared with
 * the source byte for byte (tests/stream/load_util.c). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "load_util.h"
#include "quiver/codec.h"
#include "quiver/tier.h"

#define MODEL "org/tiered"
#define NV 10

struct env {
	char base[256];
	char root[512], hot[512], cold[512], in[512];
	qv_store *s;
	struct lt_model m[NV];
	int used[NV];
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	lt_tmpdir(e->base, sizeof(e->base), "tier");
	snprintf(e->root, sizeof(e->root), "%s/root", e->base);
	snprintf(e->hot, sizeof(e->hot), "%s/hot", e->base);
	snprintf(e->cold, sizeof(e->cold), "%s/cold", e->base);
	snprintf(e->in, sizeof(e->in), "%s/in", e->base);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	if (!e)
		return 0;
	qv_store_close(e->s);
	lt_rmrf(e->base);
	for (int i = 0; i < NV; i++)
		if (e->used[i])
			lt_model_free(&e->m[i]);
	free(e);
	return 0;
}

/* ---- helpers -------------------------------------------------------------------------- */

/* Opens a store with a cold tier (cold == 0: without one). */
static void open_tiered(struct env *e, int cold, uint64_t capacity, double high, double low)
{
	char err[512] = "";
	qv_store_config cfg = {.hot_dir = e->hot, .cold_dir = cold ? e->cold : NULL,
	                       .hot_capacity = capacity, .high = high, .low = low};
	int rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc == 0, "qv_store_init: %d %s", rc, err);
	e->s = lt_store_open(e->root);
	qv_tier_attach(e->s);
}

static double normal(void)
{
	double u1 = ((double)(lt_rand() >> 11) + 1.0) / 9007199254740993.0;
	double u2 = (double)(lt_rand() >> 11) / 9007199254740992.0;
	return sqrt(-2.0 * log(u1)) * cos(2 * M_PI * u2);
}

enum kind { K_BF16, K_F32, K_RAND };

/* bytes of data of the kind, from the PRNG seeded by (run seed, tag). */
static unsigned char *make_data(enum kind k, size_t bytes)
{
	unsigned char *p = calloc(1, bytes);
	LT_CHECK(p, "out of memory");
	if (k == K_RAND) {
		lt_fill_random(p, bytes);
	} else if (k == K_BF16) {
		for (size_t i = 0; i + 2 <= bytes; i += 2) {
			float f = (float)(normal() * 0.02);
			uint32_t u;
			memcpy(&u, &f, 4);
			uint16_t b = (uint16_t)(u >> 16);
			memcpy(p + i, &b, 2);
		}
	} else {
		for (size_t i = 0; i + 4 <= bytes; i += 4) {
			float f = (float)(normal() * 0.02);
			memcpy(p + i, &f, 4);
		}
	}
	return p;
}

/* Adds tensor name of the kind with data (made if NULL), typed to match. */
static void add_tensor(struct lt_file *f, const char *name, enum kind k, size_t bytes,
                       const unsigned char *data)
{
	unsigned char *mine = data ? NULL : make_data(k, bytes);
	size_t i = lt_tensor_add(f, name, bytes, data ? data : mine);
	struct lt_tensor *t = &f->t[i];
	const char *dt = k == K_BF16 ? "BF16" : k == K_F32 ? "F32" : "U8";
	unsigned sz = k == K_BF16 ? 2 : k == K_F32 ? 4 : 1;
	snprintf(t->dtype, sizeof(t->dtype), "%s", dt);
	t->ndim = 1;
	t->shape[0] = (int64_t)(bytes / sz);
	free(mine);
}

/* Writes model m[i] (already filled) into in/<i> and publishes it as label. */
static void publish(struct env *e, int i, const char *label, int activate)
{
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/%d", e->in, i);
	mkdir(e->in, 0755);
	mkdir(dir, 0755);
	lt_model_write(&e->m[i], dir, 1);
	qv_publish_opts o = {.label = label, .no_activate = !activate};
	int rc = qv_publish(e->s, MODEL, e->m[i].path, &o, NULL);
	LT_CHECK(rc == 0, "qv_publish(%s): %d (%s) %s", label, rc, qv_strerror(rc),
	         qv_store_errmsg(e->s));
}

/* A version with compressible BF16 (3 MiB: two frames) and F32 tensors, an
 * incompressible one, small packed ones, and optionally a tensor `shared`. */
static struct lt_file *std_version(struct env *e, int i, const unsigned char *shared,
                                   size_t shared_bytes)
{
	e->used[i] = 1;
	struct lt_file *f = lt_file_add(&e->m[i], "model.safetensors");
	add_tensor(f, "w.bf16", K_BF16, 3 * MIB + 8 * KIB, NULL);
	add_tensor(f, "w.f32", K_F32, 3 * MIB / 2, NULL);
	add_tensor(f, "w.rand", K_RAND, 2 * MIB, NULL);
	add_tensor(f, "norm.a", K_BF16, 4 * KIB, NULL);
	add_tensor(f, "norm.b", K_F32, 12 * KIB, NULL);
	if (shared)
		add_tensor(f, "w.shared", K_BF16, shared_bytes, shared);
	return f;
}

/* A store with a cold tier (no capacity limit) and two versions of the
 * standard shape: v1, and v2 published after it as current. */
static void two_versions(struct env *e)
{
	open_tiered(e, 1, 0, 0.9, 0.75);
	std_version(e, 0, NULL, 0);
	publish(e, 0, "v1", 0);
	std_version(e, 1, NULL, 0);
	publish(e, 1, "v2", 1);
}

static qv_version *getv(struct env *e, const char *ref)
{
	qv_version *v = NULL;
	int rc = qv_version_get(e->s, MODEL, ref, QV_WITH_MANIFEST, &v);
	LT_CHECK(rc == 0, "qv_version_get(%s): %d %s", ref, rc, qv_store_errmsg(e->s));
	return v;
}

static int tier_of(struct env *e, const char *ref)
{
	qv_version *v = getv(e, ref);
	int t = 99;
	int rc = qv_tier_of_version(e->s, v, &t);
	LT_CHECK(rc == 0, "qv_tier_of_version(%s): %d %s", ref, rc, qv_store_errmsg(e->s));
	qv_version_free(v);
	return t;
}

static const qv_tensor *find_tensor(const qv_version *v, const char *name)
{
	for (size_t i = 0; i < v->n_files; i++)
		for (size_t j = 0; j < v->files[i].n_tensors; j++)
			if (strcmp(v->files[i].tensors[j].name, name) == 0)
				return &v->files[i].tensors[j];
	lt_fail("tensor %s not in %s@%s", name, v->model, v->label);
}

static qv_shard_info shard_of(struct env *e, const char *ref, const char *name, uint8_t d[32])
{
	qv_version *v = getv(e, ref);
	const qv_tensor *t = find_tensor(v, name);
	qv_shard_info info;
	int rc = qv_shard_info_get(e->s, t->shard, &info);
	LT_CHECK(rc == 0, "qv_shard_info_get(%s %s): %d", ref, name, rc);
	if (d)
		memcpy(d, t->shard, 32);
	qv_version_free(v);
	return info;
}

/* What a migration told its progress function. */
struct seen {
	uint64_t calls, last, total;
	int bad; /* went backwards, past its total, or changed its total */
};

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct seen *s = arg;
	s->bad |= done > total || (s->calls > 0 && (done < s->last || total != s->total));
	s->calls++;
	s->last = done;
	s->total = total;
}

/* A migration's progress rose, never backwards, to the raw bytes it moved. */
static void check_progress(const struct seen *s, const qv_migrate_result *r, const char *what)
{
	LT_CHECK(!s->bad, "%s: progress went backwards or past its total", what);
	if (r->shards == 0)
		LT_CHECK(s->calls == 0, "%s: moved nothing but told progress %llu times", what,
		         (unsigned long long)s->calls);
	else
		LT_CHECK(s->calls >= r->shards && s->last == r->raw_bytes && s->total == r->raw_bytes,
		         "%s: progress %llu of %llu in %llu calls, moved %llu bytes in %llu shards",
		         what, (unsigned long long)s->last, (unsigned long long)s->total,
		         (unsigned long long)s->calls, (unsigned long long)r->raw_bytes,
		         (unsigned long long)r->shards);
}

static qv_migrate_result demote(struct env *e, const char *ref)
{
	qv_migrate_result r;
	struct seen s = {0};
	memset(&r, 0xff, sizeof(r));
	int rc = qv_tier_demote(e->s, MODEL, ref, &r, on_progress, &s);
	LT_CHECK(rc == 0, "qv_tier_demote(%s): %d (%s) %s", ref, rc, qv_strerror(rc),
	         qv_store_errmsg(e->s));
	check_progress(&s, &r, "demote");
	return r;
}

static qv_migrate_result promote(struct env *e, const char *ref)
{
	qv_migrate_result r;
	struct seen s = {0};
	memset(&r, 0xff, sizeof(r));
	int rc = qv_tier_promote(e->s, MODEL, ref, &r, on_progress, &s);
	LT_CHECK(rc == 0, "qv_tier_promote(%s): %d (%s) %s", ref, rc, qv_strerror(rc),
	         qv_store_errmsg(e->s));
	check_progress(&s, &r, "promote");
	return r;
}

/* Page-cache residency of the cold tier's files (nftw has no user argument):
 * cold_cache_drop() evicts them, cold_cache_share() says what share is
 * cached. */
static uint64_t g_pages, g_cached;
static int g_evict;

static int cold_cache_visit(const char *path, const struct stat *st, int type, struct FTW *f)
{
	(void)f;
	if (type != FTW_F || st->st_size == 0)
		return 0;
	int fd = open(path, O_RDONLY);
	LT_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	if (g_evict) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	} else {
		size_t np = ((size_t)st->st_size + 4095) / 4096;
		unsigned char *vec = malloc(np);
		void *m = mmap(NULL, (size_t)st->st_size, PROT_READ, MAP_SHARED, fd, 0);
		LT_CHECK(vec && m != MAP_FAILED, "mmap %s", path);
		LT_CHECK(mincore(m, (size_t)st->st_size, vec) == 0, "mincore %s", path);
		for (size_t k = 0; k < np; k++)
			g_cached += vec[k] & 1;
		g_pages += np;
		munmap(m, (size_t)st->st_size);
		free(vec);
	}
	close(fd);
	return 0;
}

static void cold_cache_drop(struct env *e)
{
	g_evict = 1;
	LT_CHECK(nftw(e->cold, cold_cache_visit, 16, FTW_PHYS) == 0, "nftw %s", e->cold);
}

static double cold_cache_share(struct env *e)
{
	g_evict = 0;
	g_pages = g_cached = 0;
	LT_CHECK(nftw(e->cold, cold_cache_visit, 16, FTW_PHYS) == 0, "nftw %s", e->cold);
	return g_pages ? (double)g_cached / (double)g_pages : 0.0;
}

/* Loads ref with decode_threads threads, compares with m; returns cold_bytes. */
static uint64_t load_check(struct env *e, int i, const char *ref, unsigned threads,
                           enum qv_io_mode io, int verify)
{
	qv_load_opts o = {.device = QV_DEVICE_CPU, .io = io, .decode_threads = threads,
	                  .verify = verify};
	qv_load *l = NULL;
	int rc = qv_load_run(e->s, MODEL, ref, NULL, 0, &o, &l);
	LT_CHECK(rc == 0 && l, "qv_load_run(%s, threads %u, io %s, verify %d): %d (%s) %s", ref,
	         threads, lt_io_name(io), verify, rc, qv_strerror(rc), qv_store_errmsg(e->s));
	char what[128];
	snprintf(what, sizeof(what), "load %s threads %u io %s verify %d", ref, threads,
	         lt_io_name(io), verify);
	lt_check_table(&e->m[i], l, qv_load_arena(l), what);
	const qv_load_stats *st = qv_load_get_stats(l);
	uint64_t cold = st->cold_bytes;
	LT_CHECK(cold <= st->bytes, "%s: cold_bytes %llu > bytes %llu", what,
	         (unsigned long long)cold, (unsigned long long)st->bytes);
	if (cold)
		LT_CHECK(st->decode_threads >= 1 && st->decode_threads <= (threads ? threads : 16),
		         "%s: decode_threads %u", what, st->decode_threads);
	qv_load_destroy(l);
	return cold;
}

static void load_fails(struct env *e, const char *ref, int verify, int want)
{
	qv_load_opts o = {.device = QV_DEVICE_CPU, .verify = verify, .decode_threads = 2};
	static int sentinel;
	qv_load *l = (qv_load *)&sentinel;
	int rc = qv_load_run(e->s, MODEL, ref, NULL, 0, &o, &l);
	LT_CHECK(rc == want, "qv_load_run(%s, verify %d): got %d (%s), want %d (%s): %s", ref, verify,
	         rc, qv_strerror(rc), want, qv_strerror(want), qv_store_errmsg(e->s));
	LT_CHECK(l == NULL, "qv_load_run(%s) failed but *out is not NULL", ref);
}

static int file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

static void read_file(const char *p, unsigned char **buf, size_t *len)
{
	FILE *f = fopen(p, "rb");
	LT_CHECK(f, "open %s: %s", p, strerror(errno));
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	*buf = malloc((size_t)n + 1);
	LT_CHECK(*buf && fread(*buf, 1, (size_t)n, f) == (size_t)n, "read %s", p);
	fclose(f);
	*len = (size_t)n;
}

static void same_files(const char *a, const char *b)
{
	unsigned char *x, *y;
	size_t nx, ny;
	read_file(a, &x, &nx);
	read_file(b, &y, &ny);
	LT_CHECK(nx == ny && memcmp(x, y, nx) == 0, "%s and %s differ (%zu vs %zu bytes)", a, b, nx,
	         ny);
	free(x);
	free(y);
}

static void copy_file(const char *from, const char *to)
{
	unsigned char *x;
	size_t n;
	read_file(from, &x, &n);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", to);
	*strrchr(dir, '/') = 0;
	char parent[PATH_MAX];
	snprintf(parent, sizeof(parent), "%s", dir);
	*strrchr(parent, '/') = 0;
	mkdir(parent, 0755);
	mkdir(dir, 0755);
	FILE *f = fopen(to, "wb");
	LT_CHECK(f && fwrite(x, 1, n, f) == n && fclose(f) == 0, "write %s", to);
	free(x);
}

static void verify_expect(struct env *e, const char *ref, size_t damaged, const uint8_t *d)
{
	qv_verify_report *r = NULL;
	int rc = qv_verify(e->s, MODEL, ref, &r, NULL, NULL);
	LT_CHECK(rc == 0 && r, "qv_verify(%s): %d (%s) %s", ref ? ref : "all", rc, qv_strerror(rc),
	         qv_store_errmsg(e->s));
	LT_CHECK(r->n_damaged == damaged, "qv_verify(%s): %zu damaged shards, want %zu (first: %s)",
	         ref ? ref : "all", r->n_damaged, damaged,
	         r->n_damaged ? r->damaged[0].reason : "-");
	if (d && damaged)
		LT_CHECK(memcmp(r->damaged[0].shard, d, 32) == 0, "qv_verify named the wrong shard");
	qv_verify_report_free(r);
}

static void tmp_empty(struct env *e)
{
	for (int t = 0; t < QV_TIERS; t++) {
		const char *dir = qv_store_tmp_dir(e->s, t);
		if (!dir)
			continue;
		char cmd[700];
		snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A '%s' 2>/dev/null)\"", dir);
		LT_CHECK(system(cmd) == 0, "temp folder %s not empty", dir);
	}
}

struct usage_sum {
	uint64_t used[QV_TIERS], raw[QV_TIERS], shards[QV_TIERS];
};

static int sum_usage(void *arg, const uint8_t d[32], const qv_shard_info *info)
{
	(void)d;
	struct usage_sum *u = arg;
	u->used[info->tier] += info->stored_size;
	u->raw[info->tier] += info->size;
	u->shards[info->tier]++;
	return 0;
}

static void check_status(struct env *e, qv_tier_status *st)
{
	int rc = qv_tier_status_get(e->s, st);
	LT_CHECK(rc == 0, "qv_tier_status_get: %d %s", rc, qv_store_errmsg(e->s));
	struct usage_sum u;
	memset(&u, 0, sizeof(u));
	LT_CHECK(qv_shard_foreach(e->s, sum_usage, &u) == 0, "qv_shard_foreach");
	for (int t = 0; t < QV_TIERS; t++) {
		LT_CHECK(st->tier[t].used_bytes == u.used[t],
		         "status tier %d used_bytes %llu, sum of stored sizes %llu", t,
		         (unsigned long long)st->tier[t].used_bytes, (unsigned long long)u.used[t]);
		LT_CHECK(st->tier[t].raw_bytes == u.raw[t], "status tier %d raw_bytes %llu, sum %llu", t,
		         (unsigned long long)st->tier[t].raw_bytes, (unsigned long long)u.raw[t]);
		LT_CHECK(st->tier[t].shards == u.shards[t], "status tier %d shards %llu, count %llu", t,
		         (unsigned long long)st->tier[t].shards, (unsigned long long)u.shards[t]);
	}
	/* the net saving: shards stored raw cost their frames' alignment */
	uint64_t saved = u.raw[QV_TIER_COLD] > u.used[QV_TIER_COLD] ? u.raw[QV_TIER_COLD] - u.used[QV_TIER_COLD] : 0;
	LT_CHECK(st->saved_by_compression == saved,
	         "status saved_by_compression %llu, cold raw - cold stored %llu",
	         (unsigned long long)st->saved_by_compression, (unsigned long long)saved);
	LT_CHECK(st->tier[QV_TIER_HOT].dir && strcmp(st->tier[QV_TIER_HOT].dir, e->hot) == 0,
	         "status hot dir %s, want %s", st->tier[QV_TIER_HOT].dir ? st->tier[QV_TIER_HOT].dir : "(null)", e->hot);
}

/* ---- tests ---------------------------------------------------------------------------- */

/* Demote: shards go cold and shrink when compressible; shared shards stay
 * hot; cold, mixed and hot versions load byte for byte on 1, 2, 4 decoders;
 * export and verify read the cold tier; promote brings everything back. */
/* The first progress call pins the version being demoted (as another
 * process could): the demotion decides again and moves that shard again. */
struct pin_midway {
	struct seen seen;
	qv_store *s;
	int pinned;
};

static void pin_on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct pin_midway *p = arg;
	on_progress(&p->seen, done, total);
	if (!p->pinned++)
		assert_int_equal(qv_version_pin(p->s, MODEL, "v1", 1), 0);
}

static void test_progress_redecided(void **state)
{
	struct env *e = *state;
	open_tiered(e, 1, 0, 0.9, 0.75);
	std_version(e, 0, NULL, 0);
	publish(e, 0, "v1", 0);
	std_version(e, 1, NULL, 0);
	publish(e, 1, "v2", 1); /* current: v1 is free to go */
	struct pin_midway p = {.s = e->s};
	qv_migrate_result r;
	int rc = qv_tier_demote(e->s, MODEL, "v1", &r, pin_on_progress, &p);
	LT_CHECK(rc == 0, "demote v1: %d %s", rc, qv_store_errmsg(e->s));
	LT_CHECK(p.pinned > 1, "the demotion told progress %d times", p.pinned);
	check_progress(&p.seen, &r, "demote redecided after a pin");
	print_message("# demote that decided again: %llu progress calls, %llu of %llu\n",
	              (unsigned long long)p.seen.calls, (unsigned long long)p.seen.last,
	              (unsigned long long)p.seen.total);
}

/* A demotion that decides again after the first shard was copied goes back
 * to that shard: the shards it kept hot after it are counted once. One shard
 * of v1 is its own and KEPT are v2's too; the bug this pins (kept shards
 * past the first counted twice) shows unless that shard sorts last, so in
 * KEPT of KEPT + 1 runs. */
static void test_kept_counted_once(void **state)
{
	struct env *e = *state;
	enum { KEPT = 9 };
	unsigned char *data[KEPT];
	open_tiered(e, 1, 0, 0.9, 0.75);
	for (int k = 0; k < KEPT; k++)
		data[k] = make_data(K_RAND, MIB); /* a shard each */
	for (int i = 0; i < 2; i++) {
		e->used[i] = 1;
		struct lt_file *f = lt_file_add(&e->m[i], "model.safetensors");
		for (int k = 0; k < KEPT; k++) {
			char name[16];
			snprintf(name, sizeof(name), "s%d", k);
			add_tensor(f, name, K_RAND, MIB, data[k]);
		}
		if (i == 0)
			add_tensor(f, "own", K_RAND, MIB, NULL);
	}
	publish(e, 0, "v1", 0);
	publish(e, 1, "v2", 1);
	struct pin_midway p = {.s = e->s};
	qv_migrate_result r;
	int rc = qv_tier_demote(e->s, MODEL, "v1", &r, pin_on_progress, &p);
	LT_CHECK(rc == 0, "demote v1: %d %s", rc, qv_store_errmsg(e->s));
	LT_CHECK(p.pinned > 1, "the demotion told progress %d times", p.pinned);
	LT_CHECK(r.shards == 1 && r.kept == KEPT, "demote: %llu shards moved, %llu kept; want 1, %d",
	         (unsigned long long)r.shards, (unsigned long long)r.kept, KEPT);
	for (int k = 0; k < KEPT; k++)
		free(data[k]);
}

static void test_demote_load_promote(void **state)
{
	struct env *e = *state;
	open_tiered(e, 1, 0, 0.9, 0.75);
	unsigned char *shared = make_data(K_BF16, 2 * MIB);
	std_version(e, 0, shared, 2 * MIB);
	publish(e, 0, "v1", 1);
	std_version(e, 1, shared, 2 * MIB);
	publish(e, 1, "v2", 1); /* current */
	std_version(e, 2, NULL, 0);
	publish(e, 2, "v3", 0); /* shares nothing */
	free(shared);

	qv_shard_info before = shard_of(e, "v3", "w.bf16", NULL);
	LT_CHECK(before.tier == QV_TIER_HOT && before.codec == QV_CODEC_RAW &&
	         before.stored_size == before.size, "fresh shard not hot/raw");
	assert_int_equal(tier_of(e, "v3"), QV_TIER_HOT);

	/* a version that shares nothing goes entirely cold */
	size_t n3;
	uint64_t raw3 = lt_distinct_shard_bytes(e->s, MODEL, "v3", &n3);
	qv_migrate_result r = demote(e, "v3");
	LT_CHECK(r.shards == n3 && r.kept == 0 && r.raw_bytes == raw3,
	         "demote v3: shards %llu (want %zu), kept %llu, raw %llu (want %llu)",
	         (unsigned long long)r.shards, n3, (unsigned long long)r.kept,
	         (unsigned long long)r.raw_bytes, (unsigned long long)raw3);
	assert_int_equal(tier_of(e, "v3"), QV_TIER_COLD);
	const char *names[] = {"w.bf16", "w.f32", "w.rand", "norm.a", "norm.b"};
	uint64_t stored_sum = 0;
	for (size_t i = 0; i < 5; i++) {
		qv_shard_info in = shard_of(e, "v3", names[i], NULL);
		LT_CHECK(in.tier == QV_TIER_COLD && in.codec == QV_CODEC_FRAMES,
		         "v3 %s: tier %d codec %d after demote", names[i], in.tier, in.codec);
		if (i < 2)
			LT_CHECK(in.stored_size < in.size, "v3 %s (compressible): stored %llu >= raw %llu",
			         names[i], (unsigned long long)in.stored_size,
			         (unsigned long long)in.size);
		if (i == 2)
			LT_CHECK(in.stored_size >= in.size,
			         "v3 w.rand (random): stored %llu < raw %llu: random bytes compressed?",
			         (unsigned long long)in.stored_size, (unsigned long long)in.size);
		LT_CHECK(in.stored_size % QV_CODEC_ALIGN == 0, "cold stored size not 4K aligned");
	}
	(void)stored_sum;
	/* the hot copies are gone, the cold ones exist */
	uint8_t d[32];
	char hp[PATH_MAX], cp[PATH_MAX];
	shard_of(e, "v3", "w.bf16", d);
	qv_shard_path_tier(e->s, d, QV_TIER_HOT, hp, sizeof(hp));
	qv_shard_path_tier(e->s, d, QV_TIER_COLD, cp, sizeof(cp));
	LT_CHECK(!file_exists(hp) && file_exists(cp), "after demote: hot copy %d, cold copy %d",
	         file_exists(hp), file_exists(cp));
	LT_CHECK(strncmp(cp, e->cold, strlen(e->cold)) == 0, "cold path %s not under %s", cp, e->cold);

	/* v1 shares w.shared with current v2: that shard stays hot -> mixed */
	r = demote(e, "v1");
	LT_CHECK(r.kept == 1, "demote v1: kept %llu, want 1 (w.shared is used by current v2)",
	         (unsigned long long)r.kept);
	assert_int_equal(tier_of(e, "v1"), -1);
	assert_int_equal(shard_of(e, "v1", "w.shared", NULL).tier, QV_TIER_HOT);
	assert_int_equal(shard_of(e, "v1", "w.bf16", NULL).tier, QV_TIER_COLD);
	assert_int_equal(tier_of(e, "v2"), QV_TIER_HOT);
	/* demoting again moves nothing more */
	r = demote(e, "v1");
	LT_CHECK(r.shards == 0, "second demote of v1 moved %llu shards", (unsigned long long)r.shards);

	/* loads: cold, mixed, hot */
	unsigned th[] = {1, 2, 4};
	for (size_t k = 0; k < 3; k++) {
		LT_CHECK(load_check(e, 2, "v3", th[k], QV_IO_AUTO, 0) > 0, "v3 (cold): cold_bytes 0");
		LT_CHECK(load_check(e, 0, "v1", th[k], QV_IO_AUTO, k == 1) > 0, "v1 (mixed): cold_bytes 0");
		LT_CHECK(load_check(e, 1, "v2", th[k], QV_IO_AUTO, 0) == 0, "v2 (hot): cold_bytes > 0");
	}
	/* cold frames are read O_DIRECT unless the load asks for buffered io:
	 * only a buffered load leaves the cold files in the page cache */
	cold_cache_drop(e);
	LT_CHECK(load_check(e, 0, "v1", 3, QV_IO_DIRECT, 0) > 0, "v1 direct: cold_bytes 0");
	LT_CHECK(load_check(e, 2, "v3", 2, QV_IO_DIRECT, 0) > 0, "v3 direct: cold_bytes 0");
	double direct_share = cold_cache_share(e);
	cold_cache_drop(e);
	LT_CHECK(load_check(e, 0, "v1", 3, QV_IO_BUFFERED, 0) > 0, "v1 buffered: cold_bytes 0");
	LT_CHECK(load_check(e, 2, "v3", 0, QV_IO_BUFFERED, 1) > 0, "v3 buffered: cold_bytes 0");
	double buffered_share = cold_cache_share(e);
	LT_CHECK(buffered_share > 0.9 && direct_share < 0.2,
	         "cold files in the page cache after a direct load %.2f, a buffered one %.2f",
	         direct_share, buffered_share);
	print_message("#   ok: cold files cached after a direct load %.2f, after a buffered one %.2f\n",
	              direct_share, buffered_share);

	/* export of a cold and a mixed version: byte for byte */
	char out[PATH_MAX], want[PATH_MAX], got[PATH_MAX + 32];
	for (int i = 0; i < 2; i++) {
		const char *ref = i ? "v1" : "v3";
		int mi = i ? 0 : 2;
		snprintf(out, sizeof(out), "%s/export-%s", e->base, ref);
		int rc = qv_export(e->s, MODEL, ref, out, NULL, NULL);
		LT_CHECK(rc == 0, "qv_export(%s): %d (%s) %s", ref, rc, qv_strerror(rc),
		         qv_store_errmsg(e->s));
		snprintf(want, sizeof(want), "%s", e->m[mi].path);
		snprintf(got, sizeof(got), "%s/model.safetensors", out);
		same_files(want, got);
	}
	verify_expect(e, "v3", 0, NULL);
	verify_expect(e, "v1", 0, NULL);
	verify_expect(e, NULL, 0, NULL);

	/* promote everything back */
	r = promote(e, "v3");
	LT_CHECK(r.shards == n3, "promote v3 moved %llu shards, want %zu", (unsigned long long)r.shards,
	         n3);
	r = promote(e, "v1");
	assert_int_equal(tier_of(e, "v3"), QV_TIER_HOT);
	assert_int_equal(tier_of(e, "v1"), QV_TIER_HOT);
	qv_shard_info after = shard_of(e, "v3", "w.bf16", NULL);
	LT_CHECK(after.tier == QV_TIER_HOT && after.codec == QV_CODEC_RAW &&
	         after.stored_size == after.size && after.size == before.size &&
	         after.xxh3 == before.xxh3, "promoted shard: tier %d codec %d stored %llu size %llu",
	         after.tier, after.codec, (unsigned long long)after.stored_size,
	         (unsigned long long)after.size);
	LT_CHECK(file_exists(hp) && !file_exists(cp), "after promote: hot copy %d, cold copy %d",
	         file_exists(hp), file_exists(cp));
	for (size_t k = 0; k < 3; k++) {
		LT_CHECK(load_check(e, 2, "v3", th[k], QV_IO_AUTO, 1) == 0, "v3 promoted: cold_bytes");
		LT_CHECK(load_check(e, 0, "v1", th[k], QV_IO_AUTO, 0) == 0, "v1 promoted: cold_bytes");
	}
	verify_expect(e, NULL, 0, NULL);
	tmp_empty(e);
}

/* The cold readers quiver should pick for files in dir, found another way
 * than load.c does: sysfs's device folder, its parent when it is a
 * partition (it has a "partition" file). 16 when unknown. */
static unsigned want_default_cold_reads(const char *dir)
{
	struct stat st;
	char link[64], dev[PATH_MAX], path[PATH_MAX + 32];
	if (stat(dir, &st) != 0 || major(st.st_dev) == 0)
		return 16;
	snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
	if (!realpath(link, dev))
		return 16;
	snprintf(path, sizeof(path), "%s/partition", dev);
	if (access(path, F_OK) == 0)
		*strrchr(dev, '/') = '\0';
	snprintf(path, sizeof(path), "%s/queue/rotational", dev);
	FILE *f = fopen(path, "r");
	int c = f ? fgetc(f) : EOF;
	if (f)
		fclose(f);
	return c == '1' ? 2 : 16;
}

/* The stats of a load of an entirely cold version name what was used. */
static void test_cold_load_stats(void **state)
{
	struct env *e = *state;
	two_versions(e);
	demote(e, "v1");
	assert_int_equal(tier_of(e, "v1"), QV_TIER_COLD);
	enum qv_io_mode modes[] = {QV_IO_AUTO, QV_IO_DIRECT, QV_IO_BUFFERED};
	unsigned reads[] = {0, 1, QV_LOAD_COLD_READS_MAX}; /* 0: the default */
	for (int k = 0; k < 9; k++) {
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = modes[k % 3], .decode_threads = 2,
		                  .cold_reads = reads[k / 3]};
		qv_load *l = NULL;
		int rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &o, &l);
		LT_CHECK(rc == 0, "qv_load_run(cold v1, io %s): %d %s", lt_io_name(modes[k % 3]), rc,
		         qv_store_errmsg(e->s));
		lt_check_table(&e->m[0], l, qv_load_arena(l), "cold v1");
		const qv_load_stats *st = qv_load_get_stats(l);
		size_t n;
		uint64_t raw = lt_distinct_shard_bytes(e->s, MODEL, "v1", &n);
		LT_CHECK(st->cold_bytes == st->bytes && st->bytes == raw,
		         "cold v1 (io %s): cold_bytes %llu, bytes %llu, shard bytes %llu",
		         lt_io_name(modes[k % 3]), (unsigned long long)st->cold_bytes,
		         (unsigned long long)st->bytes, (unsigned long long)raw);
		LT_CHECK(st->decode_threads >= 1 && st->decode_threads <= 8, "decode_threads %u",
		         st->decode_threads);
		unsigned want = reads[k / 3] ? reads[k / 3] : want_default_cold_reads(e->cold);
		LT_CHECK(st->cold_reads == want, "cold v1 (io %s, cold_reads %u): %u read at once, want %u",
		         lt_io_name(modes[k % 3]), reads[k / 3], st->cold_reads, want);
		LT_CHECK(st->tensors == lt_model_tensors(&e->m[0]), "tensors %llu",
		         (unsigned long long)st->tensors);
		LT_CHECK(st->io == QV_IO_DIRECT || st->io == QV_IO_BUFFERED, "stats io %d", st->io);
		char engine[32];
		snprintf(engine, sizeof(engine), "%s%s%s", st->engine ? "\"" : "",
		         st->engine ? st->engine : "NULL", st->engine ? "\"" : "");
		/* no hot shard: no read engine ran, only the decode workers */
		int engine_ok = st->engine && strcmp(st->engine, "none") == 0;
		qv_load_destroy(l); /* before a failing check, which leaves the function */
		LT_CHECK(engine_ok,
		         "qv_load_get_stats()->engine of an entirely cold load (io %s) is %s, want "
		         "\"none\"", lt_io_name(modes[k % 3]), engine);
	}
}

/* Shards shared with a current, an aliased or a pinned version stay hot. */
static void test_protected_shards_stay_hot(void **state)
{
	struct env *e = *state;
	open_tiered(e, 1, 0, 0.9, 0.75);
	unsigned char *sa = make_data(K_BF16, 2 * MIB), *sb = make_data(K_F32, 2 * MIB),
	              *sc = make_data(K_RAND, 2 * MIB);
	e->used[0] = e->used[1] = e->used[2] = e->used[3] = 1;
	add_tensor(lt_file_add(&e->m[0], "model.safetensors"), "a", K_BF16, 2 * MIB, sa);
	add_tensor(lt_file_add(&e->m[1], "model.safetensors"), "b", K_F32, 2 * MIB, sb);
	add_tensor(lt_file_add(&e->m[2], "model.safetensors"), "c", K_RAND, 2 * MIB, sc);
	struct lt_file *f = lt_file_add(&e->m[3], "model.safetensors");
	add_tensor(f, "a", K_BF16, 2 * MIB, sa);
	add_tensor(f, "b", K_F32, 2 * MIB, sb);
	add_tensor(f, "c", K_RAND, 2 * MIB, sc);
	add_tensor(f, "own", K_BF16, 2 * MIB, NULL);
	free(sa);
	free(sb);
	free(sc);
	publish(e, 0, "aliased", 0);
	publish(e, 1, "pinned", 0);
	publish(e, 3, "loose", 0);
	publish(e, 2, "cur", 1);
	assert_int_equal(qv_alias_set(e->s, MODEL, "stable", "aliased"), 0);
	assert_int_equal(qv_version_pin(e->s, MODEL, "pinned", 1), 0);
	qv_version *v = getv(e, "pinned");
	LT_CHECK(v->pinned == 1, "pinned version reports pinned %d", v->pinned);
	qv_version_free(v);

	qv_migrate_result r = demote(e, "loose");
	LT_CHECK(r.kept == 3 && r.shards == 1,
	         "demote loose: kept %llu (want 3: a aliased, b pinned, c current), moved %llu (want 1)",
	         (unsigned long long)r.kept, (unsigned long long)r.shards);
	assert_int_equal(tier_of(e, "loose"), -1);
	assert_int_equal(shard_of(e, "loose", "own", NULL).tier, QV_TIER_COLD);
	assert_int_equal(shard_of(e, "loose", "a", NULL).tier, QV_TIER_HOT);
	assert_int_equal(shard_of(e, "loose", "b", NULL).tier, QV_TIER_HOT);
	assert_int_equal(shard_of(e, "loose", "c", NULL).tier, QV_TIER_HOT);
	assert_int_equal(tier_of(e, "aliased"), QV_TIER_HOT);
	assert_int_equal(tier_of(e, "pinned"), QV_TIER_HOT);
	assert_int_equal(tier_of(e, "cur"), QV_TIER_HOT);
	load_check(e, 3, "loose", 2, QV_IO_AUTO, 1);

	/* once unpinned and promoted back, demoting loose again moves b too */
	promote(e, "loose");
	assert_int_equal(qv_version_pin(e->s, MODEL, "pinned", 0), 0);
	v = getv(e, "pinned");
	LT_CHECK(v->pinned == 0, "unpinned version reports pinned %d", v->pinned);
	qv_version_free(v);
	/* "pinned" is now an unprotected, entirely hot version: it stays hot,
	 * and so does b (a hot version not being demoted keeps its shards) */
	r = demote(e, "loose");
	LT_CHECK(r.kept == 3, "demote loose after unpin: kept %llu, want 3 (b is used by the hot version 'pinned')",
	         (unsigned long long)r.kept);
	demote(e, "pinned");
	assert_int_equal(tier_of(e, "pinned"), QV_TIER_COLD);
	load_check(e, 1, "pinned", 1, QV_IO_AUTO, 0);
	load_check(e, 3, "loose", 4, QV_IO_AUTO, 0);
	tmp_empty(e);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	LT_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	unsigned char b;
	LT_CHECK(pread(fd, &b, 1, off) == 1, "pread %s", path);
	b ^= 0x5a;
	LT_CHECK(pwrite(fd, &b, 1, off) == 1, "pwrite %s", path);
	fsync(fd);
	close(fd);
}

/* A flipped byte inside a frame of a cold file: verify names the shard, loads
 * fail with QV_ECORRUPT with or without verify, promote refuses and leaves it
 * cold. */
static void test_cold_damage(void **state)
{
	struct env *e = *state;
	two_versions(e);
	demote(e, "v1");
	verify_expect(e, "v1", 0, NULL);

	uint8_t d[32];
	char cp[PATH_MAX], hp[PATH_MAX];
	qv_shard_info info = shard_of(e, "v1", "w.bf16", d);
	LT_CHECK(info.tier == QV_TIER_COLD, "w.bf16 not cold");
	qv_shard_path_tier(e->s, d, QV_TIER_COLD, cp, sizeof(cp));
	qv_shard_path_tier(e->s, d, QV_TIER_HOT, hp, sizeof(hp));
	int fd = open(cp, O_RDONLY);
	LT_CHECK(fd >= 0, "open %s", cp);
	struct stat st;
	fstat(fd, &st);
	struct qv_codec_header *h = NULL;
	int rc = qv_codec_header_read(fd, (uint64_t)st.st_size, &h);
	close(fd);
	LT_CHECK(rc == 0, "qv_codec_header_read(%s): %d", cp, rc);
	LT_CHECK(h->frame_count >= 2, "3 MiB shard in %u frames", h->frame_count);
	LT_CHECK((uint64_t)st.st_size == info.stored_size, "cold file %lld bytes, index says %llu",
	         (long long)st.st_size, (unsigned long long)info.stored_size);
	off_t off = (off_t)(h->frames[1].offset + h->frames[1].stored_bytes / 2);
	qv_codec_header_destroy(h);
	flip_byte(cp, off);
	unsigned char *damaged;
	size_t dlen;
	read_file(cp, &damaged, &dlen);

	verify_expect(e, "v1", 1, d);
	verify_expect(e, "v2", 0, NULL);
	load_fails(e, "v1", 0, QV_ECORRUPT);
	load_fails(e, "v1", 1, QV_ECORRUPT);
	load_check(e, 1, "v2", 2, QV_IO_AUTO, 1);

	char out[700];
	snprintf(out, sizeof(out), "%s/export-bad", e->base);
	rc = qv_export(e->s, MODEL, "v1", out, NULL, NULL);
	LT_CHECK(rc == QV_ECORRUPT, "qv_export of damaged cold v1: %d (%s), want QV_ECORRUPT", rc,
	         qv_strerror(rc));

	qv_migrate_result r;
	rc = qv_tier_promote(e->s, MODEL, "v1", &r, NULL, NULL);
	LT_CHECK(rc == QV_ECORRUPT, "qv_tier_promote of damaged v1: %d (%s), want QV_ECORRUPT: %s", rc,
	         qv_strerror(rc), qv_store_errmsg(e->s));
	info = shard_of(e, "v1", "w.bf16", NULL);
	LT_CHECK(info.tier == QV_TIER_COLD && info.codec == QV_CODEC_FRAMES,
	         "damaged shard after failed promote: tier %d codec %d", info.tier, info.codec);
	LT_CHECK(!file_exists(hp), "failed promote left a hot copy %s", hp);
	unsigned char *now;
	size_t nlen;
	read_file(cp, &now, &nlen);
	LT_CHECK(nlen == dlen && memcmp(now, damaged, nlen) == 0,
	         "failed promote changed the cold file");
	free(now);
	free(damaged);
	tmp_empty(e);
	verify_expect(e, "v1", 1, d);
	/* the other shards of v1 are intact wherever they are */
	const char *names[] = {"w.f32", "w.rand", "norm.a", "norm.b"};
	for (size_t i = 0; i < 4; i++) {
		uint8_t dd[32];
		qv_shard_info in = shard_of(e, "v1", names[i], dd);
		char p[PATH_MAX];
		qv_shard_path_tier(e->s, dd, in.tier, p, sizeof(p));
		LT_CHECK(file_exists(p), "shard of %s missing on its tier %d", names[i], in.tier);
	}
}

static int cmp32(const void *a, const void *b)
{
	return memcmp(a, b, 32);
}

/* A migration whose first shard cannot be renamed into place (a folder
 * stands at its path): the migration fails, and the copy of the next shard,
 * made while the first one's fsync ran, is dropped too. Every shard stays
 * where it was, intact, and nothing is left in the temp folders. */
static void test_migrate_finish_fails(void **state)
{
	struct env *e = *state;
	two_versions(e);

	static const char *names[] = {"w.bf16", "w.f32", "w.rand", "norm.a", "norm.b"};
	uint8_t d[5][32];
	for (size_t i = 0; i < 5; i++)
		shard_of(e, "v1", names[i], d[i]);
	qsort(d, 5, 32, cmp32); /* the order a migration takes them in */
	size_t n = 1; /* small tensors share a shard */
	for (size_t i = 1; i < 5; i++)
		if (memcmp(d[i], d[n - 1], 32) != 0)
			memcpy(d[n++], d[i], 32);
	LT_CHECK(n >= 2, "v1 has %zu shards", n);

	for (int to = QV_TIER_COLD; to >= QV_TIER_HOT; to--) {
		char block[PATH_MAX], next[PATH_MAX];
		qv_shard_path_tier(e->s, d[0], to, block, sizeof(block));
		qv_shard_path_tier(e->s, d[1], to, next, sizeof(next));
		char cmd[PATH_MAX + 32];
		snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", block);
		LT_CHECK(system(cmd) == 0, "%s", cmd);

		qv_migrate_result r;
		int rc = to == QV_TIER_COLD ? qv_tier_demote(e->s, MODEL, "v1", &r, NULL, NULL)
		                            : qv_tier_promote(e->s, MODEL, "v1", &r, NULL, NULL);
		LT_CHECK(rc != 0, "migration to tier %d past a folder at %s succeeded", to, block);
		LT_CHECK(strstr(qv_store_errmsg(e->s), block) != NULL,
		         "the error does not name the path: %s", qv_store_errmsg(e->s));
		LT_CHECK(r.shards == 0, "%llu shards moved", (unsigned long long)r.shards);
		for (size_t i = 0; i < n; i++) {
			qv_shard_info info;
			LT_CHECK(qv_shard_info_get(e->s, d[i], &info) == 0, "shard %zu", i);
			LT_CHECK(info.tier == 1 - to, "shard %zu on tier %d after a failed move", i,
			         info.tier);
		}
		LT_CHECK(!file_exists(next), "the next shard's copy was left at %s", next);
		tmp_empty(e);
		verify_expect(e, "v1", 0, NULL);

		LT_CHECK(rmdir(block) == 0, "rmdir %s", block);
		if (to == QV_TIER_COLD)
			demote(e, "v1");
		else
			promote(e, "v1");
		LT_CHECK(tier_of(e, "v1") == to, "v1 not on tier %d", to);
	}
	load_check(e, 0, "v1", 2, QV_IO_AUTO, 1);
}

static void touch(struct env *e, const char *label)
{
	int rc = qv_version_touch(e->s, MODEL, label);
	LT_CHECK(rc == 0, "qv_version_touch(%s): %d", label, rc);
	struct timespec ts = {0, 2000000};
	nanosleep(&ts, NULL);
}

/* The policy: above high, demote least recently loaded unprotected versions
 * until under low; never current, aliased or pinned. */
static void test_policy(void **state)
{
	struct env *e = *state;
	/* 7 versions of 4 MiB each; capacity 24 MiB: high 21.6 MiB, low 18 MiB */
	open_tiered(e, 1, 24 * MIB, 0.9, 0.75);
	char label[8];
	for (int i = 0; i < 7; i++) {
		e->used[i] = 1;
		add_tensor(lt_file_add(&e->m[i], "model.safetensors"), "w", K_BF16, 4 * MIB, NULL);
		snprintf(label, sizeof(label), "v%d", i + 1);
		publish(e, i, label, i == 6);
	}
	assert_int_equal(qv_version_pin(e->s, MODEL, "v1", 1), 0);
	assert_int_equal(qv_alias_set(e->s, MODEL, "stable", "v2"), 0);
	/* load order, oldest first: v5 (by a real load), v3, v6, v4 */
	load_check(e, 4, "v5", 2, QV_IO_AUTO, 0);
	struct timespec ts = {0, 2000000};
	nanosleep(&ts, NULL);
	touch(e, "v3");
	touch(e, "v6");
	touch(e, "v4");
	qv_version *v = getv(e, "v5");
	LT_CHECK(v->last_load_ns > 0, "qv_load_run did not record a load of v5");
	qv_version_free(v);

	qv_tier_status st;
	check_status(e, &st);
	LT_CHECK(st.tier[QV_TIER_HOT].used_bytes == 28 * MIB, "hot used %llu, want 28 MiB",
	         (unsigned long long)st.tier[QV_TIER_HOT].used_bytes);
	LT_CHECK(st.tier[QV_TIER_HOT].capacity == 24 * MIB, "status capacity %llu",
	         (unsigned long long)st.tier[QV_TIER_HOT].capacity);

	qv_policy_result p;
	struct seen seen = {0};
	int rc = qv_tier_apply(e->s, &p, on_progress, &seen);
	LT_CHECK(rc == 0, "qv_tier_apply: %d (%s) %s", rc, qv_strerror(rc), qv_store_errmsg(e->s));
	/* progress: what the hot tier shed, of the hot bytes of the versions
	 * it takes to shed enough (three of 4 MiB here, nothing shared) */
	LT_CHECK(!seen.bad && seen.calls >= 3 && seen.total == p.moved.raw_bytes &&
	         seen.last == seen.total,
	         "policy progress: %llu of %llu in %llu calls (bad %d), moved %llu",
	         (unsigned long long)seen.last, (unsigned long long)seen.total,
	         (unsigned long long)seen.calls, seen.bad, (unsigned long long)p.moved.raw_bytes);
	LT_CHECK(p.hot_before == 28 * MIB && p.hot_after == 16 * MIB && p.versions == 3 &&
	         p.moved.shards == 3,
	         "policy: hot %llu -> %llu, %llu versions, %llu shards (want 28 MiB -> 16 MiB, 3, 3)",
	         (unsigned long long)p.hot_before, (unsigned long long)p.hot_after,
	         (unsigned long long)p.versions, (unsigned long long)p.moved.shards);
	const char *cold[] = {"v3", "v5", "v6"}, *hot[] = {"v1", "v2", "v4", "v7"};
	for (int i = 0; i < 3; i++)
		LT_CHECK(tier_of(e, cold[i]) == QV_TIER_COLD, "policy left %s hot", cold[i]);
	for (int i = 0; i < 4; i++)
		LT_CHECK(tier_of(e, hot[i]) == QV_TIER_HOT, "policy demoted %s", hot[i]);

	/* under the high watermark: nothing to do */
	rc = qv_tier_apply(e->s, &p, NULL, NULL);
	LT_CHECK(rc == 0 && p.versions == 0 && p.hot_after == p.hot_before,
	         "second apply: rc %d, demoted %llu", rc, (unsigned long long)p.versions);

	/* unpin v1, publish two more (v8 not current, v9 current): 24 MiB hot.
	 * Unprotected now: v1, v7 (no longer current) and v8, never loaded, and
	 * v4 (loaded): v1 then v7 go (never loaded, oldest first) */
	assert_int_equal(qv_version_pin(e->s, MODEL, "v1", 0), 0);
	for (int i = 7; i < 9; i++) {
		e->used[i] = 1;
		add_tensor(lt_file_add(&e->m[i], "model.safetensors"), "w", K_BF16, 4 * MIB, NULL);
		snprintf(label, sizeof(label), "v%d", i + 1);
		publish(e, i, label, i == 8);
	}
	rc = qv_tier_apply(e->s, &p, NULL, NULL);
	LT_CHECK(rc == 0, "third apply: %d %s", rc, qv_store_errmsg(e->s));
	LT_CHECK(p.hot_before == 24 * MIB && p.hot_after == 16 * MIB && p.versions == 2,
	         "third apply: hot %llu -> %llu, %llu versions (want 24 MiB -> 16 MiB, 2)",
	         (unsigned long long)p.hot_before, (unsigned long long)p.hot_after,
	         (unsigned long long)p.versions);
	LT_CHECK(tier_of(e, "v1") == QV_TIER_COLD, "unpinned never-loaded v1 stayed hot");
	LT_CHECK(tier_of(e, "v7") == QV_TIER_COLD, "never-loaded older v7 (no longer current) stayed hot");
	LT_CHECK(tier_of(e, "v8") == QV_TIER_HOT, "never-loaded newer v8 demoted before older v7");
	LT_CHECK(tier_of(e, "v4") == QV_TIER_HOT, "recently loaded v4 demoted before never-loaded ones");
	LT_CHECK(tier_of(e, "v2") == QV_TIER_HOT && tier_of(e, "v9") == QV_TIER_HOT,
	         "policy demoted a protected version");
	check_status(e, &st);
	LT_CHECK(st.tier[QV_TIER_HOT].versions == 4 && st.tier[QV_TIER_COLD].versions == 5 &&
	         st.mixed_versions == 0, "status versions hot %llu cold %llu mixed %llu (want 4/5/0)",
	         (unsigned long long)st.tier[QV_TIER_HOT].versions,
	         (unsigned long long)st.tier[QV_TIER_COLD].versions,
	         (unsigned long long)st.mixed_versions);
	for (int i = 0; i < 9; i++) {
		snprintf(label, sizeof(label), "v%d", i + 1);
		load_check(e, i, label, 2, QV_IO_AUTO, 0);
	}
}

/* Even when everything unprotected is demoted, usage above low does not
 * touch current/aliased/pinned versions. */
static void test_policy_only_protected(void **state)
{
	struct env *e = *state;
	open_tiered(e, 1, 4 * MIB, 0.9, 0.5);
	char label[8];
	for (int i = 0; i < 4; i++) {
		e->used[i] = 1;
		add_tensor(lt_file_add(&e->m[i], "model.safetensors"), "w", K_RAND, 2 * MIB, NULL);
		snprintf(label, sizeof(label), "v%d", i + 1);
		publish(e, i, label, i == 3);
	}
	assert_int_equal(qv_version_pin(e->s, MODEL, "v1", 1), 0);
	assert_int_equal(qv_alias_set(e->s, MODEL, "prod", "v2"), 0);
	qv_policy_result p;
	int rc = qv_tier_apply(e->s, &p, NULL, NULL);
	LT_CHECK(rc == 0 && p.versions == 1, "apply: rc %d (%s), %llu versions demoted, want 1", rc,
	         qv_strerror(rc), (unsigned long long)p.versions);
	assert_int_equal(tier_of(e, "v3"), QV_TIER_COLD);
	assert_int_equal(tier_of(e, "v1"), QV_TIER_HOT);
	assert_int_equal(tier_of(e, "v2"), QV_TIER_HOT);
	assert_int_equal(tier_of(e, "v4"), QV_TIER_HOT);
	LT_CHECK(p.hot_after == 6 * MIB, "hot after %llu", (unsigned long long)p.hot_after);
	/* random data: stored_bytes >= raw_bytes (nothing saved) */
	LT_CHECK(p.moved.stored_bytes >= p.moved.raw_bytes, "random data compressed: %llu < %llu",
	         (unsigned long long)p.moved.stored_bytes, (unsigned long long)p.moved.raw_bytes);
}

/* Status numbers: used = sum of stored sizes per tier; savings. */
static void test_status(void **state)
{
	struct env *e = *state;
	open_tiered(e, 1, 1ull << 30, 0.8, 0.6);
	qv_tier_status st;
	check_status(e, &st);
	LT_CHECK(st.tier[QV_TIER_COLD].dir && strcmp(st.tier[QV_TIER_COLD].dir, e->cold) == 0,
	         "status cold dir");
	LT_CHECK(st.high > 0.79 && st.high < 0.81 && st.low > 0.59 && st.low < 0.61,
	         "watermarks %.3f %.3f", st.high, st.low);
	LT_CHECK(st.saved_by_compression == 0 && st.saved_by_dedup == 0 &&
	         st.tier[QV_TIER_HOT].used_bytes == 0, "empty store status not zero");
	unsigned char *shared = make_data(K_BF16, 2 * MIB);
	std_version(e, 0, shared, 2 * MIB);
	publish(e, 0, "v1", 0);
	std_version(e, 1, shared, 2 * MIB);
	publish(e, 1, "v2", 1);
	free(shared);
	check_status(e, &st);
	LT_CHECK(st.saved_by_dedup >= 2 * MIB, "saved_by_dedup %llu with a 2 MiB shared shard",
	         (unsigned long long)st.saved_by_dedup);
	LT_CHECK(st.saved_by_compression == 0, "saved_by_compression %llu with nothing cold",
	         (unsigned long long)st.saved_by_compression);
	LT_CHECK(st.tier[QV_TIER_HOT].versions == 2, "hot versions %llu",
	         (unsigned long long)st.tier[QV_TIER_HOT].versions);
	uint64_t dedup_before = st.saved_by_dedup;
	demote(e, "v1");
	check_status(e, &st);
	/* check_status compared it with the per-shard sum; the compressible
	 * BF16/F32 shards of v1 (about 5.5 MiB) must save something real */
	LT_CHECK(st.saved_by_compression > 512 * KIB, "saved_by_compression %llu after demoting BF16/F32 data",
	         (unsigned long long)st.saved_by_compression);
	LT_CHECK(st.saved_by_dedup == dedup_before, "saved_by_dedup changed by a demote: %llu -> %llu",
	         (unsigned long long)dedup_before, (unsigned long long)st.saved_by_dedup);
	LT_CHECK(st.mixed_versions == 1 && st.tier[QV_TIER_HOT].versions == 1 &&
	         st.tier[QV_TIER_COLD].versions == 0,
	         "versions: hot %llu cold %llu mixed %llu (want 1/0/1)",
	         (unsigned long long)st.tier[QV_TIER_HOT].versions,
	         (unsigned long long)st.tier[QV_TIER_COLD].versions,
	         (unsigned long long)st.mixed_versions);
	/* the real files agree with the index */
	qv_version *v = getv(e, "v1");
	for (size_t j = 0; j < v->files[0].n_tensors; j++) {
		const qv_tensor *t = &v->files[0].tensors[j];
		qv_shard_info in;
		assert_int_equal(qv_shard_info_get(e->s, t->shard, &in), 0);
		char p[PATH_MAX];
		qv_shard_path_tier(e->s, t->shard, in.tier, p, sizeof(p));
		struct stat sb;
		LT_CHECK(stat(p, &sb) == 0 && (uint64_t)sb.st_size == in.stored_size,
		         "%s: file size %lld, stored_size %llu", t->name, (long long)sb.st_size,
		         (unsigned long long)in.stored_size);
	}
	qv_version_free(v);
}

/* gc removes a copy of a shard planted on the tier the index does not name,
 * and keeps the real one. */
static void test_gc_wrong_tier(void **state)
{
	struct env *e = *state;
	two_versions(e);
	demote(e, "v1");
	uint8_t dh[32], dc[32];
	char hot_real[PATH_MAX], hot_fake[PATH_MAX], cold_real[PATH_MAX], cold_fake[PATH_MAX];
	shard_of(e, "v2", "w.bf16", dh);
	shard_of(e, "v1", "w.f32", dc);
	qv_shard_path_tier(e->s, dh, QV_TIER_HOT, hot_real, sizeof(hot_real));
	qv_shard_path_tier(e->s, dh, QV_TIER_COLD, cold_fake, sizeof(cold_fake));
	qv_shard_path_tier(e->s, dc, QV_TIER_COLD, cold_real, sizeof(cold_real));
	qv_shard_path_tier(e->s, dc, QV_TIER_HOT, hot_fake, sizeof(hot_fake));
	copy_file(hot_real, cold_fake);
	copy_file(cold_real, hot_fake);
	qv_free_result fr;
	int rc = qv_gc(e->s, 1, &fr);
	LT_CHECK(rc == 0 && fr.shards == 2, "gc dry run: rc %d, %llu shard files (want 2)", rc,
	         (unsigned long long)fr.shards);
	LT_CHECK(file_exists(cold_fake) && file_exists(hot_fake), "gc --dry-run removed files");
	rc = qv_gc(e->s, 0, &fr);
	LT_CHECK(rc == 0, "qv_gc: %d (%s) %s", rc, qv_strerror(rc), qv_store_errmsg(e->s));
	LT_CHECK(!file_exists(cold_fake), "gc kept the planted cold copy of a hot shard");
	LT_CHECK(!file_exists(hot_fake), "gc kept the planted hot copy of a cold shard");
	LT_CHECK(file_exists(hot_real) && file_exists(cold_real), "gc removed a real shard file");
	LT_CHECK(fr.shards == 2 && fr.versions == 0, "gc freed %llu shards, %llu versions (want 2, 0)",
	         (unsigned long long)fr.shards, (unsigned long long)fr.versions);
	assert_int_equal(shard_of(e, "v2", "w.bf16", NULL).tier, QV_TIER_HOT);
	assert_int_equal(shard_of(e, "v1", "w.f32", NULL).tier, QV_TIER_COLD);
	verify_expect(e, NULL, 0, NULL);
	load_check(e, 0, "v1", 2, QV_IO_AUTO, 1);
	load_check(e, 1, "v2", 2, QV_IO_AUTO, 1);
	/* rm of a cold version frees its cold files */
	qv_free_result rr;
	rc = qv_version_rm(e->s, MODEL, "v1", 0, &rr);
	LT_CHECK(rc == 0, "qv_version_rm(v1 cold): %d %s", rc, qv_store_errmsg(e->s));
	LT_CHECK(!file_exists(cold_real), "rm of a cold version left its cold shard file");
	rc = qv_gc(e->s, 0, &fr);
	LT_CHECK(rc == 0 && fr.shards == 0, "gc after rm: rc %d, %llu shards", rc,
	         (unsigned long long)fr.shards);
}

/* A store without a cold tier: demote/promote -ENOTSUP, apply no-op. */
static void test_no_cold_tier(void **state)
{
	struct env *e = *state;
	open_tiered(e, 0, 1 * MIB, 0.9, 0.75);
	std_version(e, 0, NULL, 0);
	publish(e, 0, "v1", 0);
	std_version(e, 1, NULL, 0);
	publish(e, 1, "v2", 1);
	qv_migrate_result r;
	int rc = qv_tier_demote(e->s, MODEL, "v1", &r, NULL, NULL);
	LT_CHECK(rc == -ENOTSUP, "demote without a cold tier: %d (%s), want -ENOTSUP", rc,
	         qv_strerror(rc));
	rc = qv_tier_promote(e->s, MODEL, "v1", &r, NULL, NULL);
	LT_CHECK(rc == -ENOTSUP, "promote without a cold tier: %d (%s), want -ENOTSUP", rc,
	         qv_strerror(rc));
	qv_policy_result p;
	rc = qv_tier_apply(e->s, &p, NULL, NULL);
	LT_CHECK(rc == 0 && p.versions == 0, "apply without a cold tier: rc %d, %llu demoted", rc,
	         (unsigned long long)p.versions);
	assert_int_equal(tier_of(e, "v1"), QV_TIER_HOT);
	assert_null(qv_store_tmp_dir(e->s, QV_TIER_COLD));
	qv_tier_status st;
	check_status(e, &st);
	assert_null(st.tier[QV_TIER_COLD].dir);
	load_check(e, 0, "v1", 1, QV_IO_AUTO, 1);
	/* and a store opened without init at all */
	qv_store_close(e->s);
	char root2[600];
	snprintf(root2, sizeof(root2), "%s/plain", e->base);
	e->s = lt_store_open(root2);
	qv_tier_attach(e->s);
	rc = qv_tier_demote(e->s, MODEL, "v1", &r, NULL, NULL);
	LT_CHECK(rc == -ENOTSUP, "demote on a plain store: %d (%s), want -ENOTSUP", rc,
	         qv_strerror(rc));
}

/* init refuses to move a tier that holds shards; errors for unknown refs. */
static void test_init_and_errors(void **state)
{
	struct env *e = *state;
	two_versions(e);
	demote(e, "v1");
	qv_migrate_result r;
	int rc = qv_tier_demote(e->s, MODEL, "nope", &r, NULL, NULL);
	LT_CHECK(rc == QV_ENOTFOUND, "demote of an unknown version: %d, want QV_ENOTFOUND", rc);
	rc = qv_tier_promote(e->s, "org/none", "v1", &r, NULL, NULL);
	LT_CHECK(rc == QV_ENOTFOUND, "promote of an unknown model: %d, want QV_ENOTFOUND", rc);
	rc = qv_version_pin(e->s, MODEL, "nope", 1);
	LT_CHECK(rc == QV_ENOTFOUND, "pin of an unknown version: %d, want QV_ENOTFOUND", rc);
	qv_store_close(e->s);
	e->s = NULL;
	char err[512] = "", other[600];
	snprintf(other, sizeof(other), "%s/cold2", e->base);
	qv_store_config cfg = {.hot_dir = e->hot, .cold_dir = other, .high = 0.9, .low = 0.75};
	rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc != 0 && *err, "init moving a cold tier that holds shards: rc %d, msg '%s'", rc, err);
	cfg.cold_dir = NULL;
	rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc != 0, "init dropping a cold tier that holds shards: rc %d", rc);
	cfg.cold_dir = e->cold;
	cfg.hot_dir = other;
	rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc != 0, "init moving a hot tier that holds shards: rc %d", rc);
	cfg.hot_dir = e->hot;
	cfg.low = 0.95;
	rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc == -EINVAL, "init with low > high: rc %d", rc);
	/* the same tiers with a new capacity are fine */
	cfg.low = 0.5;
	cfg.hot_capacity = 64 * MIB;
	rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc == 0, "init keeping the tiers: rc %d %s", rc, err);
	e->s = lt_store_open(e->root);
	qv_tier_attach(e->s);
	qv_store_config c;
	qv_store_config_get(e->s, &c);
	LT_CHECK(c.hot_capacity == 64 * MIB && c.low > 0.49 && c.low < 0.51 && c.cold_dir &&
	         strcmp(c.cold_dir, e->cold) == 0, "config after re-init");
	load_check(e, 0, "v1", 2, QV_IO_AUTO, 0);
}

int main(void)
{
	lt_seed_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_demote_load_promote, setup, teardown),
		cmocka_unit_test_setup_teardown(test_progress_redecided, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kept_counted_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cold_load_stats, setup, teardown),
		cmocka_unit_test_setup_teardown(test_protected_shards_stay_hot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cold_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_finish_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_policy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_policy_only_protected, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_wrong_tier, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_cold_tier, setup, teardown),
		cmocka_unit_test_setup_teardown(test_init_and_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
