/* Tests of qv_load_run() (stream/load.c, engine.c, uring.c, pread.c and the
 * host sink) on fresh temp stores under /var/tmp.
 *
 * Every load is checked against the source files byte for byte: names,
 * files, dtypes, shapes, byte counts and the bytes themselves (load_util.c).
 * The inputs come from a seeded PRNG (QV_TEST_SEED repeats a run). Bad inputs
 * (a truncated, missing or damaged shard, injected EIO through the engine's
 * fault seam, bad options) must each return a negative code and no table. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "load_util.h"
#include "stream_int.h"

#define POISON 0xA5
#define MODEL "org/m"

struct env {
	char base[256];
	char root[512];
	char in[512];
	char mnt[512]; /* mounted by the test, unmounted in teardown */
	char lastmsg[512]; /* of the last load_fails() */
	qv_store *s;
	struct lt_model m;
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	lt_tmpdir(e->base, sizeof(e->base), "load");
	snprintf(e->root, sizeof(e->root), "%s/root", e->base);
	snprintf(e->in, sizeof(e->in), "%s/in", e->base);
	e->s = lt_store_open(e->root);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	qv_load_fault_set(0, QV_FAULT_NONE);
	if (!e)
		return 0;
	qv_store_close(e->s);
	if (e->mnt[0]) {
		lt_rmrf(e->mnt); /* its files; then the mount */
		umount2(e->mnt, MNT_DETACH);
	}
	lt_rmrf(e->base);
	lt_model_free(&e->m);
	free(e);
	return 0;
}

/* ---- helpers -------------------------------------------------------------------------- */
static qv_load *load_ok(struct env *e, const char *ref, void *dest, uint64_t dest_bytes,
                        const qv_load_opts *o, const char *what)
{
	qv_load *l = NULL;
	int rc = qv_load_run(e->s, MODEL, ref, dest, dest_bytes, o, &l);
	LT_CHECK(rc == 0, "%s: qv_load_run: %d (%s): %s", what, rc, qv_strerror(rc),
	         qv_store_errmsg(e->s));
	LT_CHECK(l != NULL, "%s: rc 0 but no load", what);
	return l;
}

/* What a load run in a child process reported. */
struct child_res {
	int rc;
	int out_null;
	char msg[512];
};

#define CHILD_TIMEOUT_S 10

/* Runs qv_load_run() in a child process with its own store handle, so that a
 * load that never returns (a hang in an error path) fails the test after
 * CHILD_TIMEOUT_S instead of stalling the whole binary. The fault seam's
 * setting is inherited through fork(). Returns 0, or -ETIMEDOUT. */
static int load_in_child(struct env *e, const char *model, const char *ref, void *dest,
                         uint64_t dest_bytes, const qv_load_opts *o, struct child_res *r)
{
	int fds[2];
	LT_CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	LT_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(fds[0]);
		struct child_res cr = {0};
		char err[256] = "";
		qv_store *s = NULL;
		cr.rc = qv_store_open(e->root, &s, err, sizeof(err));
		if (cr.rc == 0) {
			static int sentinel;
			qv_load *l = (qv_load *)&sentinel;
			cr.rc = qv_load_run(s, model, ref, dest, dest_bytes, o, &l);
			cr.out_null = l == NULL;
			snprintf(cr.msg, sizeof(cr.msg), "%s", qv_store_errmsg(s));
			if (cr.rc == 0)
				qv_load_destroy(l);
			qv_store_close(s);
		} else {
			snprintf(cr.msg, sizeof(cr.msg), "qv_store_open: %s", err);
		}
		ssize_t w = write(fds[1], &cr, sizeof(cr));
		_exit(w == (ssize_t)sizeof(cr) ? 0 : 1);
	}
	close(fds[1]);
	struct pollfd pfd = {fds[0], POLLIN, 0};
	int pr = poll(&pfd, 1, CHILD_TIMEOUT_S * 1000);
	int rc = 0;
	if (pr <= 0) {
		kill(pid, SIGKILL);
		rc = -ETIMEDOUT;
	} else {
		ssize_t n = read(fds[0], r, sizeof(*r));
		LT_CHECK(n == (ssize_t)sizeof(*r), "the load's child process died (read %zd)", n);
	}
	close(fds[0]);
	waitpid(pid, NULL, 0);
	return rc;
}

/* A load that must fail with want; no table may come back. Run in a child
 * process (see load_in_child()). */
static void load_fails(struct env *e, const char *model, const char *ref, void *dest,
                       uint64_t dest_bytes, const qv_load_opts *o, int want, const char *what)
{
	struct child_res r = {0};
	int rc = load_in_child(e, model, ref, dest, dest_bytes, o, &r);
	LT_CHECK(rc == 0,
	         "%s: qv_load_run(%s@%s) did not return within %d s (expected %d, %s): it hangs",
	         what, model, ref ? ref : "current", CHILD_TIMEOUT_S, want, qv_strerror(want));
	LT_CHECK(r.rc != 0, "%s: qv_load_run succeeded, expected %d (%s)", what, want,
	         qv_strerror(want));
	LT_CHECK(r.out_null, "%s: failed with %d but *out is not NULL", what, r.rc);
	LT_CHECK(r.rc == want, "%s: qv_load_run returned %d (%s), expected %d (%s); message: %s", what,
	         r.rc, qv_strerror(r.rc), want, qv_strerror(want), r.msg);
	LT_CHECK(r.msg[0] != '\0', "%s: failed with %d but left no message", what, r.rc);
	snprintf(e->lastmsg, sizeof(e->lastmsg), "%s", r.msg);
}

/* Checks the stats every good load must have. */
static void check_stats(struct env *e, const qv_load *l, const char *ref, const qv_load_opts *o,
                        const char *what)
{
	const qv_load_stats *st = qv_load_get_stats(l);
	size_t nsh = 0;
	uint64_t want = lt_distinct_shard_bytes(e->s, MODEL, ref, &nsh);
	uint64_t need = 0;
	int rc = qv_load_size(e->s, MODEL, ref, &need);
	LT_CHECK(rc == 0, "%s: qv_load_size: %d", what, rc);
	LT_CHECK(st->bytes == want, "%s: stats.bytes %llu, the %zu distinct shards hold %llu", what,
	         (unsigned long long)st->bytes, nsh, (unsigned long long)want);
	LT_CHECK(need >= want, "%s: qv_load_size %llu < shard bytes %llu", what,
	         (unsigned long long)need, (unsigned long long)want);
	LT_CHECK(st->arena_bytes >= need, "%s: stats.arena_bytes %llu < qv_load_size %llu", what,
	         (unsigned long long)st->arena_bytes, (unsigned long long)need);
	LT_CHECK(st->engine && (strcmp(st->engine, "io_uring") == 0 || strcmp(st->engine, "pread") == 0),
	         "%s: engine '%s'", what, st->engine ? st->engine : "(null)");
	LT_CHECK(st->io == QV_IO_DIRECT || st->io == QV_IO_BUFFERED, "%s: stats.io %d", what,
	         (int)st->io);
	if (o && o->io == QV_IO_BUFFERED)
		LT_CHECK(st->io == QV_IO_BUFFERED && strcmp(st->engine, "pread") == 0,
		         "%s: --io buffered used io %s, engine %s", what, lt_io_name(st->io),
		         st->engine);
	if (st->io == QV_IO_BUFFERED)
		LT_CHECK(strcmp(st->engine, "pread") == 0, "%s: buffered io through engine %s", what,
		         st->engine);
	if (o && o->qd)
		LT_CHECK(st->qd == o->qd, "%s: stats.qd %u, asked %u", what, st->qd, o->qd);
	if (o && o->chunk_bytes)
		LT_CHECK(st->chunk_bytes == o->chunk_bytes, "%s: stats.chunk_bytes %zu, asked %zu",
		         what, st->chunk_bytes, o->chunk_bytes);
	LT_CHECK(st->device == QV_DEVICE_CPU, "%s: stats.device %d", what, st->device);
	LT_CHECK(st->reads >= 1 || want == 0, "%s: %llu reads", what, (unsigned long long)st->reads);
	if (st->chunk_bytes)
		LT_CHECK(st->reads >= want / st->chunk_bytes, "%s: %llu reads of %zu bytes for %llu bytes",
		         what, (unsigned long long)st->reads, st->chunk_bytes, (unsigned long long)want);
	LT_CHECK(st->seconds >= 0 && st->first_tensor_seconds >= 0 &&
	             st->first_tensor_seconds <= st->seconds + 1e-3,
	         "%s: seconds %.6f, first tensor %.6f", what, st->seconds, st->first_tensor_seconds);
}

