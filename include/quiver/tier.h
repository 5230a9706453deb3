/* Quiver tiering: moving shards between the hot (NVMe) and cold (HDD,
 * compressed) tiers, by hand and by the placement policy.
 *
 * Every migration of a shard writes the new copy into the target tier's temp
 * folder, fsyncs it, renames it into place (fsyncing the folder), commits one
 * LMDB transaction that moves the shard's location, and only then unlinks the
 * old copy. Two shards are in flight at a time (one copied while the one
 * before is made durable), so a crash leaves at worst an extra copy or a
 * temp file for each of two shards, which gc removes. A loader that opened
 * the old copy finishes through its open file.
 *
 * The policy keeps hot every version that is current, carries an alias or is
 * pinned. When hot usage passes the high watermark it demotes the least
 * recently loaded other versions until usage is under the low watermark. A
 * shard that a version staying hot also uses stays hot. */
#ifndef QUIVER_TIER_H
#define QUIVER_TIER_H

#include <stdint.h>

#include "quiver/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Lets export and verify read shards on the cold tier (installs the cold
 * reader on s). Call once after qv_store_open(). */
void qv_tier_attach(qv_store *s);

typedef struct qv_migrate_result {
	uint64_t shards;         /* shards moved */
	uint64_t raw_bytes;      /* their raw bytes */
	uint64_t stored_bytes;   /* their bytes on the target tier */
	uint64_t kept;           /* shards left in place: shared with a version staying hot */
	double seconds;
} qv_migrate_result;

/* Moves every shard of model@ref to the cold tier, except shards that a
 * version staying hot (current, aliased, pinned, or entirely hot and not
 * being demoted) also uses. -ENOTSUP if the store has no cold tier.
 * progress (may be NULL): raw bytes moved of the shards to move, as each
 * frame is done. */
int qv_tier_demote(qv_store *s, const char *model, const char *ref, qv_migrate_result *res,
                   qv_progress_fn progress, void *progress_arg);

/* Moves every shard of model@ref to the hot tier (checking each frame's
 * checksum and the shard's SHA-256 on the way). progress as for demote. */
int qv_tier_promote(qv_store *s, const char *model, const char *ref, qv_migrate_result *res,
                    qv_progress_fn progress, void *progress_arg);

typedef struct qv_policy_result {
	uint64_t hot_before, hot_after;   /* bytes on the hot tier */
	uint64_t versions;                /* versions demoted */
	qv_migrate_result moved;
} qv_policy_result;

/* Runs the placement policy once (see above). Does nothing without a cold
 * tier or a hot capacity. progress (may be NULL): raw bytes moved of the
 * bytes the hot tier must shed to reach the low watermark. */
int qv_tier_apply(qv_store *s, qv_policy_result *res, qv_progress_fn progress,
                  void *progress_arg);

typedef struct qv_tier_usage {
	const char *dir;         /* NULL: the tier does not exist */
	uint64_t capacity;       /* 0: unlimited */
	uint64_t used_bytes;     /* stored bytes of its shards */
	uint64_t raw_bytes;      /* raw bytes of its shards */
	uint64_t shards;
	uint64_t versions;       /* versions entirely on it */
} qv_tier_usage;

typedef struct qv_tier_status {
	qv_tier_usage tier[QV_TIERS];
	uint64_t mixed_versions;          /* versions with shards on both tiers */
	uint64_t saved_by_compression;    /* raw - stored bytes of cold shards */
	uint64_t saved_by_dedup;          /* bytes the versions reference beyond what is stored */
	double high, low;
} qv_tier_status;

int qv_tier_status_get(qv_store *s, qv_tier_status *out);

/* Where model@ref's shards are: QV_TIER_HOT, QV_TIER_COLD, or -1 if mixed. */
int qv_tier_of_version(qv_store *s, const qv_version *v_with_manifest, int *tier);

#ifdef __cplusplus
}
#endif
#endif
