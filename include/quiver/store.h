/* Quiver store: content-addressed shards of model weights, indexed in LMDB.
 *
 * A store lives in one root folder. Models hold versions; a version is an
 * immutable manifest (files, safetensors headers, tensor -> shard extents)
 * named by the SHA-256 of the manifest. Aliases name versions; the alias
 * "current" is the serving version. Every change a user can see is one LMDB
 * write transaction; shard bytes are durable on disk before any index entry
 * points at them (docs/STORE.md: invariants).
 *
 * Threads: reads and loads may share one handle across threads; calls that
 * change the store on one handle should be serialized by the caller (the
 * writers' lock is per process, not per thread). A process opens a root once
 * (an LMDB rule). Any number of processes may open the same root at once:
 * readers never block, writers serialize.
 *
 * Errors: every int-returning function returns 0 or a negative code (see
 * quiver/error.h). After a failure, qv_store_errmsg() gives a one-line
 * description with context (file, tensor, name...). A failed call leaves the
 * store as it was. */
#ifndef QUIVER_STORE_H
#define QUIVER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QV_NAME_MAX 128   /* bytes in a model name, version label or alias */
#define QV_MAX_DIMS 16    /* dimensions of one tensor */
#define QV_DIGEST_LEN 32  /* SHA-256 */
#define QV_HEX_LEN 64

typedef struct qv_store qv_store;

/* The root used where none is given: $QUIVER_ROOT if set and not empty,
 * else $HOME/.local/share/quiver. Writes it into buf (len bytes) and returns
 * 0, -ENOENT when neither variable is set, or -ENAMETOOLONG. */
int qv_store_default_root(char *buf, size_t len);

/* Opens (creating it on first use) the store at root. root == NULL picks
 * qv_store_default_root(). On success *out owns the handle;
 * release it with qv_store_close(). On failure *out is NULL and, when the
 * failure is not an allocation failure, a message is printed into errbuf
 * (may be NULL) of errlen bytes. */
int qv_store_open(const char *root, qv_store **out, char *errbuf, size_t errlen);

/* Closes the handle. NULL is a no-op. Every object obtained from s must have
 * been freed before. */
void qv_store_close(qv_store *s);

/* The root folder of s. Valid until qv_store_close(s). */
const char *qv_store_root(const qv_store *s);

/* The message of the calling thread's last failed call ("" if none). Valid
 * until that thread's next call. */
const char *qv_store_errmsg(const qv_store *s);

/* Records msg (printf format) as the message of the failing call on s and
 * returns err: for modules layered on the store (stream, tiering) that report
 * their errors through the same handle. */