/* Loads into a poisoned caller buffer (need + a poisoned tail) and into a
 * library arena, and checks both against the source. */
static void load_both_ways(struct env *e, const char *ref, const qv_load_opts *o, const char *what)
{
	uint64_t need = 0;
	int rc = qv_load_size(e->s, MODEL, ref, &need);
	LT_CHECK(rc == 0, "%s: qv_load_size: %d %s", what, rc, qv_store_errmsg(e->s));
	const size_t tail = 3 * 4096 + 17;
	size_t cap = (size_t)need + tail;
	unsigned char *buf = aligned_alloc(4096, (cap + 4095) / 4096 * 4096);
	LT_CHECK(buf, "out of memory");
	memset(buf, POISON, cap);
	char w[256];
	snprintf(w, sizeof(w), "%s, caller buffer", what);
	qv_load *l = load_ok(e, ref, buf, cap, o, w);
	LT_CHECK(qv_load_arena(l) == buf, "%s: arena %p is not the caller's buffer %p", w,
	         qv_load_arena(l), (void *)buf);
	lt_check_table(&e->m, l, buf, w);
	check_stats(e, l, ref, o, w);
	for (size_t i = need; i < cap; i++)
		LT_CHECK(buf[i] == POISON, "%s: byte %zu past the %llu needed was written (0x%02x)", w,
		         i, (unsigned long long)need, buf[i]);
	qv_load_destroy(l);
	free(buf); /* the caller's: the library must not have freed it */

	snprintf(w, sizeof(w), "%s, library arena", what);
	l = load_ok(e, ref, NULL, 0, o, w);
	LT_CHECK(qv_load_arena(l) != NULL, "%s: no arena", w);
	lt_check_table(&e->m, l, qv_load_arena(l), w);
	check_stats(e, l, ref, o, w);
	qv_load_destroy(l);
}

/* The standard model: tensors that straddle chunk boundaries, an exact
 * multiple, and small ones that get packed. */
static void std_model(struct env *e, int single)
{
	struct lt_file *f = lt_file_add(&e->m, "model.safetensors");
	lt_tensor_add(f, "straddle.a", 1 * MIB + 12345, NULL);
	lt_tensor_add(f, "small.a", 100, NULL);
	lt_tensor_add(f, "exact.2m", 2 * MIB, NULL);
	lt_tensor_add(f, "straddle.b", 4 * MIB + 4096 * 3 + 7, NULL);
	lt_tensor_add(f, "small.b", 4095, NULL);
	lt_tensor_add(f, "small.c", 4097, NULL);
	lt_tensor_add(f, "packed.almost1m", 1 * MIB - 1, NULL);
	lt_tensor_add(f, "straddle.c", 3 * MIB + 65536 + 1, NULL);
	lt_tensor_add(f, "small.d", 8, NULL);
	lt_model_write(&e->m, e->in, single);
	lt_publish(e->s, MODEL, &e->m, "v1");
}

/* ---- good loads ------------------------------------------------------------------------- */
static void test_chunks_and_depths(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	static const size_t chunks[] = {64 * KIB, 1 * MIB, 4 * MIB};
	static const unsigned qds[] = {1, 2, 16, 64};
	static const enum qv_io_mode ios[] = {QV_IO_DIRECT, QV_IO_BUFFERED};
	for (size_t c = 0; c < 3; c++)
		for (size_t q = 0; q < 4; q++)
			for (size_t i = 0; i < 2; i++) {
				qv_load_opts o = {.device = QV_DEVICE_CPU, .io = ios[i], .qd = qds[q],
				                  .chunk_bytes = chunks[c]};
				char w[128];
				snprintf(w, sizeof(w), "chunk %zu KiB, qd %u, io %s", chunks[c] >> 10, qds[q],
				         lt_io_name(ios[i]));
				load_both_ways(e, "v1", &o, w);
			}
}

static void test_many_small_tensors(void **state)
{
	struct env *e = *state;
	char name[64];
	for (int k = 0; k < 2; k++) {
		snprintf(name, sizeof(name), "model-0000%d-of-00002.safetensors", k + 1);
		struct lt_file *f = lt_file_add(&e->m, name);
		for (int i = 0; i < 350; i++) {
			snprintf(name, sizeof(name), "f%d.layers.%d.w", k, i);
			lt_tensor_add(f, name, 1 + lt_rand() % 4095, NULL);
		}
	}
	lt_model_write(&e->m, e->in, 0);
	lt_publish(e->s, MODEL, &e->m, "v1");
	size_t nsh = 0;
	lt_distinct_shard_bytes(e->s, MODEL, "v1", &nsh);
	LT_CHECK(nsh < 20, "700 small tensors should be packed into few shards, got %zu", nsh);
	static const unsigned qds[] = {1, 16, 64};
	for (size_t q = 0; q < 3; q++)
		for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++) {
			qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io, .qd = qds[q],
			                  .chunk_bytes = 64 * KIB};
			char w[128];
			snprintf(w, sizeof(w), "700 small tensors, qd %u, io %s", qds[q],
			         lt_io_name((enum qv_io_mode)io));
			load_both_ways(e, "v1", &o, w);
		}
}

static void test_caller_buffer_too_small(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	unsigned char *buf = aligned_alloc(4096, (need + 4095) / 4096 * 4096);
	assert_non_null(buf);
	memset(buf, POISON, need);
	load_fails(e, MODEL, "v1", buf, need - 1, NULL, QV_ELIMIT, "dest one byte short");
	load_fails(e, MODEL, "v1", buf, 4096, NULL, QV_ELIMIT, "dest 4 KiB");
	/* exactly need is enough */
	qv_load *l = load_ok(e, "v1", buf, need, NULL, "dest exactly qv_load_size");
	lt_check_table(&e->m, l, buf, "dest exactly qv_load_size");
	qv_load_destroy(l);
	free(buf);
}

