/* Tests of qv_load_run() into CUDA device memory (gpu/cuda.c's sink).
 *
 * Self-contained: it builds its own temp store under /var/tmp, loads into a
 * library-allocated device arena and into a caller arena from qv_gpu_alloc()
 * poisoned with qv_gpu_fill(), copies back with qv_gpu_to_host() and compares
 * every tensor with its source bytes. Without CUDA in the build or without a
 * usable device it exits 77 (skipped) and says why. Each test prints what it
 * checked. A version demoted to the cold tier loads the same way (frames
 * decoded into pinned buffers, then copied), and a damaged cold frame fails
 * it. QV_TEST_SEED repeats a run; QV_TEST_DEVICE picks the device (default
 * 0). */
#include <errno.h>
#include <math.h>
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
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "load_util.h"
#include "quiver/codec.h"
#include "quiver/error.h"
#include "quiver/tier.h"

#define POISON 0xA5
#define MODEL "org/gpu"

static int g_dev;

struct env {
	char base[256];
	char root[512];
	char in[512];
	qv_store *s;
	struct lt_model m;
	void *hog;            /* device memory held to fake a full GPU */
};

static void std_model(struct env *e)
{
	struct lt_file *f = lt_file_add(&e->m, "model.safetensors");
	lt_tensor_add(f, "straddle.a", 1 * MIB + 12345, NULL);
	lt_tensor_add(f, "small.a", 100, NULL);
	lt_tensor_add(f, "exact.2m", 2 * MIB, NULL);
	lt_tensor_add(f, "straddle.b", 4 * MIB + 4096 * 3 + 7, NULL);
	for (int i = 0; i < 200; i++) {
		char n[32];
		snprintf(n, sizeof(n), "tiny.%d", i);
		lt_tensor_add(f, n, 1 + lt_rand() % 4095, NULL);
	}
	lt_tensor_add(f, "straddle.c", 3 * MIB + 65536 + 1, NULL);
	lt_model_write(&e->m, e->in, 1);
	lt_publish(e->s, MODEL, &e->m, "v1");
}

static struct env *env_new(void)
{
	struct env *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	lt_tmpdir(e->base, sizeof(e->base), "load-cuda");
	snprintf(e->root, sizeof(e->root), "%s/root", e->base);
	snprintf(e->in, sizeof(e->in), "%s/in", e->base);
	return e;
}

static int setup(void **state)
{
	struct env *e = env_new();
	if (!e)
		return -1;
	e->s = lt_store_open(e->root);
	std_model(e);
	*state = e;
	return 0;
}

/* N(0, 0.02) as BF16 (truncated), one value in 97 with a rare exponent:
 * weights-like values whose cold frames are BF16 pairs with escapes. */
static void bf16_tensor(struct lt_file *f, const char *name, uint64_t values)
{
	unsigned char *d = malloc(2 * values);
	LT_CHECK(d, "out of memory");
	for (uint64_t i = 0; i < values; i++) {
		double u1 = ((double)(lt_rand() >> 11) + 1.0) / 9007199254740993.0;
		double u2 = (double)(lt_rand() >> 11) / 9007199254740992.0;
		float x = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2) * 0.02);
		uint32_t b;
		memcpy(&b, &x, 4);
		uint16_t v = (uint16_t)(b >> 16);
		if (i % 97 == 0)
			v = (uint16_t)((v & 0x807f) | (uint16_t)(((i / 97) % 60 + 10) << 7));
		memcpy(d + 2 * i, &v, 2);
	}
	size_t k = lt_tensor_add(f, name, 2 * values, d); /* may move f->t */
	struct lt_tensor *t = &f->t[k];
	snprintf(t->dtype, sizeof(t->dtype), "BF16");
	t->ndim = 1;
	t->shape[0] = (int64_t)values;
	free(d);
}

/* A store with a cold tier and the model `model` writes, published as v1
 * and demoted. */
static int setup_tiered(void **state, void (*model)(struct env *))
{
	struct env *e = env_new();
	if (!e)
		return -1;
	char hot[600], cold[600], err[512] = "";
	snprintf(hot, sizeof(hot), "%s/hot", e->base);
	snprintf(cold, sizeof(cold), "%s/cold", e->base);
	qv_store_config cfg = {.hot_dir = hot, .cold_dir = cold, .high = 0.9, .low = 0.75};
	int rc = qv_store_init(e->root, &cfg, err, sizeof(err));
	LT_CHECK(rc == 0, "qv_store_init: %d %s", rc, err);
	e->s = lt_store_open(e->root);
	qv_tier_attach(e->s);
	model(e);
	qv_migrate_result r;
	rc = qv_tier_demote(e->s, MODEL, "v1", &r, NULL, NULL);
	LT_CHECK(rc == 0, "qv_tier_demote: %d (%s) %s", rc, qv_strerror(rc), qv_store_errmsg(e->s));
	*state = e;
	return 0;
}

