/* Internals of the gpu module: the sink's operations table, and the kernels
 * that merge BF16 pairs frames on the GPU (pairs.cu). */
#ifndef QV_GPU_INT_H
#define QV_GPU_INT_H

#include <stdint.h>

#include "quiver/gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

struct qv_codec_pairs;

struct qv_sink_ops {
	int (*put)(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off);
	int (*slot_busy)(qv_sink *k, unsigned slot);
	int (*slot_wait)(qv_sink *k, unsigned slot);
	/* NULL where the sink cannot merge pairs frames itself */
	int (*pairs_reserve)(qv_sink *k, unsigned first_slot, unsigned n_slots, size_t frame_bytes);
	int (*put_pairs)(qv_sink *k, unsigned slot, const struct qv_codec_pairs *p, uint64_t xxh3,
	                 uint64_t dest_off);
	int (*finish)(qv_sink *k);
	void (*destroy)(qv_sink *k);
};

struct qv_sink {
	const struct qv_sink_ops *ops;
	uint64_t dest_bytes;
	unsigned n_slots;
	void *host_dest;       /* host sinks only */
	char errmsg[256];
};

/* CUDA host registration of p (cuda.c); -ENOTSUP without CUDA or a driver. */
int qv__cuda_host_register(void *p, size_t bytes);
void qv__cuda_host_unregister(void *p);

/* Whether s has the shape of a PCI bus id, [domain:]bus:device.function in
 * hex: nothing else is passed to the driver (pinned.c). */
int qv__pci_bus_id_valid(const char *s);

/* ---- BF16 pairs frames merged on the GPU (pairs.cu) ---- */
#define QV__PAIRS_SEGMENTS_MAX 32u  /* merge blocks a frame of QV_CODEC_FRAME_MAX needs */
#define QV__XXH3_SECRET_BYTES 192u
#define QV__PAIRS_BAD_ESCAPES 1u    /* status bits */
#define QV__PAIRS_BAD_CHECKSUM 2u

/* One frame's work, passed by value to the kernels. */
struct qv__pairs_job {
	const unsigned char *codes, *sm, *esc; /* device copies of the planes */
	unsigned char *dst;                    /* device: 2 * values (+ 1 tail) bytes */
	unsigned int *counts;                  /* device: escapes per segment */
	unsigned int *status;                  /* device: QV__PAIRS_BAD_* bits, zeroed first */
	uint64_t values, escapes, xxh3;
	unsigned char table[16];
	unsigned char tail;
	int has_tail;
};

/* cudaSuccess if the kernels can run on the current device (built for its
 * architecture, or PTX it can compile), else a cudaError_t. */
int qv__cuda_pairs_usable(void);

/* Queues on stream (a cudaStream_t) the merge of job's planes into
 * job->dst and the check of its XXH3 against job->xxh3, with XXH3's
 * default secret (QV__XXH3_SECRET_BYTES). Frames of more than 240 bytes
 * only. Returns a cudaError_t. */
int qv__cuda_pairs_queue(const struct qv__pairs_job *job, const unsigned char *secret,
                         void *stream);

#ifdef __cplusplus
}
#endif

#endif