static void drop_cache(struct env *e, const char *ref)
{
	qv_version *v = NULL;
	assert_int_equal(qv_version_get(e->s, MODEL, ref, QV_WITH_MANIFEST, &v), 0);
	for (size_t i = 0; i < v->n_files; i++)
		for (size_t j = 0; j < v->files[i].n_tensors; j++) {
			char p[PATH_MAX];
			qv_shard_path(e->s, v->files[i].tensors[j].shard, p, sizeof(p));
			int fd = open(p, O_RDONLY);
			if (fd >= 0) {
				fdatasync(fd);
				posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
				close(fd);
			}
		}
	qv_version_free(v);
}

static void test_io_modes_identical(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	uint64_t need = 0;
	assert_int_equal(qv_load_size(e->s, MODEL, "v1", &need), 0);
	void *copy[3] = {0};
	const char *engine[3] = {0};
	enum qv_io_mode used[3];
	for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++) {
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
		                  .chunk_bytes = 64 * KIB, .qd = 8};
		char w[64];
		snprintf(w, sizeof(w), "io %s", lt_io_name((enum qv_io_mode)io));
		qv_load *l = load_ok(e, "v1", NULL, 0, &o, w);
		lt_check_table(&e->m, l, qv_load_arena(l), w);
		check_stats(e, l, "v1", &o, w);
		copy[io] = malloc(need);
		assert_non_null(copy[io]);
		memcpy(copy[io], qv_load_arena(l), need);
		engine[io] = qv_load_get_stats(l)->engine;
		used[io] = qv_load_get_stats(l)->io;
		qv_load_destroy(l);
	}
	print_message("# auto: %s/%s, direct: %s/%s, buffered: %s/%s\n", lt_io_name(used[0]),
	              engine[0], lt_io_name(used[1]), engine[1], lt_io_name(used[2]), engine[2]);
	LT_CHECK(memcmp(copy[0], copy[1], need) == 0, "auto and direct arenas differ");
	LT_CHECK(memcmp(copy[1], copy[2], need) == 0, "direct and buffered arenas differ");
	/* /var/tmp is ext4 or similar: O_DIRECT must be used when asked */
	LT_CHECK(used[QV_IO_DIRECT] == QV_IO_DIRECT, "--io direct on %s fell back to %s/%s", e->base,
	         lt_io_name(used[QV_IO_DIRECT]), engine[QV_IO_DIRECT]);
	LT_CHECK(used[QV_IO_BUFFERED] == QV_IO_BUFFERED, "--io buffered used %s",
	         lt_io_name(used[QV_IO_BUFFERED]));
	for (int i = 0; i < 3; i++)
		free(copy[i]);

	/* auto: shards in the page cache -> buffered; dropped from it -> direct */
	qv_load_opts ob = {.device = QV_DEVICE_CPU, .io = QV_IO_BUFFERED};
	qv_load_destroy(load_ok(e, "v1", NULL, 0, &ob, "warm the cache"));
	qv_load_opts oa = {.device = QV_DEVICE_CPU, .io = QV_IO_AUTO};
	qv_load *l = load_ok(e, "v1", NULL, 0, &oa, "auto, cached");
	LT_CHECK(qv_load_get_stats(l)->io == QV_IO_BUFFERED,
	         "auto with every shard in the page cache used %s (engine %s), expected buffered",
	         lt_io_name(qv_load_get_stats(l)->io), qv_load_get_stats(l)->engine);
	qv_load_destroy(l);
	drop_cache(e, "v1");
	l = load_ok(e, "v1", NULL, 0, &oa, "auto, not cached");
	lt_check_table(&e->m, l, qv_load_arena(l), "auto, not cached");
	if (qv_load_get_stats(l)->io != QV_IO_DIRECT)
		print_message("# note: auto after POSIX_FADV_DONTNEED still chose %s (cache not dropped?)\n",
		              lt_io_name(qv_load_get_stats(l)->io));
	qv_load_destroy(l);
}

static void test_shared_shards(void **state)
{
	struct env *e = *state;
	/* v1: A B C D; v2: A B (same bytes) D' (changed) E, and F = copy of E's
	 * bytes inside the same file (one shard, two tensors); model org/other
	 * shares B with both. */
	struct lt_model m1 = {0}, m2 = {0}, m3 = {0};
	char d1[1024], d2[1024], d3[1024];
	snprintf(d1, sizeof(d1), "%s/v1", e->in);
	snprintf(d2, sizeof(d2), "%s/v2", e->in);
	snprintf(d3, sizeof(d3), "%s/o1", e->in);
	mkdir(e->in, 0755);
	struct lt_file *f1 = lt_file_add(&m1, "model.safetensors");
	lt_tensor_add(f1, "A", 2 * MIB + 100, NULL);
	lt_tensor_add(f1, "B", 1 * MIB + 12345, NULL);
	lt_tensor_add(f1, "C", 3000, NULL);
	lt_tensor_add(f1, "D", 1 * MIB, NULL);
	struct lt_file *f2 = lt_file_add(&m2, "model.safetensors");
	lt_tensor_add(f2, "A", f1->t[0].bytes, lt_tensor_data(f1, 0));
	lt_tensor_add(f2, "B", f1->t[1].bytes, lt_tensor_data(f1, 1));
	lt_tensor_add(f2, "D", 1 * MIB, NULL);
	size_t ei = lt_tensor_add(f2, "E", 1 * MIB + 1, NULL);
	lt_tensor_add(f2, "F", f2->t[ei].bytes, lt_tensor_data(f2, ei));
	lt_tensor_add(f2, "C", 3000, lt_tensor_data(f1, 2));
	struct lt_file *f3 = lt_file_add(&m3, "model.safetensors");
	lt_tensor_add(f3, "x", 5 * MIB + 3, NULL);
	lt_tensor_add(f3, "B", f1->t[1].bytes, lt_tensor_data(f1, 1));
	lt_model_write(&m1, d1, 0);
	lt_model_write(&m2, d2, 0);
	lt_model_write(&m3, d3, 0);
	lt_publish(e->s, MODEL, &m1, "v1");
	lt_publish(e->s, MODEL, &m2, "v2");
	lt_publish(e->s, "org/other", &m3, "o1");
	size_t n2 = 0;
	lt_distinct_shard_bytes(e->s, MODEL, "v2", &n2);
	print_message("# v2: 6 tensors in %zu distinct shards\n", n2);
	for (int io = QV_IO_DIRECT; io <= QV_IO_BUFFERED; io++) {
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
		                  .chunk_bytes = 64 * KIB, .qd = 4};
		char w[64];
		lt_model_free(&e->m);
		e->m = m1;
		snprintf(w, sizeof(w), "v1, io %s", lt_io_name((enum qv_io_mode)io));
		load_both_ways(e, "v1", &o, w);
		e->m = m2;
		snprintf(w, sizeof(w), "v2, io %s", lt_io_name((enum qv_io_mode)io));
		load_both_ways(e, "v2", &o, w);
		/* E and F share one shard: same offset in the arena */
		qv_load *l = load_ok(e, "v2", NULL, 0, &o, w);
		size_t n = 0;
		const qv_load_tensor *t = qv_load_tensors(l, &n);
		const qv_load_tensor *te = NULL, *tf = NULL;
		for (size_t i = 0; i < n; i++) {
			if (strcmp(t[i].name, "E") == 0)
				te = &t[i];
			if (strcmp(t[i].name, "F") == 0)
				tf = &t[i];
		}
		LT_CHECK(te && tf, "E or F missing");
		if (te->offset != tf->offset)
			print_message("# note: E and F (same bytes) at arena offsets %llu and %llu\n",
			              (unsigned long long)te->offset, (unsigned long long)tf->offset);
		qv_load_destroy(l);
		/* the other model, through the same store */
		l = NULL;
		int rc = qv_load_run(e->s, "org/other", "o1", NULL, 0, &o, &l);
		LT_CHECK(rc == 0, "org/other@o1: %d %s", rc, qv_store_errmsg(e->s));
		lt_check_table(&m3, l, qv_load_arena(l), "org/other@o1");
		qv_load_destroy(l);
		e->m = (struct lt_model){0};
	}
	/* current is v2: ref NULL loads it */
	e->m = m2;
	qv_load *l = load_ok(e, NULL, NULL, 0, NULL, "current (NULL ref, NULL opts)");
	lt_check_table(&m2, l, qv_load_arena(l), "current (NULL ref, NULL opts)");
	qv_load_destroy(l);
	lt_model_free(&m1);
	lt_model_free(&m3);
	/* m2 is freed by teardown as e->m */
}