/* Three BF16 tensors, published as v1: cold frames of BF16 pairs. */
static void bf16_model(struct env *e)
{
	struct lt_file *f = lt_file_add(&e->m, "model.safetensors");
	bf16_tensor(f, "w.big", 3 * MIB + 12345);
	bf16_tensor(f, "w.small", 1000);
	bf16_tensor(f, "w.mid", MIB / 2 + 1);
	lt_model_write(&e->m, e->in, 1);
	lt_publish(e->s, MODEL, &e->m, "v1");
}

static int setup_cold(void **state)
{
	return setup_tiered(state, std_model);
}

static int setup_bf16(void **state)
{
	return setup_tiered(state, bf16_model);
}

static int teardown(void **state)
{
	struct env *e = *state;
	qv_load_fault_set(0, QV_FAULT_NONE);
	if (!e)
		return 0;
	qv_gpu_free(g_dev, e->hog);
	qv_store_close(e->s);
	lt_rmrf(e->base);
	lt_model_free(&e->m);
	free(e);
	return 0;
}

static void load_fails(struct env *e, void *dest, uint64_t dest_bytes, const qv_load_opts *o,
                       int want, const char *what)
{
	static int sentinel;
	qv_load *l = (qv_load *)&sentinel;
	int rc = qv_load_run(e->s, MODEL, "v1", dest, dest_bytes, o, &l);
	if (rc == 0) {
		qv_load_destroy(l);
		lt_fail("%s: qv_load_run succeeded, expected %d (%s)", what, want, qv_strerror(want));
	}
	LT_CHECK(l == NULL, "%s: failed with %d but *out is not NULL", what, rc);
	LT_CHECK(rc == want, "%s: returned %d (%s), expected %d (%s): %s", what, rc, qv_strerror(rc),
	         want, qv_strerror(want), qv_store_errmsg(e->s));
	print_message("#   ok: %s -> %s: %s\n", what, qv_strerror(rc), qv_store_errmsg(e->s));
}

/* Copies the device arena back and compares the table with the source. */
static void check_device_load(struct env *e, qv_load *l, uint64_t bytes, const char *what)
{
	const qv_load_stats *st = qv_load_get_stats(l);
	LT_CHECK(st->device == g_dev, "%s: stats.device %d, want %d", what, st->device, g_dev);
	unsigned char *host = malloc(bytes ? bytes : 1);
	LT_CHECK(host, "out of memory");
	int rc = qv_gpu_to_host(g_dev, host, qv_load_arena(l), bytes);
	LT_CHECK(rc == 0, "%s: qv_gpu_to_host: %d", what, rc);
	lt_check_table(&e->m, l, host, what);
	free(host);
}

static void test_library_arena(void **state)
{
	struct env *e = *state;
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	static const size_t chunks[] = {64 * KIB, 1 * MIB, 4 * MIB};
	static const unsigned qds[] = {1, 2, 16, 64};
	static const unsigned streams[] = {1, 4, 8};
	int n = 0;
	for (int io = QV_IO_DIRECT; io <= QV_IO_BUFFERED; io++)
		for (size_t c = 0; c < 3; c++)
			for (size_t q = 0; q < 4; q++) {
				qv_load_opts o = {.device = g_dev, .io = (enum qv_io_mode)io, .qd = qds[q],
				                  .chunk_bytes = chunks[c], .cuda_streams = streams[(c + q) % 3],
				                  .verify = (int)(q & 1)};
				char w[160];
				snprintf(w, sizeof(w), "library arena, io %s, chunk %zu KiB, qd %u, streams %u, verify %d",
				         lt_io_name(o.io), chunks[c] >> 10, o.qd, o.cuda_streams, o.verify);
				qv_load *l = NULL;
				int rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &o, &l);
				LT_CHECK(rc == 0, "%s: %d (%s) %s", w, rc, qv_strerror(rc), qv_store_errmsg(e->s));
				check_device_load(e, l, need, w);
				LT_CHECK(qv_load_get_stats(l)->bytes ==
				             lt_distinct_shard_bytes(e->s, MODEL, "v1", NULL),
				         "%s: stats.bytes %llu", w, (unsigned long long)qv_load_get_stats(l)->bytes);
				qv_load_destroy(l);
				n++;
			}
	print_message("#   ok: %d loads into library device arenas matched the source byte for byte\n", n);
}

