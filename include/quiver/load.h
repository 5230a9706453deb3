/* Quiver loads: stream a version's tensors from the store into memory.
 *
 * This is what an inference engine links. qv_load_run() resolves MODEL@REF,
 * reads every shard with io_uring (O_DIRECT, registered buffers and files) or
 * a pool of pread threads, and delivers the bytes through a ring of pinned
 * host buffers into one destination arena: host memory, or CUDA device
 * memory. It returns a tensor table (name, dtype, shape, offset, pointer).
 *
 * Layout of the arena: each distinct shard of the version is placed at a
 * 4 KiB aligned offset; a tensor's bytes start at its shard's offset plus its
 * offset inside the shard (packed small tensors share one shard). Use
 * qv_load_size() to learn how many bytes the arena needs. */
#ifndef QUIVER_LOAD_H
#define QUIVER_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"
#include "quiver/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QV_DEVICE_CPU (-1)

enum qv_io_mode {
	QV_IO_AUTO = 0,      /* O_DIRECT io_uring unless the files (hot and cold) are cached */
	QV_IO_DIRECT = 1,    /* io_uring, O_DIRECT, fixed buffers and files; cold frames O_DIRECT */
	QV_IO_BUFFERED = 2,  /* the pread thread pool and cold frames through the page cache */
};

/* Pages of a host arena the library allocates (dest NULL, QV_DEVICE_CPU).
 * Fresh pages are faulted in and zeroed by the kernel: in 4 KiB pages about
 * 0.3-0.45 CPU-s per GiB, in 2 MiB transparent huge pages about 0.15-0.2,
 * except on a VM that reports free memory to its host (virtio-balloon free
 * page reporting), where a huge page's first touch faults on the host as
 * well (0.7-1.7 s per GiB measured). docs/LOADING.md, "Host arena pages". */
enum qv_host_pages {
	QV_HOST_PAGES_AUTO = 0,  /* huge, unless transparent huge pages are off
	                            (`never`), the machine reports free pages
	                            to a hypervisor, or the kernel has fewer free
	                            huge blocks than the arena and a quarter
	                            more (/proc/buddyinfo; it would compact or
	                            reclaim in the faults); then small */
	QV_HOST_PAGES_SMALL = 1, /* 4 KiB pages (MADV_NOHUGEPAGE) */
	QV_HOST_PAGES_HUGE = 2,  /* 2 MiB aligned, MADV_HUGEPAGE (best effort) */
};

#define QV_LOAD_QD_MAX 256u
#define QV_LOAD_CHUNK_MIN (64u << 10)
#define QV_LOAD_CHUNK_MAX (64u << 20)
#define QV_LOAD_DECODE_THREADS_MAX 16u
#define QV_LOAD_COLD_READS_MAX 64u

typedef struct qv_load_opts {
	int device;                /* QV_DEVICE_CPU, or a CUDA device index */
	enum qv_io_mode io;
	unsigned qd;               /* reads in flight; 0: default (4 for a GPU load's
	                              O_DIRECT reads of hot files on a rotational disk,
	                              else 16; the ring holds 16 slots then, for the
	                              page-cache retry if O_DIRECT is refused) */
	size_t chunk_bytes;        /* bytes per read, multiple of 4096; 0: default */
	int verify;                /* check every shard's XXH3 on the fly: QV_ECORRUPT */
	unsigned cuda_streams;     /* copy streams of the CUDA sink; 0: default (4) */
	unsigned decode_threads;   /* workers for cold frames; 0: default (cores); at most 16 */
	qv_progress_fn progress;   /* called on the calling thread */
	void *progress_arg;
	unsigned cold_reads;       /* cold frames read at once; 0: default (2 when the cold
	                              files are on a rotational disk, else 16); at most 64 */
	enum qv_host_pages host_pages; /* pages of a library-allocated host arena */
} qv_load_opts;