static void test_verify_good(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++)
		for (size_t chunk = 64 * KIB; chunk <= 4 * MIB; chunk *= 64) {
			qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
			                  .chunk_bytes = chunk, .qd = 16, .verify = 1};
			char w[64];
			snprintf(w, sizeof(w), "verify, io %s, chunk %zu KiB",
			         lt_io_name((enum qv_io_mode)io), chunk >> 10);
			load_both_ways(e, "v1", &o, w);
		}
}

static void test_empty_tensor(void **state)
{
	struct env *e = *state;
	struct lt_file *f = lt_file_add(&e->m, "model.safetensors");
	lt_tensor_add(f, "before", 1 * MIB + 5, NULL);
	lt_tensor_add(f, "empty", 0, NULL);
	lt_tensor_add(f, "after", 77, NULL);
	lt_model_write(&e->m, e->in, 1);
	lt_publish(e->s, MODEL, &e->m, "v1");
	qv_load_opts o = {.device = QV_DEVICE_CPU, .io = QV_IO_DIRECT, .verify = 1};
	load_both_ways(e, "v1", &o, "with a zero-byte tensor");
}

static void test_progress(void **state);

/* ---- damage and faults ----------------------------------------------------------------------- */
static void test_truncated_shard(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	char p[PATH_MAX];
	lt_shard_of(e->s, MODEL, "v1", "straddle.b", p, sizeof(p), NULL);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	static const off_t cut[] = {1, 4096, 12345};
	for (size_t c = 0; c < 3; c++) {
		assert_int_equal(truncate(p, st.st_size - cut[c]), 0);
		for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++)
			for (int verify = 0; verify <= 1; verify++) {
				qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
				                  .chunk_bytes = 64 * KIB, .verify = verify};
				char w[128];
				snprintf(w, sizeof(w), "shard %lld bytes short, io %s, verify %d",
				         (long long)cut[c], lt_io_name((enum qv_io_mode)io), verify);
				load_fails(e, MODEL, "v1", NULL, 0, &o, QV_ECORRUPT, w);
			}
	}
}

static void test_missing_shard(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	char p[PATH_MAX];
	lt_shard_of(e->s, MODEL, "v1", "small.c", p, sizeof(p), NULL);
	assert_int_equal(unlink(p), 0);
	for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++) {
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io};
		char w[64];
		snprintf(w, sizeof(w), "missing packed shard, io %s", lt_io_name((enum qv_io_mode)io));
		load_fails(e, MODEL, "v1", NULL, 0, &o, QV_ECORRUPT, w);
	}
}

static void test_fault_eio(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	char hangs[1024] = "";
	int n_hangs = 0;
	for (int io = QV_IO_DIRECT; io <= QV_IO_BUFFERED; io++)
		for (unsigned qd = 1; qd <= 16; qd *= 16) {
			qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io, .qd = qd,
			                  .chunk_bytes = 64 * KIB};
			qv_load *l = load_ok(e, "v1", NULL, 0, &o, "baseline");
			uint64_t reads = qv_load_get_stats(l)->reads;
			qv_load_destroy(l);
			const uint64_t ks[] = {1, 2, 7, reads / 2, reads};
			for (size_t i = 0; i < 5; i++) {
				char w[128];
				snprintf(w, sizeof(w), "EIO on read %llu of %llu, io %s, qd %u",
				         (unsigned long long)ks[i], (unsigned long long)reads,
				         lt_io_name((enum qv_io_mode)io), qd);
				qv_load_fault_set(ks[i], QV_FAULT_EIO);
				struct child_res r = {0};
				int hung = load_in_child(e, MODEL, "v1", NULL, 0, &o, &r);
				qv_load_fault_set(0, QV_FAULT_NONE);
				if (hung) {
					/* record it and go on with the next engine/depth */
					print_message("# HANG: %s: qv_load_run did not return in %d s\n", w,
					              CHILD_TIMEOUT_S);
					n_hangs++;
					size_t len = strlen(hangs);
					snprintf(hangs + len, sizeof(hangs) - len, "%s[%s]", len ? ", " : "", w);
					break;
				}
				qv_load_fault_set(ks[i], QV_FAULT_EIO);
				load_fails(e, MODEL, "v1", NULL, 0, &o, -EIO, w);
				/* into a caller buffer too: it stays the caller's */
				uint64_t need = 0;
				qv_load_size(e->s, MODEL, "v1", &need);
				void *buf = malloc(need);
				assert_non_null(buf);
				load_fails(e, MODEL, "v1", buf, need, &o, -EIO, w);
				free(buf);
				qv_load_fault_set(0, QV_FAULT_NONE);
			}
			/* past the last read: nothing fails */
			qv_load_fault_set(reads + 1, QV_FAULT_EIO);
			l = load_ok(e, "v1", NULL, 0, &o, "EIO armed past the last read");
			lt_check_table(&e->m, l, qv_load_arena(l), "EIO armed past the last read");
			qv_load_destroy(l);
			qv_load_fault_set(0, QV_FAULT_NONE);
			/* and after the reset, loads work again */
			l = load_ok(e, "v1", NULL, 0, &o, "after reset");
			qv_load_destroy(l);
		}
	LT_CHECK(n_hangs == 0, "qv_load_run never returns after an injected EIO in %d of 4 "
	         "engine/depth combinations (expected -EIO): %s", n_hangs, hangs);
}