static void test_caller_arena(void **state)
{
	struct env *e = *state;
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	const size_t tail = 2 * 4096 + 5;
	size_t cap = (size_t)need + tail;
	void *d = NULL;
	int rc = qv_gpu_alloc(g_dev, cap, &d);
	LT_CHECK(rc == 0, "qv_gpu_alloc(%zu): %d", cap, rc);
	unsigned char *host = malloc(cap);
	assert_non_null(host);
	for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++) {
		assert_int_equal(qv_gpu_fill(g_dev, d, POISON, cap), 0);
		qv_load_opts o = {.device = g_dev, .io = (enum qv_io_mode)io, .chunk_bytes = 64 * KIB,
		                  .qd = 16, .verify = 1};
		char w[96];
		snprintf(w, sizeof(w), "caller device arena, io %s", lt_io_name(o.io));
		qv_load *l = NULL;
		rc = qv_load_run(e->s, MODEL, "v1", d, cap, &o, &l);
		LT_CHECK(rc == 0, "%s: %d (%s) %s", w, rc, qv_strerror(rc), qv_store_errmsg(e->s));
		LT_CHECK(qv_load_arena(l) == d, "%s: arena is not the caller's", w);
		assert_int_equal(qv_gpu_to_host(g_dev, host, d, cap), 0);
		lt_check_table(&e->m, l, host, w);
		for (size_t i = need; i < cap; i++)
			LT_CHECK(host[i] == POISON, "%s: byte %zu past the %llu needed was written", w, i,
			         (unsigned long long)need);
		qv_load_destroy(l); /* must not free d */
		print_message("#   ok: %s: every tensor matches, the poisoned tail is untouched\n", w);
	}
	/* still ours and usable after the loads */
	assert_int_equal(qv_gpu_fill(g_dev, d, 0, cap), 0);
	load_fails(e, d, need - 1, NULL, QV_ELIMIT, "caller device arena one byte short");
	qv_load_opts o = {.device = g_dev};
	load_fails(e, d, need - 1, &o, QV_ELIMIT, "caller device arena one byte short (cuda opts)");
	load_fails(e, d, 4096, &o, QV_ELIMIT, "caller device arena of 4 KiB");
	qv_gpu_free(g_dev, d);
	free(host);
}

/* 1 if path's file system sits on a disk the kernel calls rotational (the
 * loader's own rule: stream/load.c), 0 if not, -1 if it cannot tell. */
static int on_rotational(const char *path)
{
	struct stat st;
	char p[128];
	if (stat(path, &st) != 0)
		return -1;
	for (int part = 0; part < 2; part++) {
		snprintf(p, sizeof(p), "/sys/dev/block/%u:%u/%squeue/rotational", major(st.st_dev),
		         minor(st.st_dev), part ? "../" : "");
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		int c = fgetc(f);
		fclose(f);
		return c == '1';
	}
	return -1;
}

