/* Helpers shared by the load tests (test_load.c, test_load_cuda.c).
 *
 * A test builds its input models here: safetensors files whose tensor bytes
 * come from one seeded PRNG (QV_TEST_SEED repeats a run), kept in memory so a
 * loaded table can be compared byte for byte with the source. Every failure
 * message carries the seed. */
#ifndef QV_TEST_LOAD_UTIL_H
#define QV_TEST_LOAD_UTIL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"
#include "quiver/gpu.h"
#include "quiver/load.h"
#include "quiver/store.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define LT_FILES_MAX 8
#define LT_NAME_MAX 96

struct lt_tensor {
	char name[LT_NAME_MAX];
	char dtype[12];
	uint32_t ndim;
	int64_t shape[4];
	uint64_t bytes;
	uint64_t data_off;      /* in the file's data section */
};

struct lt_file {
	char rel[64];           /* name inside the published folder (or the file's name) */
	unsigned char *data;    /* the data section */
	size_t data_len, data_cap;
	size_t n, cap;
	struct lt_tensor *t;
	size_t size;            /* whole file, once written */
};

struct lt_model {
	size_t n;
	struct lt_file f[LT_FILES_MAX];
	char path[PATH_MAX];    /* what to publish: the file, or the folder */
};

/* The seed of this run: $QV_TEST_SEED, else time and pid. Printed. */
uint64_t lt_seed_init(void);
uint64_t lt_seed(void);
uint64_t lt_rand(void);
void lt_fill_random(unsigned char *p, size_t n);

/* fail_msg() with the seed in front. */
void lt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#define LT_CHECK(cond, ...)                                                                        \
	do {                                                                                       \
		if (!(cond))                                                                       \
			lt_fail(__VA_ARGS__);                                                      \
	} while (0)

/* A fresh folder under /var/tmp (a real file system: O_DIRECT must work). */
void lt_tmpdir(char *out, size_t len, const char *tag);
void lt_rmrf(const char *path);

struct lt_file *lt_file_add(struct lt_model *m, const char *rel);
/* Appends a tensor of bytes bytes (dtype and shape chosen to fit) with the
 * given data, or random data if data is NULL. Returns its index. */
size_t lt_tensor_add(struct lt_file *f, const char *name, uint64_t bytes,
                     const unsigned char *data);
const unsigned char *lt_tensor_data(const struct lt_file *f, size_t i);
/* Writes the model's files into dir: m->path is dir/<rel> for a single file
 * when single, else dir. */
void lt_model_write(struct lt_model *m, const char *dir, int single);
void lt_model_free(struct lt_model *m);
size_t lt_model_tensors(const struct lt_model *m);

qv_store *lt_store_open(const char *root);
void lt_publish(qv_store *s, const char *model, const struct lt_model *m, const char *label);

/* Sum of the sizes of the distinct shards holding model@ref's tensors. */
uint64_t lt_distinct_shard_bytes(qv_store *s, const char *model, const char *ref, size_t *n);
/* Path of the shard file holding tensor `name` of model@ref; its offset in
 * the shard in *shard_off. */
void lt_shard_of(qv_store *s, const char *model, const char *ref, const char *name,
                 char *path, size_t len, uint64_t *shard_off);

/* Compares the load's table with the model: same tensors (names, files,
 * dtypes, shapes, byte counts), manifest order, ptr == arena + offset, and the
 * bytes. host_arena: a host copy of the arena (the arena itself for CPU
 * loads). */
void lt_check_table(const struct lt_model *m, const qv_load *l, const void *host_arena,
                    const char *what);

const char *lt_io_name(enum qv_io_mode io);

#endif