static void test_fault_short(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	for (int io = QV_IO_DIRECT; io <= QV_IO_BUFFERED; io++)
		for (size_t chunk = 64 * KIB; chunk <= 1 * MIB; chunk *= 16) {
			qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io, .qd = 8,
			                  .chunk_bytes = chunk, .verify = 1};
			qv_load *l = load_ok(e, "v1", NULL, 0, &o, "baseline");
			uint64_t reads = qv_load_get_stats(l)->reads;
			qv_load_destroy(l);
			const uint64_t ks[] = {1, 2, 3, reads / 2, reads - 1, reads};
			for (size_t i = 0; i < 6; i++) {
				char w[128];
				snprintf(w, sizeof(w), "short read %llu of %llu, io %s, chunk %zu KiB",
				         (unsigned long long)ks[i], (unsigned long long)reads,
				         lt_io_name((enum qv_io_mode)io), chunk >> 10);
				qv_load_fault_set(ks[i], QV_FAULT_SHORT);
				load_both_ways(e, "v1", &o, w);
				qv_load_fault_set(ks[i], QV_FAULT_SHORT);
				l = load_ok(e, "v1", NULL, 0, &o, w);
				qv_load_fault_set(0, QV_FAULT_NONE);
				/* a 1-byte read cannot come back short; the first reads are whole chunks */
				LT_CHECK(ks[i] > 3 || qv_load_get_stats(l)->reads > reads,
				         "%s: %llu reads, no more than without the short read (%llu)", w,
				         (unsigned long long)qv_load_get_stats(l)->reads,
				         (unsigned long long)reads);
				qv_load_destroy(l);
			}
		}
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	LT_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	unsigned char b;
	LT_CHECK(pread(fd, &b, 1, off) == 1, "pread %s", path);
	b ^= 0x01;
	LT_CHECK(pwrite(fd, &b, 1, off) == 1, "pwrite %s", path);
	fsync(fd);
	close(fd);
}

/* O_DIRECT refused mid-load (EINVAL on a read, as some file systems answer
 * only then): the load starts over through the page cache, and every byte
 * is right, wherever the refusal came. */
static void test_direct_refused_midway(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	qv_load_opts o = {.device = QV_DEVICE_CPU, .io = QV_IO_DIRECT, .chunk_bytes = 64 * KIB,
	                  .verify = 1};
	qv_load *l = load_ok(e, "v1", NULL, 0, &o, "baseline");
	uint64_t reads = qv_load_get_stats(l)->reads;
	int direct = qv_load_get_stats(l)->io == QV_IO_DIRECT;
	qv_load_destroy(l);
	if (!direct) {
		print_message("# SKIP: this file system refuses O_DIRECT at open already\n");
		skip();
	}
	const uint64_t ks[] = {1, 2, reads / 2, reads};
	for (size_t i = 0; i < 4; i++) {
		char w[128];
		snprintf(w, sizeof(w), "O_DIRECT refused at read %llu of %llu", (unsigned long long)ks[i],
		         (unsigned long long)reads);
		qv_load_fault_set(ks[i], QV_FAULT_EINVAL);
		l = load_ok(e, "v1", NULL, 0, &o, w);
		qv_load_fault_set(0, QV_FAULT_NONE);
		LT_CHECK(qv_load_get_stats(l)->io == QV_IO_BUFFERED, "%s: the load says it used %s", w,
		         lt_io_name(qv_load_get_stats(l)->io));
		qv_load_destroy(l);
	}
}

static void test_flipped_byte(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	/* one byte in a big shard (past the first chunk), one in a packed one */
	static const struct { const char *tensor; uint64_t at; } hit[] = {
		{"straddle.b", 4 * MIB + 4096 * 3 + 3},
		{"small.b", 4000},
	};
	for (size_t h = 0; h < 2; h++) {
		char p[PATH_MAX];
		uint64_t soff = 0;
		lt_shard_of(e->s, MODEL, "v1", hit[h].tensor, p, sizeof(p), &soff);
		flip_byte(p, (off_t)(soff + hit[h].at));
		for (int io = QV_IO_AUTO; io <= QV_IO_BUFFERED; io++) {
			qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
			                  .chunk_bytes = 64 * KIB, .qd = 4, .verify = 1};
			char w[128];
			snprintf(w, sizeof(w), "byte %llu of %s flipped, verify, io %s",
			         (unsigned long long)hit[h].at, hit[h].tensor, lt_io_name((enum qv_io_mode)io));
			load_fails(e, MODEL, "v1", NULL, 0, &o, QV_ECORRUPT, w);
			/* without verify the load "succeeds": verify is what catches it */
			o.verify = 0;
			qv_load *l = load_ok(e, "v1", NULL, 0, &o, "flipped byte, no verify");
			size_t n = 0;
			const qv_load_tensor *t = qv_load_tensors(l, &n);
			size_t diff = 0;
			for (size_t k = 0; k < n; k++) {
				const struct lt_file *f = &e->m.f[0];
				size_t ti = 0;
				while (strcmp(f->t[ti].name, t[k].name) != 0)
					ti++;
				const unsigned char *a = t[k].ptr, *b = lt_tensor_data(f, ti);
				for (uint64_t i = 0; i < t[k].bytes; i++)
					if (a[i] != b[i]) {
						diff++;
						LT_CHECK(strcmp(t[k].name, hit[h].tensor) == 0 || h == 1,
						         "no verify: byte %llu of %s differs", (unsigned long long)i,
						         t[k].name);
					}
			}
			LT_CHECK(diff == h + 1, "no verify: %zu damaged bytes delivered, expected %zu", diff,
			         h + 1);
			qv_load_destroy(l);
		}
	}
}