static void test_faults_and_damage(void **state)
{
	struct env *e = *state;
	qv_load_opts o = {.device = g_dev, .io = QV_IO_DIRECT, .chunk_bytes = 64 * KIB, .qd = 8};
	for (uint64_t k = 1; k <= 9; k += 4) {
		char w[64];
		snprintf(w, sizeof(w), "EIO on read %llu", (unsigned long long)k);
		qv_load_fault_set(k, QV_FAULT_EIO);
		load_fails(e, NULL, 0, &o, -EIO, w);
		qv_load_fault_set(0, QV_FAULT_NONE);
	}
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	qv_load_fault_set(3, QV_FAULT_SHORT);
	qv_load *l = NULL;
	int rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &o, &l);
	qv_load_fault_set(0, QV_FAULT_NONE);
	LT_CHECK(rc == 0, "short read 3: %d %s", rc, qv_store_errmsg(e->s));
	check_device_load(e, l, need, "short read 3");
	qv_load_destroy(l);
	print_message("#   ok: a short read is resubmitted, the device copy matches\n");
	/* O_DIRECT refused at the first read: the load starts over through the
	 * page cache, as deep as a page-cache load goes (a rotational disk's
	 * smaller O_DIRECT depth is no use to copies) */
	qv_load_opts ob = {.device = g_dev, .io = QV_IO_BUFFERED};
	rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &ob, &l);
	LT_CHECK(rc == 0, "buffered load: %d %s", rc, qv_store_errmsg(e->s));
	unsigned qd_buffered = qv_load_get_stats(l)->qd;
	qv_load_destroy(l);
	qv_load_opts od = {.device = g_dev, .io = QV_IO_DIRECT};
	qv_load_fault_set(1, QV_FAULT_EINVAL);
	rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &od, &l);
	qv_load_fault_set(0, QV_FAULT_NONE);
	LT_CHECK(rc == 0, "O_DIRECT refused: %d %s", rc, qv_store_errmsg(e->s));
	check_device_load(e, l, need, "O_DIRECT refused");
	LT_CHECK(qv_load_get_stats(l)->io == QV_IO_BUFFERED && qv_load_get_stats(l)->qd == qd_buffered,
	         "O_DIRECT refused: io %s at qd %u, a buffered load's qd is %u",
	         lt_io_name(qv_load_get_stats(l)->io), qv_load_get_stats(l)->qd, qd_buffered);
	qv_load_destroy(l);
	print_message("#   ok: O_DIRECT refused: reloaded through the page cache at qd %u%s\n", qd_buffered,
	              on_rotational(e->root) == 1 ? ""
	                                          : " (NOTE: not a rotational disk: its O_DIRECT depth "
	                                            "is the same, so this proves less here)");
	/* a flipped byte: verify catches it */
	char p[PATH_MAX];
	uint64_t soff = 0;
	lt_shard_of(e->s, MODEL, "v1", "straddle.b", p, sizeof(p), &soff);
	int fd = open(p, O_RDWR);
	LT_CHECK(fd >= 0, "open %s", p);
	unsigned char b;
	LT_CHECK(pread(fd, &b, 1, (off_t)(soff + 3 * MIB)) == 1, "pread");
	b ^= 0x80;
	LT_CHECK(pwrite(fd, &b, 1, (off_t)(soff + 3 * MIB)) == 1, "pwrite");
	fsync(fd);
	close(fd);
	o.verify = 1;
	load_fails(e, NULL, 0, &o, QV_ECORRUPT, "flipped byte, verify");
}

static void test_gpu_full(void **state)
{
	struct env *e = *state;
	size_t fr = 0, tot = 0;
	int rc = qv_gpu_mem_info(g_dev, &fr, &tot);
	LT_CHECK(rc == 0, "qv_gpu_mem_info: %d", rc);
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	/* hold all but a little less than the version needs */
	size_t leave = (size_t)need / 2;
	size_t take = fr > leave ? fr - leave : 0;
	while (take > 64 * MIB && qv_gpu_alloc(g_dev, take, &e->hog) != 0)
		take -= 64 * MIB;
	size_t fr2 = 0;
	qv_gpu_mem_info(g_dev, &fr2, &tot);
	if (!e->hog || fr2 >= need) {
		print_message("# SKIP: could not fill cuda:%d (free %zu of %zu, need %llu)\n", g_dev,
		              fr2, tot, (unsigned long long)need);
		skip();
	}
	qv_load_opts o = {.device = g_dev};
	load_fails(e, NULL, 0, &o, -ENOMEM, "version larger than free GPU memory");
	const char *msg = qv_store_errmsg(e->s);
	LT_CHECK(strstr(msg, "GPU") || strstr(msg, "cuda"),
	         "-ENOMEM message does not name the GPU: '%s'", msg);
	qv_gpu_free(g_dev, e->hog);
	e->hog = NULL;
	/* with the memory back, it loads */
	qv_load *l = NULL;
	rc = qv_load_run(e->s, MODEL, "v1", NULL, 0, &o, &l);
	LT_CHECK(rc == 0, "after freeing: %d %s", rc, qv_store_errmsg(e->s));
	check_device_load(e, l, need, "after freeing the hog");
	qv_load_destroy(l);
}

/* The largest file under the cold tier (nftw has no user argument). */
static char g_big[PATH_MAX];
static off_t g_big_size;

static int note_big(const char *path, const struct stat *st, int type, struct FTW *f)
{
	(void)f;
	if (type == FTW_F && st->st_size > g_big_size) {
		g_big_size = st->st_size;
		snprintf(g_big, sizeof(g_big), "%s", path);
	}
	return 0;
}

/* Flips the byte at off of path; returns the old value. */
static unsigned char flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	LT_CHECK(fd >= 0, "open %s", path);
	unsigned char b, old;
	LT_CHECK(pread(fd, &b, 1, off) == 1, "pread");
	old = b;
	b ^= 0x5a;
	LT_CHECK(pwrite(fd, &b, 1, off) == 1, "pwrite");
	LT_CHECK(fsync(fd) == 0, "fsync");
	close(fd);
	return old;
}

