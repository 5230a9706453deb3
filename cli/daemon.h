/* Internals of quiverd (cli/daemon.c, dram.c, metrics.c). */
#ifndef QV_DAEMON_H
#define QV_DAEMON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "quiver/quiver.h"

void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* DRAM tier (dram.c) */
void dram_init(uint64_t capacity);
int dram_warm(qv_store *s, const char *model, const char *ref, char *err, size_t errlen);
int dram_cool(qv_store *s, const char *model, const char *ref, char *err, size_t errlen);
/* The entry of digest d, held against eviction until dram_release(); NULL if
 * not warm. *bytes: the load's size (0 for an empty version, whose memfd
 * still holds a page). *fd (if fd) is its memfd, valid while held. */
const void *dram_acquire(const uint8_t d[QV_DIGEST_LEN], size_t *bytes, const qv_load **table,
                         int *fd);
void dram_release(const uint8_t d[QV_DIGEST_LEN]);
json_t *dram_json(void);
void dram_usage(uint64_t *capacity, uint64_t *used, uint64_t *entries);
void dram_shutdown(void);

/* Metrics (metrics.c): counters, and the Prometheus endpoint. */
enum metrics_source { SRC_DRAM, SRC_HOT, SRC_COLD, SRC_N };
void metrics_load(enum metrics_source src, uint64_t bytes, double seconds);
void metrics_bytes(enum metrics_source src, uint64_t bytes); /* bytes only, no load counted */
void metrics_swap(void);
void metrics_dram_lookup(int hit);
void metrics_dram_evict(void);
void metrics_migration(uint64_t shards);
void metrics_error(const char *op);
/* Serves /metrics on 127.0.0.1:port (0: off). */
int metrics_start(unsigned port, qv_store *s, char *err, size_t errlen);
void metrics_stop(void);

/* In main.c: runs one quiver command with the daemon's store. */
int cli_dispatch(int argc, char **argv);
void cli_set_shared_store(qv_store *s);
int cli_in_daemon(void);
/* In the daemon, commands hand follow-up work on a version to fn, which the
 * daemon does in the background: CLI_FOLLOW_PROMOTE, a version that
 * activate, rollback, publish, alias or pin protected has cold shards
 * (instead of promoting it in the command); CLI_FOLLOW_WARM, a version
 * activate or rollback made current (into the DRAM tier). */
enum cli_follow { CLI_FOLLOW_PROMOTE, CLI_FOLLOW_WARM };
void cli_set_follow_hook(void (*fn)(enum cli_follow what, const char *model, const char *ref));

int daemon_main(int argc, char **argv);

#endif