/* ---- options ------------------------------------------------------------------------------- */
static void test_bad_opts(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	qv_load_opts o = {.device = QV_DEVICE_CPU, .qd = QV_LOAD_QD_MAX + 1};
	load_fails(e, MODEL, "v1", NULL, 0, &o, -EINVAL, "qd 257");
	o.qd = 100000;
	load_fails(e, MODEL, "v1", NULL, 0, &o, -EINVAL, "qd 100000");
	o.qd = 0;
	static const size_t bad_chunk[] = {64 * KIB + 1, 100000, 65536 + 2048, 32 * KIB, 4096,
	                                   QV_LOAD_CHUNK_MAX + 4096, 128 * MIB};
	for (size_t i = 0; i < sizeof(bad_chunk) / sizeof(bad_chunk[0]); i++) {
		char w[64];
		snprintf(w, sizeof(w), "chunk %zu", bad_chunk[i]);
		o.chunk_bytes = bad_chunk[i];
		load_fails(e, MODEL, "v1", NULL, 0, &o, -EINVAL, w);
	}
	o.chunk_bytes = 0;
	o.io = (enum qv_io_mode)3;
	load_fails(e, MODEL, "v1", NULL, 0, &o, -EINVAL, "io mode 3");
	o.io = QV_IO_AUTO;
	o.host_pages = (enum qv_host_pages)3;
	load_fails(e, MODEL, "v1", NULL, 0, &o, -EINVAL, "host pages 3");
	o.host_pages = QV_HOST_PAGES_AUTO;
	/* the bounds themselves are fine */
	o.qd = QV_LOAD_QD_MAX;
	o.chunk_bytes = QV_LOAD_CHUNK_MIN;
	qv_load *l = load_ok(e, "v1", NULL, 0, &o, "qd 256, chunk 64 KiB");
	lt_check_table(&e->m, l, qv_load_arena(l), "qd 256, chunk 64 KiB");
	qv_load_destroy(l);
	o.qd = 1;
	o.chunk_bytes = QV_LOAD_CHUNK_MAX;
	l = load_ok(e, "v1", NULL, 0, &o, "qd 1, chunk 64 MiB");
	lt_check_table(&e->m, l, qv_load_arena(l), "qd 1, chunk 64 MiB");
	qv_load_destroy(l);
	/* 0 means the default (load.h: "0: default") */
	o.qd = 0;
	o.chunk_bytes = 0;
	l = load_ok(e, "v1", NULL, 0, &o, "qd 0, chunk 0 (defaults)");
	LT_CHECK(qv_load_get_stats(l)->qd >= 1 && qv_load_get_stats(l)->chunk_bytes >= QV_LOAD_CHUNK_MIN,
	         "defaults: qd %u chunk %zu", qv_load_get_stats(l)->qd,
	         qv_load_get_stats(l)->chunk_bytes);
	print_message("# defaults: qd %u, chunk %zu KiB\n", qv_load_get_stats(l)->qd,
	              qv_load_get_stats(l)->chunk_bytes >> 10);
	qv_load_destroy(l);
	/* names */
	load_fails(e, "org/nope", NULL, NULL, 0, NULL, QV_ENOTFOUND, "unknown model");
	load_fails(e, MODEL, "v9", NULL, 0, NULL, QV_ENOTFOUND, "unknown version");
	/* devices: no GPU here, or a device index that cannot exist */
	const char *why = "";
	int ngpu = qv_gpu_device_count(&why);
	qv_load_opts od = {.device = 4096};
	load_fails(e, MODEL, "v1", NULL, 0, &od, qv_gpu_built_with_cuda() ? -ENODEV : -ENOTSUP,
	           "device 4096");
	od.device = -7;
	load_fails(e, MODEL, "v1", NULL, 0, &od, qv_gpu_built_with_cuda() ? -ENODEV : -ENOTSUP,
	           "device -7");
	if (ngpu == 0) {
		od.device = 0;
		load_fails(e, MODEL, "v1", NULL, 0, &od, qv_gpu_built_with_cuda() ? -ENODEV : -ENOTSUP,
		           "device 0 without a GPU");
		print_message("# cuda:0 without a GPU: %s\n", e->lastmsg);
	}
	qv_load_destroy(NULL);
}

/* ---- host arena pages ------------------------------------------------------------------------ */

/* The VmFlags of the mapping that holds addr (/proc/self/smaps) into
 * flags: 1, or 0 where the kernel does not list them. */
static int vm_flags(const void *addr, char *flags, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	LT_CHECK(f, "open /proc/self/smaps: %s", strerror(errno));
	char line[512];
	int in = 0, got = 0;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
			in = a >= lo && a < hi;
			continue;
		}
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(flags, len, "%s", line + 8);
			got = 1;
			break;
		}
	}
	fclose(f);
	return got;
}

/* 1 if the two-letter flag fl is among VmFlags' words. */
static int has_flag(const char *flags, const char *fl)
{
	for (const char *p = flags; (p = strstr(p, fl)) != NULL; p += 2)
		if ((p == flags || p[-1] == ' ') && (p[2] == ' ' || p[2] == '\n' || p[2] == '\0'))
			return 1;
	return 0;
}

/* Each setting of qv_load_opts.host_pages gives the arena it names (the
 * mapping marked hg for MADV_HUGEPAGE, nh for MADV_NOHUGEPAGE), with the
 * same bytes; a caller's buffer is left alone. */
static void test_host_pages(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	uint64_t need = 0;
	LT_CHECK(qv_load_size(e->s, MODEL, "v1", &need) == 0, "qv_load_size");
	print_message("# THP %s, free page reporting %s, %lld bytes free in huge blocks: auto "
	              "means %s pages for this arena\n",
	              qv__thp_never("/sys") ? "off" : "on",
	              qv__free_page_reporting("/sys") ? "on" : "off",
	              qv__free_huge_bytes("/proc/buddyinfo", 2 * MIB, (size_t)sysconf(_SC_PAGESIZE)),
	              qv__host_pages_auto((size_t)need) == QV_HOST_PAGES_HUGE ? "huge" : "small");
	static const enum qv_host_pages ask[] = {QV_HOST_PAGES_SMALL, QV_HOST_PAGES_HUGE,
	                                         QV_HOST_PAGES_AUTO};
	for (size_t i = 0; i < sizeof(ask) / sizeof(ask[0]); i++) {
		qv_load_opts o = {.device = QV_DEVICE_CPU, .host_pages = ask[i]};
		char w[64];
		snprintf(w, sizeof(w), "host_pages %d", (int)ask[i]);
		enum qv_host_pages before = qv__host_pages_auto((size_t)need);
		qv_load *l = load_ok(e, "v1", NULL, 0, &o, w);
		enum qv_host_pages after = qv__host_pages_auto((size_t)need);
		const void *arena = qv_load_arena(l);
		lt_check_table(&e->m, l, arena, w);
		check_stats(e, l, "v1", &o, w);
		const qv_load_stats *st = qv_load_get_stats(l);
		enum qv_host_pages got = st->host_pages;
		if (ask[i])
			LT_CHECK(got == ask[i], "%s: stats.host_pages %d", w, (int)got);
		else if (before == after) /* else free memory moved across the line meanwhile */
			LT_CHECK(got == before, "%s: stats.host_pages %d, auto says %d", w, (int)got,
			         (int)before);
		LT_CHECK(got == QV_HOST_PAGES_SMALL || got == QV_HOST_PAGES_HUGE,
		         "%s: stats.host_pages %d", w, (int)got);
		if (got == QV_HOST_PAGES_HUGE)
			LT_CHECK((uintptr_t)arena % (2 * MIB) == 0, "%s: arena %p is not 2 MiB aligned", w,
			         arena);
		char flags[512];
		if (vm_flags(arena, flags, sizeof(flags))) {
			int hg = has_flag(flags, "hg"), nh = has_flag(flags, "nh");
			LT_CHECK(hg == (got == QV_HOST_PAGES_HUGE) && nh == (got == QV_HOST_PAGES_SMALL),
			         "%s: the arena's VmFlags are%s", w, flags);
		}
		qv_load_destroy(l);
	}
	/* the caller's memory is the caller's */
	void *buf = aligned_alloc(4096, (size_t)(need + 4095) / 4096 * 4096);
	LT_CHECK(buf, "out of memory");
	qv_load_opts o = {.device = QV_DEVICE_CPU, .host_pages = QV_HOST_PAGES_HUGE};
	qv_load *l = load_ok(e, "v1", buf, need, &o, "caller buffer");
	LT_CHECK(qv_load_get_stats(l)->host_pages == QV_HOST_PAGES_AUTO,
	         "caller buffer: stats.host_pages %d", (int)qv_load_get_stats(l)->host_pages);
	lt_check_table(&e->m, l, buf, "caller buffer");
	qv_load_destroy(l);
	free(buf);
}