static void put_byte(const char *path, off_t off, unsigned char b)
{
	int fd = open(path, O_RDWR);
	LT_CHECK(fd >= 0 && pwrite(fd, &b, 1, off) == 1 && fsync(fd) == 0, "restore %s", path);
	close(fd);
}

/* The header of the largest file under e's cold tier, whose path is left
 * in g_big. */
static struct qv_codec_header *big_cold_header(struct env *e)
{
	char cold[600];
	snprintf(cold, sizeof(cold), "%s/cold", e->base);
	g_big[0] = '\0';
	g_big_size = 0;
	LT_CHECK(nftw(cold, note_big, 16, FTW_PHYS) == 0 && g_big[0], "no file under %s", cold);
	int fd = open(g_big, O_RDONLY);
	LT_CHECK(fd >= 0, "open %s", g_big);
	struct qv_codec_header *h = NULL;
	int rc = qv_codec_header_read(fd, (uint64_t)g_big_size, &h);
	LT_CHECK(rc == 0, "qv_codec_header_read(%s): %d", g_big, rc);
	close(fd);
	return h;
}

/* Device memory for the whole of MODEL@v1 (*need bytes), for loads into a
 * caller's arena; free it with qv_gpu_free. */
static void *version_dest(struct env *e, uint64_t *need)
{
	void *dest = NULL;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", need), 0);
	int rc = qv_gpu_alloc(g_dev, *need, &dest);
	LT_CHECK(rc == 0, "qv_gpu_alloc(%llu): %d", (unsigned long long)*need, rc);
	return dest;
}

/* A cold version into device memory: library and caller arenas, 1, 2 and 4
 * decoders, 1 and 4 copy streams, with and without verify, each compared
 * byte for byte; then a flipped byte in a cold frame fails the load. */
static void test_cold_tier(void **state)
{
	struct env *e = *state;
	uint64_t need = 0;
	void *dest = version_dest(e, &need);
	int rc;
	static const unsigned threads[] = {1, 2, 4};
	int n = 0;
	for (size_t t = 0; t < 3; t++)
		for (int caller = 0; caller < 2; caller++) {
			qv_load_opts o = {.device = g_dev, .io = QV_IO_DIRECT, .decode_threads = threads[t],
			                  .cuda_streams = caller ? 4 : 1, .verify = (int)(t & 1)};
			char w[128];
			snprintf(w, sizeof(w), "cold v1, %s arena, %u decoders, %u streams, verify %d",
			         caller ? "caller" : "library", o.decode_threads, o.cuda_streams, o.verify);
			if (caller)
				assert_int_equal(qv_gpu_fill(g_dev, dest, POISON, need), 0);
			qv_load *l = NULL;
			rc = qv_load_run(e->s, MODEL, "v1", caller ? dest : NULL, caller ? need : 0, &o, &l);
			LT_CHECK(rc == 0, "%s: %d (%s) %s", w, rc, qv_strerror(rc), qv_store_errmsg(e->s));
			const qv_load_stats *st = qv_load_get_stats(l);
			LT_CHECK(st->cold_bytes == st->bytes && st->bytes > 0,
			         "%s: %llu of %llu bytes from the cold tier", w,
			         (unsigned long long)st->cold_bytes, (unsigned long long)st->bytes);
			LT_CHECK(st->decode_threads == threads[t], "%s: %u decode threads", w,
			         st->decode_threads);
			check_device_load(e, l, need, w);
			qv_load_destroy(l);
			n++;
		}
	print_message("#   ok: %d cold loads into device memory matched the source byte for byte\n", n);

	struct qv_codec_header *h = big_cold_header(e);
	off_t off = (off_t)(h->frames[h->frame_count - 1].offset +
	                    h->frames[h->frame_count - 1].stored_bytes / 2);
	qv_codec_header_destroy(h);
	flip_byte(g_big, off);
	for (int verify = 0; verify < 2; verify++) {
		qv_load_opts o = {.device = g_dev, .decode_threads = 2, .verify = verify};
		load_fails(e, dest, need, &o, QV_ECORRUPT,
		           verify ? "flipped cold byte, verify" : "flipped cold byte, no verify");
	}
	qv_gpu_free(g_dev, dest);
}

/* A cold BF16 version into device memory: its pairs frames are merged and
 * checked on the GPU (cold_gpu_bytes), the bytes match the source, and
 * QV_SINK_MERGE=0 gives the same bytes merged on the CPU. A flipped byte in
 * a GPU-merged frame's mantissas or escapes fails the load with
 * QV_ECORRUPT. */
