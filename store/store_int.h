/* Internals of the store module. Not included by any other module. */
#ifndef QV_STORE_INT_H
#define QV_STORE_INT_H

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "quiver/error.h"
#include "quiver/store.h"

#define QV_SCHEMA_VERSION 1
#define QV_ALIGN 4096u                          /* tensor data alignment in shard files */
#define QV_TENSOR_SHARD_MIN (1u << 20)          /* tensors this big get a shard of their own */
#define QV_PACK_TARGET (32u << 20)              /* small tensors are packed up to this size */
#define QV_HEADER_MAX 100000000ull              /* safetensors header bound (100 MB) */
#define QV_MESSAGE_MAX 4096u
#define QV_FILES_MAX 100000u
#define QV_TENSORS_MAX 10000000u
#define QV_MAP_SIZE (64ull << 30)               /* LMDB map: virtual, grows on disk as used */

#define QV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- arena: everything a returned object points at, freed at once -------- */
struct qv__arena_blk;
typedef struct qv__arena {
	struct qv__arena_blk *head;
} qv__arena;

void *qv__arena_alloc(qv__arena *a, size_t n);   /* zeroed; NULL on ENOMEM */
char *qv__arena_strdup(qv__arena *a, const char *s);
char *qv__arena_strndup(qv__arena *a, const char *s, size_t n);
void qv__arena_free(qv__arena *a);

/* ---- the store handle ---------------------------------------------------- */
struct qv__tier {
	char *dir;
	char *shard_dir;
	char *tmp_dir;
};

struct qv_store {
	char *root;
	char *shard_dir;      /* = tier[QV_TIER_HOT].shard_dir */
	char *tmp_dir;        /* = tier[QV_TIER_HOT].tmp_dir */
	struct qv__tier tier[QV_TIERS];  /* dir NULL: no such tier */
	uint64_t hot_capacity;
	double high, low;
	qv_tier_read_fn tier_read;
	void *tier_read_arg;
	MDB_env *env;
	MDB_dbi db_meta, db_models, db_versions, db_manifests, db_aliases, db_history,
		db_shards;
	int lock_fd;          /* flock: publishers shared, deleters exclusive */
	qv_wait_fn wait_fn;   /* told before a lock wait (may be NULL) */
	void *wait_arg;
	struct stat config_st; /* config.ini as this handle read it (st_ino 0: none) */
};

/* 0 if root/config.ini is still the file this handle read its tiers from;
 * else QV_ECHANGED, reported on s (an init replaced it meanwhile). */
int qv__config_check(qv_store *s);

/* The message of the calling thread's last failed call (thread-local, so one
 * handle may serve several threads, as in the daemon). */
void qv__errmsg_clear(void);

/* Records the message for qv_store_errmsg() and returns err. */
#define qv__err qv_store_fail
/* Translates an LMDB return code (MDB_* or errno) to a Quiver code. */
int qv__mdb_err(int rc);
/* qv__err() for an LMDB failure in what (e.g. "commit"). */
int qv__mdb_fail(qv_store *s, int rc, const char *what);

/* ---- digests ------------------------------------------------------------- */
int qv__hex_parse(const char *hex, uint8_t d[QV_DIGEST_LEN]);  /* 0 or QV_EFORMAT */
/* 1 if s is well-formed UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF), as JSON strings must be (names.c). */
int qv__utf8_valid(const char *s);

/* ---- safetensors parsing ---------------------------------------------------- */
/* Parses and validates the safetensors file open on fd (size bytes, named
 * name for messages). Fills f (strings in arena a): header, tensors in data
 * offset order. On failure returns QV_EFORMAT / QV_ELIMIT / -errno and writes
 * a message into err. */
int qv__st_parse_fd(int fd, uint64_t size, const char *name, qv__arena *a, qv_file *f,
                    char *err, size_t errlen);
/* The same, over a header already in memory (used by the fuzzer and tests):
 * hdr/hdr_len is the JSON, data_len the bytes after it. */
int qv__st_parse_header(const char *hdr, size_t hdr_len, uint64_t data_len,
                        const char *name, qv__arena *a, qv_file *f, char *err, size_t errlen);
/* Bytes per element of a dtype name, 0 if unknown. */
unsigned qv__dtype_size(const char *dtype);

/* ---- manifests ------------------------------------------------------------ */
/* Encodes files into the canonical manifest JSON (malloc'd, *len bytes). */
int qv__manifest_encode(const qv_file *files, size_t n_files, int single_file, char **out,
                        size_t *len);
/* Decodes a manifest into arena a. */
int qv__manifest_decode(const char *buf, size_t len, qv__arena *a, qv_file **files,
                        size_t *n_files, int *single_file);

/* The distinct shard digests a manifest references, sorted (malloc'd). */
int qv__manifest_shards(const qv_file *files, size_t n_files, uint8_t (**out)[QV_DIGEST_LEN],
                        size_t *n);

/* ---- index records ---------------------------------------------------------- */
/* A shard's index entry. Fixed layout, native endian (the index is local). */
#define QV_SHARD_REC_MAGIC 0x51565331u /* "QVS1" */
enum { QV_SHARD_TENSOR = 0, QV_SHARD_PACK = 1, QV_SHARD_BLOB = 2 };
typedef struct qv__shard_rec {
	uint32_t magic;
	uint8_t kind;
	uint8_t tier;
	uint8_t codec;
	uint8_t pad0;
	uint64_t size;         /* raw bytes */
	uint64_t stored_size;  /* bytes on its tier */
	uint64_t refcount;     /* manifests that reference it */
	uint64_t xxh3;         /* XXH3-64 of the raw bytes: the fast check for loads */
	int64_t created_ns;
	int64_t last_use_ns;
} qv__shard_rec;