/* Writes text to base/rel, making its folders. */
static void put_file(const char *base, const char *rel, const char *text)
{
	char path[PATH_MAX];
	LT_CHECK(mkdir(base, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", base, strerror(errno));
	snprintf(path, sizeof(path), "%s/%s", base, rel);
	for (char *p = path + strlen(base) + 1; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		LT_CHECK(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
		*p = '/';
	}
	FILE *f = fopen(path, "w");
	LT_CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "write %s: %s", path, strerror(errno));
}

/* Free page reporting is read from a virtio balloon's feature bit 5, THP
 * being off from the [never] mark, free huge blocks from buddyinfo; fake
 * sysfs trees and files stand in for the machines. */
static void test_free_page_reporting(void **state)
{
	struct env *e = *state;
	char sys[600];
	/* features: bit 0 first; bit 5 is VIRTIO_BALLOON_F_REPORTING */
	static const char with[] = "0110010100000000000000000000000010000000\n";
	static const char without[] = "0110000100000000000000000000000010000000\n";
	struct {
		const char *what;
		const char *files[3][2]; /* rel, text */
		int want;
	} cases[] = {
	    {"no virtio bus", {{NULL, NULL}}, 0},
	    {"a balloon that reports", {{"bus/virtio/devices/virtio0/device", "0x0005\n"},
	                                {"bus/virtio/devices/virtio0/features", with}}, 1},
	    {"a balloon that does not", {{"bus/virtio/devices/virtio0/device", "0x0005\n"},
	                                 {"bus/virtio/devices/virtio0/features", without}}, 0},
	    {"bit 5 of a disk", {{"bus/virtio/devices/virtio1/device", "0x0002\n"},
	                         {"bus/virtio/devices/virtio1/features", with}}, 0},
	    {"a disk, then a balloon that reports",
	     {{"bus/virtio/devices/virtio1/device", "0x0002\n"},
	      {"bus/virtio/devices/virtio2/device", "0x0005\n"},
	      {"bus/virtio/devices/virtio2/features", "000001\n"}}, 1},
	    {"a balloon with a short features line", {{"bus/virtio/devices/virtio0/device", "0x0005\n"},
	                                              {"bus/virtio/devices/virtio0/features", "01100\n"}}, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(sys, sizeof(sys), "%s/sys%zu", e->base, i);
		LT_CHECK(mkdir(sys, 0755) == 0, "mkdir %s: %s", sys, strerror(errno));
		for (size_t j = 0; j < 3 && cases[i].files[j][0]; j++)
			put_file(sys, cases[i].files[j][0], cases[i].files[j][1]);
		LT_CHECK(qv__free_page_reporting(sys) == cases[i].want, "%s: free page reporting %d",
		         cases[i].what, !cases[i].want);
	}
	static const struct {
		const char *line;
		int never;
	} thp[] = {{"always [madvise] never\n", 0}, {"[always] madvise never\n", 0},
	           {"always madvise [never]\n", 1}};
	for (size_t i = 0; i < sizeof(thp) / sizeof(thp[0]); i++) {
		snprintf(sys, sizeof(sys), "%s/thp%zu", e->base, i);
		put_file(sys, "kernel/mm/transparent_hugepage/enabled", thp[i].line);
		LT_CHECK(qv__thp_never(sys) == thp[i].never, "THP '%.30s': never %d", thp[i].line,
		         !thp[i].never);
	}
	snprintf(sys, sizeof(sys), "%s/nothp", e->base);
	LT_CHECK(qv__thp_never(sys) == 1, "a kernel without THP counts as never");

	/* free huge blocks: orders 9 and 10 of 4 KiB pages are 2 and 4 MiB */
	static const struct {
		const char *text;
		long long want;
	} bi[] = {
	    {"Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n"
	     "Node 0, zone    DMA32      2      3      0      2      3      2      1      4      4      2    752 \n"
	     "Node 0, zone   Normal      0    885    326    382    184     93     42     58    119     26    518 \n",
	     (1 + 2 + 26) * 2 * (long long)MIB + (3 + 752 + 518) * 4 * (long long)MIB},
	    {"Node 0, zone   Normal   100   100   100   100   100   100   100   100   100     0     0\n", 0},
	    {"Node 1, zone   Normal     0     0     0     0     0     0     0     0     0     7\n",
	     7 * 2 * (long long)MIB},
	    {"nothing here\n", -1},
	};
	for (size_t i = 0; i < sizeof(bi) / sizeof(bi[0]); i++) {
		char rel[32];
		snprintf(rel, sizeof(rel), "buddyinfo%zu", i);
		put_file(e->base, rel, bi[i].text);
		snprintf(sys, sizeof(sys), "%s/%s", e->base, rel);
		long long got = qv__free_huge_bytes(sys, 2 * MIB, 4096);
		LT_CHECK(got == bi[i].want, "buddyinfo %zu: %lld bytes free in huge blocks, want %lld", i,
		         got, bi[i].want);
	}
	snprintf(sys, sizeof(sys), "%s/no-buddyinfo", e->base);
	LT_CHECK(qv__free_huge_bytes(sys, 2 * MIB, 4096) == -1, "a missing buddyinfo is -1");
}

/* ---- progress ------------------------------------------------------------------------------ */
struct prog {
	pthread_t caller;
	uint64_t calls, last_done, total;
	int bad_thread, backwards, over;
};

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct prog *p = arg;
	p->calls++;
	if (!pthread_equal(pthread_self(), p->caller))
		p->bad_thread = 1;
	if (done < p->last_done)
		p->backwards = 1;
	if (done > total)
		p->over = 1;
	p->last_done = done;
	p->total = total;
}

/* A GPU named by PCI bus id (daemon: load_cuda's pci_bus_id): only the
 * shape of one reaches the driver, and a GPU this process does not see is
 * -ENODEV (-ENOTSUP without CUDA), never another device. */
static void test_pci_bus_id(void **state)
{
	(void)state;
	static const char *bad[] = {"", "zz", "0000:65:00.", "0000:65:00.00", "000000000:65:00.0",
	                            "0000:665:00.0", "65:00.0x", "0000:65:00.0 ", ":65:00.0",
	                            "0000:65.00.0", "123:00.0", "0000:65:00.0;rm", "-1", "65:00"};
	static const char *shaped[] = {"0000:ff:1f.7", "ff:1f.7", "0000ffff:ff:1f.7", "0000:ff:1f"};
	int dev = 42;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (qv_gpu_device_by_pci(bad[i], &dev) != -EINVAL)
			fail_msg("\"%s\" was taken for a PCI bus id", bad[i]);
	}
	for (size_t i = 0; i < sizeof(shaped) / sizeof(shaped[0]); i++) {
		int rc = qv_gpu_device_by_pci(shaped[i], &dev);
		if (rc != -ENODEV && rc != -ENOTSUP)
			fail_msg("%s: %d, wanted -ENODEV or -ENOTSUP (no GPU sits there)", shaped[i], rc);
	}
	char id[32];
	int n = qv_gpu_device_count(NULL);
	if (n > 0) { /* a GPU's own bus id names it */
		assert_int_equal(qv_gpu_pci_bus_id(n - 1, id, sizeof(id)), 0);
		assert_int_equal(qv_gpu_device_by_pci(id, &dev), 0);
		assert_int_equal(dev, n - 1);
	}
	assert_int_not_equal(qv_gpu_pci_bus_id(n, id, sizeof(id)), 0);
}

static void test_progress(void **state)
{
	struct env *e = *state;
	std_model(e, 1);
	for (int io = QV_IO_DIRECT; io <= QV_IO_BUFFERED; io++) {
		struct prog p = {.caller = pthread_self()};
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = (enum qv_io_mode)io,
		                  .chunk_bytes = 64 * KIB, .progress = on_progress, .progress_arg = &p};
		qv_load *l = load_ok(e, "v1", NULL, 0, &o, "progress");
		const qv_load_stats *st = qv_load_get_stats(l);
		LT_CHECK(p.calls > 0, "progress never called");
		LT_CHECK(!p.bad_thread, "progress called off the calling thread (io %s)",
		         lt_io_name((enum qv_io_mode)io));
		LT_CHECK(!p.backwards && !p.over, "progress went backwards or past total");
		LT_CHECK(p.last_done == st->bytes && p.total == st->bytes,
		         "progress ended at %llu of %llu, stats.bytes %llu", (unsigned long long)p.last_done,
		         (unsigned long long)p.total, (unsigned long long)st->bytes);
		qv_load_destroy(l);
	}
}