static void test_cold_gpu_merge(void **state)
{
	struct env *e = *state;
	uint64_t need = 0;
	void *dest = version_dest(e, &need);
	int rc;
	for (int cpu_merge = 0; cpu_merge < 2; cpu_merge++)
		for (unsigned threads = 1; threads <= 2; threads++)
			for (int caller = 0; caller < 2; caller++) {
				if (cpu_merge)
					setenv("QV_SINK_MERGE", "0", 1);
				qv_load_opts o = {.device = g_dev, .decode_threads = threads,
				                  .cuda_streams = caller ? 4 : 1};
				char w[128];
				snprintf(w, sizeof(w), "bf16 cold v1, %s arena, %u decoders, merged on the %s",
				         caller ? "caller" : "library", threads, cpu_merge ? "CPU" : "GPU");
				if (caller)
					assert_int_equal(qv_gpu_fill(g_dev, dest, POISON, need), 0);
				qv_load *l = NULL;
				rc = qv_load_run(e->s, MODEL, "v1", caller ? dest : NULL, caller ? need : 0, &o,
				                 &l);
				unsetenv("QV_SINK_MERGE");
				LT_CHECK(rc == 0, "%s: %d (%s) %s", w, rc, qv_strerror(rc), qv_store_errmsg(e->s));
				const qv_load_stats *st = qv_load_get_stats(l);
				LT_CHECK(st->cold_bytes == st->bytes, "%s: %llu of %llu bytes cold", w,
				         (unsigned long long)st->cold_bytes, (unsigned long long)st->bytes);
				if (cpu_merge)
					LT_CHECK(st->cold_gpu_bytes == 0, "%s: %llu bytes merged on the GPU", w,
					         (unsigned long long)st->cold_gpu_bytes);
				else
					LT_CHECK(st->cold_gpu_bytes >= st->cold_bytes / 2,
					         "%s: only %llu of %llu cold bytes merged on the GPU", w,
					         (unsigned long long)st->cold_gpu_bytes,
					         (unsigned long long)st->cold_bytes);
				check_device_load(e, l, need, w);
				print_message("#   ok: %s: %llu of %llu bytes merged on the GPU, all match\n", w,
				              (unsigned long long)st->cold_gpu_bytes,
				              (unsigned long long)st->bytes);
				qv_load_destroy(l);
			}

	/* damage a frame the GPU merges: a pairs frame of 2 MiB, not the last */
	struct qv_codec_header *h = big_cold_header(e);
	LT_CHECK(h->frame_count >= 2 && h->frames[1].method == QV_CODEC_METHOD_BF16_PAIRS,
	         "frame 1 of %s: method %u of %u frames", g_big, h->frames[1].method, h->frame_count);
	uint64_t at = h->frames[1].offset, n1 = h->frames[1].raw_bytes / 2;
	qv_codec_header_destroy(h);
	unsigned char head[16];
	int fd = open(g_big, O_RDONLY);
	LT_CHECK(fd >= 0 && pread(fd, head, sizeof(head), (off_t)at) == (ssize_t)sizeof(head),
	         "read frame 1's head in %s", g_big);
	close(fd);
	uint32_t plen[3], ne;
	memcpy(plen, head, 12);
	memcpy(&ne, head + 12, 4);
	/* the mantissas are stored raw: a flipped one gets past the CPU, which
	 * only decodes the codes, and only the GPU's checksum can catch it */
	LT_CHECK(plen[1] == n1 && ne > 0 && plen[2] > 0,
	         "frame 1: %u values, mantissas in %u bytes, %u escapes in %u bytes", (unsigned)n1,
	         plen[1], ne, plen[2]);
	const struct {
		uint64_t off;
		const char *what, *msg; /* msg: where it must be caught, or NULL */
	} spots[] = {
		{32 + plen[0] + plen[1] / 2, "a flipped mantissa byte in a GPU-merged frame",
		 "merged on device"},
		{32 + plen[0] + plen[1] + plen[2] / 2, "a flipped byte in a pairs frame's escape plane",
		 NULL},
	};
	for (size_t k = 0; k < 2; k++) {
		unsigned char old = flip_byte(g_big, (off_t)(at + spots[k].off));
		qv_load_opts o = {.device = g_dev, .decode_threads = 2};
		load_fails(e, dest, need, &o, QV_ECORRUPT, spots[k].what);
		LT_CHECK(!spots[k].msg || strstr(qv_store_errmsg(e->s), spots[k].msg),
		         "%s: caught, but not by the GPU: %s", spots[k].what, qv_store_errmsg(e->s));
		put_byte(g_big, (off_t)(at + spots[k].off), old);
	}
	qv_load_opts o = {.device = g_dev, .decode_threads = 2};
	qv_load *l = NULL;
	rc = qv_load_run(e->s, MODEL, "v1", dest, need, &o, &l);
	LT_CHECK(rc == 0, "restored: %d %s", rc, qv_store_errmsg(e->s));
	check_device_load(e, l, need, "restored");
	qv_load_destroy(l);
	qv_gpu_free(g_dev, dest);
}

