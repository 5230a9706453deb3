/* Internals of the tiering module. */
#ifndef QV_TIER_INT_H
#define QV_TIER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "quiver/store.h"
#include "quiver/tier.h"

/* A sorted list of distinct shard digests (and, for a version's own list,
 * the codec dtype class of each). */
struct qv__dlist {
	uint8_t (*d)[QV_DIGEST_LEN];
	int *dtype;
	size_t n;
};

int qv__version_shards(const qv_version *v_with_manifest, struct qv__dlist *out);
int qv__dlist_has(const struct qv__dlist *l, const uint8_t d[QV_DIGEST_LEN]);
void qv__dlist_free(struct qv__dlist *l);
/* Shards that must stay hot if the versions named in leaving ("model@label",
 * NULL-terminated) go cold. */
int qv__hot_keep_set(qv_store *s, const char *const *leaving, struct qv__dlist *keep);
double qv__tier_now(void);
/* pwrite until all len bytes are written (EINTR retried; a write of 0 bytes
 * is -EIO). Returns 0 or -errno. */
int qv__tier_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
/* qv_tier_demote() for the placement policy: leaves model@label alone if it
 * is protected (current, aliased, pinned) once the migration lock is held,
 * or becomes protected during the move. */
/* A migration's progress: fn is told base + the raw bytes moved since, of
 * total (own_total: the migration counts it, and counts again when it decides
 * again), never less than it told before (reported). */
struct qv__tier_progress {
	qv_progress_fn fn;
	void *arg;
	uint64_t base, total, reported;
	int own_total;
};
int qv__tier_demote_policy(qv_store *s, const char *model, const char *label,
                           qv_migrate_result *res, struct qv__tier_progress *pg);

#endif