/* ---- O_DIRECT refused: the pread fallback ---------------------------------------------------- */
static int odirect_refused(const char *dir)
{
	char p[1024];
	snprintf(p, sizeof(p), "%s/.probe", dir);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	close(fd);
	fd = open(p, O_RDONLY | O_DIRECT);
	int refused = fd < 0 && errno == EINVAL;
	if (fd >= 0)
		close(fd);
	unlink(p);
	return refused;
}

static void test_odirect_fallback(void **state)
{
	struct env *e = *state;
	/* tmpfs first (what the brief names; it accepts O_DIRECT since Linux 6.6),
	 * then ramfs, which refuses it on every kernel */
	static const char *fstypes[] = {"tmpfs", "ramfs"};
	int exercised = 0, mounted = 0;
	for (size_t i = 0; i < 2 && !exercised; i++) {
		snprintf(e->mnt, sizeof(e->mnt), "%s/mnt-%s", e->base, fstypes[i]);
		mkdir(e->mnt, 0755);
		if (mount("none", e->mnt, fstypes[i], 0, "size=256m") != 0) {
			print_message("# cannot mount %s (%s)\n", fstypes[i], strerror(errno));
			e->mnt[0] = '\0';
			continue;
		}
		mounted = 1;
		int refused = odirect_refused(e->mnt);
		char root[1024], in[1024];
		snprintf(root, sizeof(root), "%s/root", e->mnt);
		snprintf(in, sizeof(in), "%s/in", e->base);
		qv_store *s = lt_store_open(root);
		lt_model_free(&e->m);
		struct lt_file *f = lt_file_add(&e->m, "model.safetensors");
		lt_tensor_add(f, "big", 2 * MIB + 999, NULL);
		lt_tensor_add(f, "small", 333, NULL);
		lt_model_write(&e->m, in, 1);
		lt_publish(s, MODEL, &e->m, fstypes[i]);
		qv_load_opts o = {.device = QV_DEVICE_CPU, .io = QV_IO_DIRECT, .chunk_bytes = 64 * KIB,
		                  .verify = 1};
		qv_load *l = NULL;
		int rc = qv_load_run(s, MODEL, fstypes[i], NULL, 0, &o, &l);
		LT_CHECK(rc == 0, "--io direct on %s: %d (%s) %s", fstypes[i], rc, qv_strerror(rc),
		         qv_store_errmsg(s));
		lt_check_table(&e->m, l, qv_load_arena(l), fstypes[i]);
		const qv_load_stats *st = qv_load_get_stats(l);
		print_message("# %s: O_DIRECT %s; --io direct used %s via %s\n", fstypes[i],
		              refused ? "refused" : "accepted", lt_io_name(st->io), st->engine);
		if (refused == 1) {
			LT_CHECK(strcmp(st->engine, "pread") == 0 && st->io == QV_IO_BUFFERED,
			         "%s refuses O_DIRECT: expected the pread engine and buffered io, got %s/%s",
			         fstypes[i], st->engine, lt_io_name(st->io));
			exercised = 1;
		} else if (refused == 0) {
			LT_CHECK(st->io == QV_IO_DIRECT, "%s accepts O_DIRECT but the load used %s",
			         fstypes[i], lt_io_name(st->io));
		}
		qv_load_destroy(l);
		qv_store_close(s);
		lt_rmrf(e->mnt);
		umount2(e->mnt, MNT_DETACH);
		rmdir(e->mnt);
		e->mnt[0] = '\0';
		lt_rmrf(in);
	}
	if (!exercised) {
		print_message("# SKIP: %s\n", mounted ? "no mountable file system here refuses O_DIRECT"
		                                       : "cannot mount tmpfs/ramfs (not root?)");
		skip();
	}
}

/* A sink's message describes the failure of the call that just returned
 * one, and a call that succeeds leaves none behind. */
static void test_sink_messages(void **state)
{
	(void)state;
	char dest[64];
	qv_sink *k = NULL;
	assert_int_equal(qv_sink_host_create(dest, sizeof(dest), 4, &k), 0);
	assert_int_equal(qv_sink_put(k, 0, "abcd", 4, 62), -ERANGE);
	assert_non_null(strstr(qv_sink_errmsg(k), "range"));
	assert_int_equal(qv_sink_put(k, 0, "abcd", 4, 60), 0);
	assert_string_equal(qv_sink_errmsg(k), "");
	assert_memory_equal(dest + 60, "abcd", 4);
	assert_int_equal(qv_sink_pairs_reserve(k, 0, 4, 1 << 20), -ENOTSUP); /* host sinks */
	assert_string_not_equal(qv_sink_errmsg(k), "");
	assert_int_equal(qv_sink_slot_wait(k, 3), 0);
	assert_string_equal(qv_sink_errmsg(k), "");
	assert_int_equal(qv_sink_slot_busy(k, 4), -ERANGE);
	assert_string_not_equal(qv_sink_errmsg(k), "");
	assert_int_equal(qv_sink_finish(k), 0);
	assert_string_equal(qv_sink_errmsg(k), "");
	qv_sink_destroy(k);
}

int main(void)
{
	lt_seed_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_chunks_and_depths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_small_tensors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_caller_buffer_too_small, setup, teardown),
		cmocka_unit_test_setup_teardown(test_io_modes_identical, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shared_shards, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_good, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_tensor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_progress, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated_shard, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_shard, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fault_eio, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fault_short, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_refused_midway, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flipped_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_opts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odirect_fallback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_host_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_page_reporting, setup, teardown),
		cmocka_unit_test(test_pci_bus_id),
		cmocka_unit_test(test_sink_messages),
	};
	int rc = cmocka_run_group_tests_name("load", tests, NULL, NULL);
	if (rc)
		printf("# %d failed; seed %llu (QV_TEST_SEED=%llu repeats this run)\n", rc,
		       (unsigned long long)lt_seed(), (unsigned long long)lt_seed());
	return rc;
}
