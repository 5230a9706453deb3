/* Internals of the stream module. */
#ifndef QV_STREAM_INT_H
#define QV_STREAM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/gpu.h"
#include "quiver/load.h"

#define QV_IO_ALIGN 4096u
/* A read engine reports O_DIRECT being refused on the first read with this. */
#define QV__EDIRECT (-2000)

/* One shard file to read whole into the arena at dest_off. */
struct qv__target {
	int tier;              /* QV_TIER_HOT: raw file; QV_TIER_COLD: codec frames */
	int fd;
	int fixed;             /* index in the registered file table, -1 if none */
	uint64_t size;
	uint64_t dest_off;
	uint64_t xxh3;         /* expected, for verify */
	char name[20];         /* short digest, for messages */
};

/* A read backend: io_uring or the pread pool. */
struct qv__backend {
	const char *name;
	/* buf is in ring slot `slot` (a registered buffer). */
	int (*submit)(struct qv__backend *b, unsigned slot, const struct qv__target *t, void *buf,
	              size_t len, uint64_t off);
	int (*flush)(struct qv__backend *b);
	/* Blocks for one completion: its slot and result (bytes or -errno). */
	int (*reap)(struct qv__backend *b, unsigned *slot, int64_t *res);
	void (*destroy)(struct qv__backend *b);
};

/* io_uring with qd entries, the ring's slots registered as fixed buffers and
 * the targets' files registered (t[i].fixed set) when the limit allows. */
int qv__uring_create(unsigned qd, void *ring, size_t chunk_bytes, struct qv__target *t, size_t n,
                     struct qv__backend **out, char *err, size_t errlen);
/* n_threads threads doing pread, up to qd jobs queued. */
int qv__pread_create(unsigned n_threads, unsigned qd, struct qv__backend **out);

struct qv__engine_cfg {
	unsigned qd;
	size_t chunk_bytes;
	int direct;            /* reads are O_DIRECT: lengths and offsets 4 KiB aligned */
	int verify;
	qv_progress_fn progress;
	void *progress_arg;
	uint64_t progress_after;  /* bytes the load delivers after the engine's (cold
	                             frames): progress counts against both */
};

struct qv__engine_stats {
	uint64_t bytes;
	uint64_t reads;        /* in: reads of this load's earlier attempts (the
	                          fault seam counts per load); out: with this run's */
	double first_done_s;   /* since the engine started */
};

/* Reads every target into the sink through the ring (qd slots of chunk_bytes).
 * Returns 0, QV_ECORRUPT, QV__EDIRECT, or -errno, with a message in err. */
int qv__engine_run(const struct qv__engine_cfg *cfg, struct qv__backend *be,
                   struct qv__target *t, size_t n, qv_sink *sink, char *ring,
                   struct qv__engine_stats *st, char *err, size_t errlen);

/* A thread that faults in a host destination ahead of the reads (prefault.c).
 * start never fails the load: *out stays NULL when nothing is to be done.
 * stop asks it to end and joins it. */
struct qv__prefault;
int qv__prefault_start(void *dest, size_t len, struct qv__prefault **out);
void qv__prefault_stop(struct qv__prefault *pf);
/* 1 if every whole page of [dest, dest + len) is resident (mincore). */
int qv__resident(void *dest, size_t len);
/* Faults in the whole pages of [dest, dest + len) on the calling thread, in
 * one MADV_POPULATE_WRITE (best effort: before Linux 5.14 the writes fault). */
void qv__populate(void *dest, size_t len);

/* The library's own host arena (host_pages.c). qv__host_arena: `bytes` of
 * anonymous memory on `pages` (SMALL or HUGE), freed with munmap(p, bytes);
 * NULL with errno. qv__host_pages_auto: what QV_HOST_PAGES_AUTO means for
 * an arena of `bytes` now: HUGE unless transparent huge pages are `never`,
 * a virtio balloon reports free pages to the hypervisor, or the kernel has
 * fewer free huge blocks than the arena and a quarter more. */
void *qv__host_arena(size_t bytes, enum qv_host_pages pages);
enum qv_host_pages qv__host_pages_auto(size_t bytes);
/* Its parts, reading the files under `sysfs` ("/sys") and a buddyinfo
 * file, for tests: 1 if a virtio balloon offers free page reporting; 1 if
 * transparent_hugepage/enabled says [never] (or is missing); the bytes in
 * free blocks of at least `huge` bytes (-1 if unreadable). */
int qv__free_page_reporting(const char *sysfs);
int qv__thp_never(const char *sysfs);
long long qv__free_huge_bytes(const char *buddyinfo, size_t huge, size_t page);

/* A cold shard for the decode path (cold.c). */
struct qv_codec_header;
struct qv__cold_target {
	int fd;                /* buffered: header, and the fallback for frames */
	int direct_fd;         /* O_DIRECT, -1 if refused */
	struct qv_codec_header *hdr;
	uint64_t dest_off;
	char name[20];
};

struct qv__cold_stats {
	uint64_t bytes;        /* raw bytes delivered */
	uint64_t frames;
	uint64_t buffered_frames; /* of frames: read through the page cache */
	uint64_t sink_merged_bytes; /* of bytes: frames the sink merged (qv_sink_put_pairs) */
	double first_done_s;   /* when target 0 was complete, 0 if not measured */
};

#define QV_COLD_THREADS_MAX QV_LOAD_DECODE_THREADS_MAX

/* Decodes every frame of the cold targets on n_threads workers into the
 * sink, n_readers frames read at once, using n_bufs pinned buffers of
 * buf_bytes (>= every target's frame_bytes) at bufs as sink slots
 * slot_base.. . Progress counts from done0 of total. */
int qv__cold_run(struct qv__cold_target *t, size_t n, unsigned n_threads, unsigned n_readers,
                 qv_sink *sink, unsigned slot_base, unsigned n_bufs, char *bufs, size_t buf_bytes,
                 struct qv__cold_stats *st, qv_progress_fn progress, void *progress_arg,
                 uint64_t done0, uint64_t total, char *err, size_t errlen);

/* The test hook (load.c): what to do with the read completion number k. */
enum qv_fault_kind qv__fault_check(uint64_t k);

double qv__stream_now(void);

#endif