typedef struct qv_load_tensor {
	const char *name;
	const char *file;          /* the safetensors file it came from */
	char dtype[12];
	uint32_t ndim;
	int64_t shape[QV_MAX_DIMS];
	uint64_t bytes;
	uint64_t offset;           /* in the arena */
	void *ptr;                 /* arena + offset (a device pointer for CUDA loads) */
} qv_load_tensor;

typedef struct qv_load_stats {
	uint64_t bytes;            /* shard bytes delivered */
	uint64_t arena_bytes;
	uint64_t tensors;
	uint64_t reads;            /* hot read requests completed (those of a refused
	                              O_DIRECT attempt too) */
	uint64_t cold_bytes;       /* of bytes: decoded from the cold tier */
	unsigned decode_threads;   /* workers that decoded cold frames (0: none needed) */
	double seconds;            /* wall time of the load, everything included */
	double device_init_seconds;/* of which: starting the CUDA driver and context (0 for cpu) */
	double first_tensor_seconds; /* from the start, as seconds, until the first tensor was
	                                complete at its destination */
	enum qv_io_mode io;        /* what was used: QV_IO_DIRECT or QV_IO_BUFFERED */
	const char *engine;        /* "io_uring", "pread", or "none" (every shard was cold) */
	unsigned qd;
	size_t chunk_bytes;
	int device;
	enum qv_io_mode cold_io;   /* how cold frames were read: QV_IO_BUFFERED if any went
	                              through the page cache (files cached under QV_IO_AUTO, or
	                              O_DIRECT refused), else QV_IO_DIRECT; 0 with no cold frames */
	unsigned cold_reads;       /* cold frames that were read at once (0: none needed) */
	enum qv_host_pages host_pages; /* what the library's host arena asked for: SMALL or
	                                  HUGE; AUTO (0) when the library allocated none */
	uint64_t cold_gpu_bytes;   /* of cold_bytes: BF16 frames whose planes were merged and
	                              checked on the GPU, not the CPU (loads to a GPU) */
} qv_load_stats;

typedef struct qv_load qv_load;

/* Bytes of arena that model@ref needs. */
int qv_load_size(qv_store *s, const char *model, const char *ref, uint64_t *bytes);

/* Loads model@ref. dest/dest_bytes: the caller's arena (host memory for
 * QV_DEVICE_CPU, device memory of opts->device otherwise), or NULL/0 to let
 * the library allocate one (freed by qv_load_destroy()). On success *out owns
 * the tensor table; the caller's arena stays the caller's. Errors: those of
 * qv_version_get(), QV_ECORRUPT (a shard shorter than the index says, missing,
 * or failing --verify), QV_ELIMIT (dest too small), -ENOMEM (no room on the
 * device), -EIO, -ENODEV, -ENOTSUP (CUDA requested in a build without it). A
 * failed load reports no tensors; the destination may hold partial data. */
int qv_load_run(qv_store *s, const char *model, const char *ref, void *dest, uint64_t dest_bytes,
                const qv_load_opts *opts, qv_load **out);

/* The tensor table, in manifest order; valid until qv_load_destroy(). */
const qv_load_tensor *qv_load_tensors(const qv_load *l, size_t *n);
const qv_load_stats *qv_load_get_stats(const qv_load *l);
/* The arena (device pointer for CUDA loads). */
void *qv_load_arena(const qv_load *l);

/* Frees the table and, if the library allocated it, the arena. NULL: no-op. */
void qv_load_destroy(qv_load *l);

/* ---- test seams ------------------------------------------------------------- */
enum qv_fault_kind { QV_FAULT_NONE = 0, QV_FAULT_EIO = 1, QV_FAULT_SHORT = 2, QV_FAULT_EINVAL = 3 };
/* Makes the k-th read completion (1-based, counted per load) of the loads
 * that follow fail with EIO, come back short, or fail with EINVAL (what a
 * file system that refuses an O_DIRECT read says). k = 0 turns it off.
 * Process-wide; for tests only. */
void qv_load_fault_set(uint64_t k, enum qv_fault_kind kind);

#ifdef __cplusplus
}
#endif
#endif