/* The planes of a synthetic pairs frame: n values, codes with escapes. */
struct planes {
	struct qv_codec_pairs pp;
	unsigned char *codes, *sm, *esc, *want; /* want: the merged bytes */
};

static void planes_make(struct planes *p, uint64_t n, int tail)
{
	memset(p, 0, sizeof(*p));
	p->codes = calloc((n + 1) / 2, 1);
	p->sm = malloc(n);
	p->esc = malloc(n / 16 + 1);
	p->want = malloc(2 * n + 1);
	LT_CHECK(p->codes && p->sm && p->esc && p->want, "out of memory");
	lt_fill_random(p->sm, n);
	for (unsigned c = 0; c < 15; c++)
		p->pp.table[c] = (unsigned char)(100 + 3 * c);
	size_t ne = 0;
	for (uint64_t i = 0; i < n; i++) {
		unsigned c = (unsigned)(lt_rand() % 15), e = p->pp.table[c];
		if (i % 23 == 5 && ne < n / 16) {
			c = 15;
			e = (unsigned)(lt_rand() & 0xff);
			p->esc[ne++] = (unsigned char)e;
		}
		p->codes[i / 2] |= (unsigned char)(c << (4 * (i & 1)));
		uint16_t v = (uint16_t)(e << 7 | (p->sm[i] & 0x80u) << 8 | (p->sm[i] & 0x7fu));
		memcpy(p->want + 2 * i, &v, 2);
	}
	p->pp.values = n;
	p->pp.codes = p->codes;
	p->pp.sm = p->sm;
	p->pp.esc = p->esc;
	p->pp.escapes = ne;
	p->pp.has_tail = tail;
	p->pp.tail = 0x3c;
	p->want[2 * n] = 0x3c;
}

static void planes_free(struct planes *p)
{
	free(p->codes);
	free(p->sm);
	free(p->esc);
	free(p->want);
}

/* The CUDA sink's own merge (qv_sink_put_pairs): lengths from 301 bytes to
 * 2 MiB, odd and aligned destinations, every byte around the frame left
 * alone; a wrong checksum or a wrong escape count is QV_ECORRUPT. */