int qv_store_fail(qv_store *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Called when a call on s finds a lock held by another process (a writer,
 * `init`, a migration) and is about to wait for it; what names the lock.
 * Called from the waiting thread, before it blocks; the call then goes on
 * once the lock is free. */
typedef void (*qv_wait_fn)(void *arg, const char *what);

/* Sets the function told of waits on s (NULL, the default: wait silently).
 * s == NULL sets it for the handles this process opens from then on
 * (qv_store_init's own handle included). */
void qv_store_set_wait_notice(qv_store *s, qv_wait_fn fn, void *arg);

/* Takes fd's flock (LOCK_SH or LOCK_EX), waiting for it: first without
 * blocking, and if another process holds it, tells s's wait notice (what:
 * the lock's name) and then blocks. 0, or a negative errno (not reported on
 * s). For modules layered on the store that keep locks of their own. */
int qv_store_flock(qv_store *s, int fd, int how, const char *what);

/* Progress of a long operation: done of total bytes. Called from the calling
 * thread only. */
typedef void (*qv_progress_fn)(void *arg, uint64_t done_bytes, uint64_t total_bytes);

/* ---- Reading: models, versions, manifests ---------------------------- */

typedef struct qv_tensor {
	const char *name;
	char dtype[12];          /* safetensors dtype name: "BF16", "F32", ... */
	uint32_t ndim;
	int64_t shape[QV_MAX_DIMS];
	uint64_t bytes;
	uint64_t data_offset;    /* offset in the file's data section */
	uint8_t shard[QV_DIGEST_LEN];
	uint64_t shard_offset;   /* where the bytes start in the shard; 4 KiB aligned */
} qv_tensor;

typedef struct qv_file {
	const char *name;        /* path relative to the published directory */
	uint64_t size;
	int safetensors;         /* 1: header + tensors below; 0: one blob shard */
	uint8_t blob[QV_DIGEST_LEN];
	uint64_t header_len;     /* safetensors: the verbatim JSON header */
	const char *header;
	size_t n_tensors;        /* in data-offset order */
	const qv_tensor *tensors;
} qv_file;

typedef struct qv_version {
	const char *model;
	const char *label;
	uint8_t digest[QV_DIGEST_LEN];  /* the manifest's SHA-256 */
	int64_t created_ns;             /* CLOCK_REALTIME */
	uint64_t bytes;                 /* total bytes of the published files */
	uint64_t n_tensors;
	const char *message;            /* "" if none */
	const char *parent;             /* label current when it was published, "" if none */
	int is_current;
	size_t n_aliases;               /* every alias naming it, "current" included */
	const char *const *aliases;
	int single_file;                /* published from one .safetensors file */
	int pinned;                     /* kept on the hot tier by the policy */
	int64_t last_load_ns;           /* 0: never loaded */
	size_t n_files;                 /* 0 unless the manifest was asked for */
	const qv_file *files;
} qv_version;

/* Flags for qv_version_get(). */
#define QV_WITH_MANIFEST 1u

/* Resolves model@ref (ref: a label, an alias, or a unique digest prefix of at
 * least 4 hex digits, optionally "sha256:"-prefixed; NULL means "current")
 * and returns the version in *out, owned by the caller: release it with
 * qv_version_free(). Errors: QV_ENOTFOUND, QV_EAMBIGUOUS, QV_ENAME. */
int qv_version_get(qv_store *s, const char *model, const char *ref, unsigned flags,
                   qv_version **out);
void qv_version_free(qv_version *v);

typedef struct qv_version_list {
	size_t n;
	qv_version *v;           /* oldest first; without manifests */
} qv_version_list;

/* Every version of model. Release with qv_version_list_free(). */
int qv_version_list_get(qv_store *s, const char *model, qv_version_list **out);
void qv_version_list_free(qv_version_list *l);

typedef struct qv_model {
	const char *name;
	size_t n_versions;
	const char *current;     /* label, "" if none */
	uint64_t bytes;          /* sum of its versions' logical bytes */
} qv_model;

typedef struct qv_model_list {
	size_t n;
	qv_model *m;             /* sorted by name */
} qv_model_list;

int qv_model_list_get(qv_store *s, qv_model_list **out);
void qv_model_list_free(qv_model_list *l);

typedef struct qv_history_entry {
	int64_t time_ns;
	const char *action;      /* "publish", "activate", "rollback", "alias", "rm" */
	const char *from;        /* previous current label, "" if none */
	const char *to;          /* new current label, "" if none */
} qv_history_entry;

typedef struct qv_history {
	size_t n;
	qv_history_entry *e;     /* oldest first */
} qv_history;

int qv_history_get(qv_store *s, const char *model, qv_history **out);
void qv_history_free(qv_history *h);

/* ---- Publishing -------------------------------------------------------- */

typedef struct qv_publish_opts {
	const char *label;                 /* NULL: "vN", N counting the model's publishes */
	const char *const *aliases;        /* extra aliases to point at it */
	size_t n_aliases;
	int no_activate;                   /* 1: leave "current" alone */
	const char *message;               /* NULL or free text (<= 4096 bytes) */
	qv_progress_fn progress;
	void *progress_arg;
} qv_publish_opts;

typedef struct qv_publish_result {
	char label[QV_NAME_MAX + 1];
	uint8_t digest[QV_DIGEST_LEN];
	uint64_t files;
	uint64_t tensors;
	uint64_t bytes;          /* logical bytes of the published files */
	uint64_t shards;         /* distinct shards the version references */
	uint64_t new_shards;     /* shards this call added to the store */
	uint64_t new_bytes;      /* bytes of those shards: what dedup did not save */
	double seconds;
} qv_publish_result;

/* Publishes path (a .safetensors file or a Hugging Face style directory) as a
 * new version of model. The input is validated completely before any byte is
 * written; on any failure (bad input, label taken, ENOSPC, ...) the store is
 * left as it was. opts may be NULL. res may be NULL. */
int qv_publish(qv_store *s, const char *model, const char *path,
               const qv_publish_opts *opts, qv_publish_result *res);

/* ---- Switching ---------------------------------------------------------- */

typedef struct qv_switch_result {
	char from[QV_NAME_MAX + 1];  /* "" if there was no current version */
	char to[QV_NAME_MAX + 1];
} qv_switch_result;

/* Makes model@ref current. One transaction, recorded in history. */
int qv_activate(qv_store *s, const char *model, const char *ref, qv_switch_result *res);

/* Makes model@to current; to == NULL picks the version that was current
 * before the present one (from history), so two rollbacks in a row return to
 * where they started. QV_ENOTFOUND if there is none. */
int qv_rollback(qv_store *s, const char *model, const char *to, qv_switch_result *res);

/* Points alias name of model at ref (name "current" is qv_activate()). */
int qv_alias_set(qv_store *s, const char *model, const char *name, const char *ref);
/* Removes an alias. QV_ENOTFOUND if it does not exist. */
int qv_alias_rm(qv_store *s, const char *model, const char *name);

/* Pins (pinned = 1) or unpins model@ref: pinned versions stay hot. */
int qv_version_pin(qv_store *s, const char *model, const char *ref, int pinned);
/* Records that model@label was loaded now (the policy demotes the least
 * recently loaded versions first). */
int qv_version_touch(qv_store *s, const char *model, const char *label);

/* ---- Removing and collecting ------------------------------------------- */

typedef struct qv_free_result {
	uint64_t versions;       /* versions removed */
	uint64_t shards;         /* shard files freed */
	uint64_t bytes;          /* their bytes */
	uint64_t temp_files;     /* leftover temp files removed (gc) */
	uint64_t index_fixes;    /* stale index entries dropped (gc) */
} qv_free_result;

/* Removes model@ref. Refuses (QV_EINUSE) a version that is current or carries
 * an alias unless force, which also drops those aliases. Shards no other
 * version uses are freed after the transaction commits. */
int qv_version_rm(qv_store *s, const char *model, const char *ref, int force,
                  qv_free_result *res);

/* Frees what no version references: unreferenced shard files, shard and
 * manifest entries, temp files left by crashed writers. Waits for running
 * publishers to finish. dry_run: count only. */
int qv_gc(qv_store *s, int dry_run, qv_free_result *res);

/* ---- Export and verify ---------------------------------------------------- */

/* Rebuilds the published file or directory of model@ref in outdir (created if
 * missing), byte for byte. Files are written to a temporary name and renamed.
 * Every shard's digest is checked while it is copied: QV_ECORRUPT if one does
 * not match. */
int qv_export(qv_store *s, const char *model, const char *ref, const char *outdir,
              qv_progress_fn progress, void *progress_arg);

typedef struct qv_damage {
	uint8_t shard[QV_DIGEST_LEN];
	const char *reason;          /* "missing", "size mismatch", "digest mismatch", ... */
	size_t n_versions;
	const char *const *versions; /* "model@label" of every version it breaks */
} qv_damage;

typedef struct qv_verify_report {
	uint64_t versions;
	uint64_t shards;
	uint64_t bytes;
	size_t n_damaged;
	qv_damage *damaged;
} qv_verify_report;

/* Recomputes the digest of every shard of model@ref (model == NULL: of every
 * version in the store). Returns 0 with the report in *out even when damage is
 * found (out->n_damaged > 0); a negative code only when the check itself could
 * not run. Release with qv_verify_report_free(). */
int qv_verify(qv_store *s, const char *model, const char *ref, qv_verify_report **out,
              qv_progress_fn progress, void *progress_arg);
void qv_verify_report_free(qv_verify_report *r);

/* ---- Tiers -------------------------------------------------------------------- */

enum { QV_TIER_HOT = 0, QV_TIER_COLD = 1, QV_TIERS = 2 };
enum { QV_CODEC_RAW = 0, QV_CODEC_FRAMES = 1 };

typedef struct qv_store_config {
	const char *hot_dir;     /* shards and temp files of the hot tier (default: root) */
	const char *cold_dir;    /* the cold tier, NULL if none */
	uint64_t hot_capacity;   /* bytes; 0: unlimited */
	double high, low;        /* watermarks, fractions of hot_capacity */
} qv_store_config;

/* Writes root/config.ini (creating root): the tier folders and the policy.
 * Refuses to move a tier of a store that already holds shards there.
 * Errors go to errbuf. */
int qv_store_init(const char *root, const qv_store_config *cfg, char *errbuf, size_t errlen);

/* The configuration of s; strings valid until qv_store_close(s). */
void qv_store_config_get(const qv_store *s, qv_store_config *out);

/* The temp folder of tier (on that tier's file system), NULL if no such tier. */
const char *qv_store_tmp_dir(const qv_store *s, int tier);

/* Takes / releases the writers' lock (shared among writers, exclusive
 * against rm and gc): hold it from writing a shard file until the
 * transaction that references it has committed. */
int qv_store_writer_lock(qv_store *s);
void qv_store_writer_unlock(qv_store *s);

/* Reads raw bytes of a shard kept on a tier other than hot (decoding it);
 * installed by the tiering module so that export and verify can read every
 * tier. Returns 0, QV_ECORRUPT (damaged frame) or -errno. */
typedef int (*qv_tier_read_fn)(void *arg, qv_store *s, const uint8_t d[32], int tier,
                               uint64_t off, void *buf, size_t len);
void qv_store_set_tier_reader(qv_store *s, qv_tier_read_fn fn, void *arg);

/* ---- Shards ------------------------------------------------------------------- */

typedef struct qv_shard_info {
	uint64_t size;           /* raw bytes */
	uint64_t stored_size;    /* bytes on its tier */
	uint64_t xxh3;           /* XXH3-64 of the raw bytes (the fast check of loads) */
	int tier;                /* QV_TIER_HOT or QV_TIER_COLD */
	int codec;               /* QV_CODEC_RAW or QV_CODEC_FRAMES */
	int64_t last_use_ns;
} qv_shard_info;

/* Calls fn for every shard in the index (in one read snapshot); a non-zero
 * return stops the walk and is returned. */
typedef int (*qv_shard_visit_fn)(void *arg, const uint8_t d[QV_DIGEST_LEN],
                                 const qv_shard_info *info);
int qv_shard_foreach(qv_store *s, qv_shard_visit_fn fn, void *arg);

/* Path of shard d's file on tier (whether or not it is there). */
int qv_shard_path_tier(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, char *buf,
                       size_t len);

/* The protection epoch: a counter that every transaction which protects a
 * version (sets an alias, "current" included, or pins one) advances. A
 * migration that decided which shards must stay hot at epoch E moves a shard
 * only if the epoch is still E when it commits (qv_shard_relocate). */
#define QV_EPOCH_ANY UINT64_MAX
int qv_store_protect_epoch(qv_store *s, uint64_t *epoch);

/* Moves shard d's location in the index from tier `from` to tier `to`, with
 * its stored size and codec there, in one transaction. The new file must be
 * durable in place before; the old one may be unlinked after. QV_ECHANGED if
 * the index no longer has it on `from`, or if epoch is not QV_EPOCH_ANY and
 * the protection epoch has moved past it; QV_ENOTFOUND if no version uses it. */
int qv_shard_relocate(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int from, int to,
                      uint64_t epoch, uint64_t stored_size, int codec);

/* Looks up shard d in the index. QV_ENOTFOUND if the index does not know it. */
int qv_shard_info_get(qv_store *s, const uint8_t d[QV_DIGEST_LEN], qv_shard_info *out);

/* For a reader that found shard d's file on tier damaged: why, if the file's
 * size (file_size) is not the one the index records ("truncated (shorter
 * than the index says)", "size mismatch (longer than the index says)"); NULL
 * if it is, or the index puts d elsewhere. A static string. */
const char *qv_shard_size_why(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier,
                              uint64_t file_size);

/* Writes the path of shard d's file on the hot tier into buf (len bytes;
 * PATH_MAX is always enough). Returns 0 or -ENAMETOOLONG. */
int qv_shard_path(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t len);

/* ---- Names and digests ------------------------------------------------- */

/* 0 if name is a valid model name (path-like "org/name"), else QV_ENAME. */
int qv_name_check_model(const char *name);
/* 0 if name is a valid version label or alias name, else QV_ENAME. */
int qv_name_check_label(const char *name);

/* Writes the 64 lowercase hex digits of d and a NUL into hex[65]. */
void qv_digest_hex(const uint8_t d[QV_DIGEST_LEN], char hex[QV_HEX_LEN + 1]);

#ifdef __cplusplus
}
#endif
#endif