typedef struct qv__version_rec {
	uint8_t digest[QV_DIGEST_LEN];
	int64_t created_ns;
	uint64_t bytes;
	uint64_t n_tensors;
	uint64_t seq;
	int single_file;
	int pinned;
	int64_t last_load_ns;
	char parent[QV_NAME_MAX + 1];
	char message[QV_MESSAGE_MAX + 1];
} qv__version_rec;

/* key = model "\0" name, in buf of QV_KEY_MAX bytes */
#define QV_KEY_MAX (2 * QV_NAME_MAX + 16)
size_t qv__key2(char *buf, const char *model, const char *name);

int qv__version_rec_get(qv_store *s, MDB_txn *txn, const char *model, const char *label,
                        qv__version_rec *rec);   /* 0, QV_ENOTFOUND, ... */
int qv__version_rec_put(qv_store *s, MDB_txn *txn, const char *model, const char *label,
                        const qv__version_rec *rec);
/* label of alias model/name in out, 0 or QV_ENOTFOUND */
int qv__alias_get(qv_store *s, MDB_txn *txn, const char *model, const char *name,
                  char out[QV_NAME_MAX + 1]);
/* Resolves ref to a label (label, alias, digest prefix). */
int qv__resolve(qv_store *s, MDB_txn *txn, const char *model, const char *ref,
                char label[QV_NAME_MAX + 1]);
/* Appends a history entry for model. */
int qv__history_add(qv_store *s, MDB_txn *txn, const char *model, const char *action,
                    const char *from, const char *to);
/* The protection epoch (qv_store_protect_epoch) in txn, 0 if never set; and
 * advancing it, which every transaction that protects a version does. */
int qv__protect_epoch_get(qv_store *s, MDB_txn *txn, uint64_t *epoch);
int qv__protect_bump(qv_store *s, MDB_txn *txn);
/* Sets alias model/name to label (label "" deletes); records history when
 * name is "current", and advances the protection epoch when it sets one. */
int qv__alias_put(qv_store *s, MDB_txn *txn, const char *model, const char *name,
                  const char *label, const char *action);
/* Allocates the next sequence number of model (creates the model entry). */
int qv__model_next_seq(qv_store *s, MDB_txn *txn, const char *model, uint64_t *seq);

/* Manifest entries: refcounted blobs of manifest JSON keyed by digest. */
int qv__manifest_load(qv_store *s, MDB_txn *txn, const uint8_t digest[QV_DIGEST_LEN],
                      qv__arena *a, qv_file **files, size_t *n_files, int *single_file);

/* Begins a write transaction (retrying a full map is the caller's concern). */
int qv__txn_begin(qv_store *s, unsigned flags, MDB_txn **txn);
/* Ends txn: commits it if rc is 0, else aborts it. Returns the outcome. */
int qv__txn_end(qv_store *s, MDB_txn *txn, int rc);

/* ---- shard files ------------------------------------------------------------- */
/* Path of the shard file of d in buf (PATH_MAX). */
void qv__shard_path(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t n);
/* mkdir -p of the fan-out folders of d. */
int qv__shard_dir_make(const qv_store *s, const uint8_t d[QV_DIGEST_LEN]);
int qv__fsync_dir(const char *path);
int qv__fsync_parent(const char *path);
int qv__mkdir_p(const char *path, unsigned mode);
/* qv__mkdir_p that records the folders it made (as prefixes of path, which
 * must outlive made), and its undo: rmdir of exactly those, deepest first,
 * each only if empty. */
struct qv__made {
	const char *path;
	uint16_t len[PATH_MAX / 2]; /* a new folder takes 2 characters of path at least */
	unsigned n;
};
int qv__mkdir_p_new(const char *path, unsigned mode, struct qv__made *made);
void qv__made_undo(const struct qv__made *made);
/* Copies len bytes from in_fd@in_off to out_fd@out_off (copy_file_range with
 * a pread/pwrite fallback). */
int qv__copy_range(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t len);
/* pread/pwrite that loop over short transfers; -errno, or QV_EFORMAT on EOF. */
int qv__pread_full(int fd, void *buf, size_t len, uint64_t off);
int qv__pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Publisher / deleter lock (flock on root/lock). */
int qv__lock_shared(qv_store *s);
int qv__lock_exclusive(qv_store *s);
void qv__unlock(qv_store *s);
/* Removes temp files of crashed writers when no writer is running (called
 * under the exclusive lock). Returns the count removed or -errno. */
int64_t qv__tmp_sweep(qv_store *s);

/* ---- configuration (config.c) ------------------------------------------------ */
/* Reads root/config.ini into s (tiers, watermarks); no file: one hot tier at
 * root. */
int qv__config_load(qv_store *s, char *errbuf, size_t errlen);
void qv__config_free(qv_store *s);

/* Reads raw bytes [off, off + len) of shard d wherever its tier is. */
int qv__shard_read(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, uint64_t off, void *buf,
                   size_t len);

/* ---- time ------------------------------------------------------------------- */
int64_t qv__now_ns(void);
double qv__mono_s(void);

#endif