static void test_sink_pairs(void **state)
{
	(void)state;
	const uint64_t cap = 4 * MIB + 64;
	void *dev = NULL;
	int rc = qv_gpu_alloc(g_dev, cap, &dev);
	LT_CHECK(rc == 0, "qv_gpu_alloc: %d", rc);
	unsigned char *host = malloc(cap);
	LT_CHECK(host, "out of memory");
	qv_sink *k = NULL;
	rc = qv_sink_cuda_create(g_dev, dev, cap, 8, 2, &k);
	LT_CHECK(rc == 0, "qv_sink_cuda_create: %d", rc);
	struct planes p;
	planes_make(&p, 1000, 0);
	LT_CHECK(qv_sink_put_pairs(k, 4, &p.pp, XXH3_64bits(p.want, 2000), 0) == -EINVAL,
	         "put_pairs before reserving");
	LT_CHECK(qv_sink_pairs_reserve(k, 4, 4, 2 * MIB) == 0, "reserve: %s", qv_sink_errmsg(k));
	LT_CHECK(qv_sink_put_pairs(k, 3, &p.pp, XXH3_64bits(p.want, 2000), 0) == -EINVAL,
	         "put_pairs on a slot not reserved");
	planes_free(&p);
	static const uint64_t values[] = {150, 2048, 32769, 65536, 300001, MIB};
	static const uint64_t offs[] = {0, 1, 8, 4099};
	int n = 0;
	for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++)
		for (size_t o = 0; o < 4; o++) {
			int tail = (int)((v + o) & 1);
			planes_make(&p, values[v], tail);
			uint64_t len = 2 * values[v] + (uint64_t)tail;
			uint64_t h = XXH3_64bits(p.want, len);
			unsigned slot = 4 + (unsigned)(n % 4);
			assert_int_equal(qv_gpu_fill(g_dev, dev, POISON, cap), 0);
			rc = qv_sink_put_pairs(k, slot, &p.pp, h, offs[o]);
			LT_CHECK(rc == 0, "put_pairs %llu values at %llu: %d %s",
			         (unsigned long long)values[v], (unsigned long long)offs[o], rc,
			         qv_sink_errmsg(k));
			rc = qv_sink_slot_wait(k, slot);
			LT_CHECK(rc == 0, "%llu values at %llu: %d %s", (unsigned long long)values[v],
			         (unsigned long long)offs[o], rc, qv_sink_errmsg(k));
			assert_int_equal(qv_gpu_to_host(g_dev, host, dev, cap), 0);
			for (uint64_t i = 0; i < offs[o]; i++)
				LT_CHECK(host[i] == POISON, "byte %llu before the frame written",
				         (unsigned long long)i);
			LT_CHECK(memcmp(host + offs[o], p.want, len) == 0,
			         "%llu values at %llu: merged bytes differ", (unsigned long long)values[v],
			         (unsigned long long)offs[o]);
			for (uint64_t i = offs[o] + len; i < cap; i++)
				LT_CHECK(host[i] == POISON, "byte %llu after the frame written",
				         (unsigned long long)i);
			/* a checksum that does not match */
			rc = qv_sink_put_pairs(k, slot, &p.pp, h ^ 1, offs[o]);
			LT_CHECK(rc == 0, "put_pairs: %d", rc);
			rc = qv_sink_slot_wait(k, slot);
			LT_CHECK(rc == QV_ECORRUPT, "%llu values, wrong checksum: %d",
			         (unsigned long long)values[v], rc);
			/* one escape short, one too many */
			if (p.pp.escapes > 0) {
				for (int d = -1; d <= 1; d += 2) {
					struct qv_codec_pairs q = p.pp;
					q.escapes = (size_t)((long long)q.escapes + d);
					if (q.escapes > q.values / 16)
						continue;
					rc = qv_sink_put_pairs(k, slot, &q, h, offs[o]);
					LT_CHECK(rc == 0, "put_pairs: %d", rc);
					rc = qv_sink_slot_busy(k, slot);
					while (rc == 1)
						rc = qv_sink_slot_busy(k, slot);
					LT_CHECK(rc == QV_ECORRUPT && strstr(qv_sink_errmsg(k), "escapes"),
					         "%llu values, escapes %+d: %d (%s)",
					         (unsigned long long)values[v], d, rc, qv_sink_errmsg(k));
				}
			}
			planes_free(&p);
			n++;
		}
	print_message("#   ok: %d frames merged on the GPU matched, wrong checksums and escapes refused\n",
	              n);
	qv_sink_destroy(k);
	qv_gpu_free(g_dev, dev);
	free(host);
}

int main(void)
{
	const char *why = "";
	if (!qv_gpu_built_with_cuda()) {
		printf("SKIP test_load_cuda: this build has no CUDA sink (QUIVER_WITH_CUDA off)\n");
		return 77;
	}
	int n = qv_gpu_device_count(&why);
	if (n <= 0) {
		printf("SKIP test_load_cuda: no usable CUDA device (%s)\n", why && *why ? why : "none");
		return 77;
	}
	const char *ds = getenv("QV_TEST_DEVICE");
	g_dev = ds ? atoi(ds) : 0;
	if (g_dev < 0 || g_dev >= n) {
		printf("test_load_cuda: QV_TEST_DEVICE=%d but %d device(s)\n", g_dev, n);
		return 1;
	}
	size_t fr = 0, tot = 0;
	qv_gpu_mem_info(g_dev, &fr, &tot);
	printf("# cuda:%d of %d device(s), %zu MiB free of %zu MiB\n", g_dev, n, fr >> 20, tot >> 20);
	lt_seed_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_library_arena, setup, teardown),
		cmocka_unit_test_setup_teardown(test_caller_arena, setup, teardown),
		cmocka_unit_test_setup_teardown(test_faults_and_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gpu_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cold_tier, setup_cold, teardown),
		cmocka_unit_test_setup_teardown(test_cold_gpu_merge, setup_bf16, teardown),
		cmocka_unit_test(test_sink_pairs),
	};
	int rc = cmocka_run_group_tests_name("load_cuda", tests, NULL, NULL);
	if (rc)
		printf("# %d failed; seed %llu (QV_TEST_SEED=%llu repeats this run)\n", rc,
		       (unsigned long long)lt_seed(), (unsigned long long)lt_seed());
	return rc;
}
