/* Quiver gpu module: pinned host buffers and the sinks that move loaded bytes
 * to their destination (host memory, or CUDA device memory).
 *
 * A sink receives chunks that the read engine has placed in ring slots and
 * copies each to its destination offset. The host sink copies at once; the
 * CUDA sink queues cudaMemcpyAsync on several streams and records an event
 * per slot, so reading the next chunk and copying the last one overlap. A ring
 * slot may be refilled only when qv_sink_slot_wait() says its copy is done.
 *
 * No CUDA type appears here; CUDA is only in gpu/cuda.c. Built without
 * CUDA, the CUDA functions return -ENOTSUP. */
#ifndef QUIVER_GPU_H
#define QUIVER_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if this build has the CUDA sink. */
int qv_gpu_built_with_cuda(void);

/* Number of CUDA devices usable now: 0 when built without CUDA or when no
 * GPU or driver is present (*why, if not NULL, says why; static string). */
int qv_gpu_device_count(const char **why);

/* Host memory of bytes for reads to land in: aligned to 2 MiB and asking
 * for transparent huge pages (best effort), so an O_DIRECT read reaches the
 * disk as a few physically contiguous segments. With for_cuda, pinned for
 * DMA when CUDA is built in and a driver is present (mmap + cudaHostRegister:
 * pages that io_uring can also register as fixed buffers; faulted in at
 * once); otherwise faulted in as it is used, which costs no CUDA start-up.
 * Free with qv_pinned_free(). *pinned tells which it is. */
int qv_pinned_alloc(size_t bytes, int for_cuda, void **out, int *pinned);
#define QV_PINNED_ALIGN ((size_t)2 << 20) /* qv_pinned_alloc's alignment: a huge page */
void qv_pinned_free(void *p, size_t bytes, int pinned);

/* Pins memory the caller mapped (e.g. a shared memfd) for DMA: 0, or
 * -ENOTSUP without CUDA or a driver. Undo with qv_gpu_host_unregister(). */
int qv_gpu_host_register(void *p, size_t bytes);
void qv_gpu_host_unregister(void *p);

/* Creates device's CUDA context now (cudaSetDevice + cudaFree(0)), so its
 * start-up cost is not charged to the first copy. */
int qv_gpu_init(int device);

/* Device memory: cudaMalloc on device, and the copies tests need. */
int qv_gpu_alloc(int device, size_t bytes, void **dptr);
void qv_gpu_free(int device, void *dptr);
int qv_gpu_to_host(int device, void *host, const void *dptr, size_t bytes);
int qv_gpu_fill(int device, void *dptr, int byte, size_t bytes);
/* Free and total memory of device, in bytes. */
int qv_gpu_mem_info(int device, size_t *free_bytes, size_t *total_bytes);

/* The calling thread's current CUDA device (-1: none, or no CUDA), and
 * making it current again: a load to a device makes that device current on
 * the calling thread while it runs, and puts the caller's back at the end.
 * Every other function here leaves the caller's device as it found it. */
int qv_gpu_current_device(void);
void qv_gpu_restore_device(int device);

/* Device identity across processes: CUDA numbers the devices a process sees
 * (CUDA_VISIBLE_DEVICES), so an engine's cuda:1 may be another process's
 * cuda:0. The PCI bus id ("0000:65:00.0") names the GPU itself.
 * qv_gpu_pci_bus_id writes device's into buf (len >= 16 bytes): 0, -ENODEV,
 * or -ENOTSUP without CUDA. qv_gpu_device_by_pci sets *device to this
 * process's number for bus_id: 0; -EINVAL for a string that is not a PCI
 * bus id; -ENODEV if this process does not see that GPU; -ENOTSUP. */
int qv_gpu_pci_bus_id(int device, char *buf, size_t len);
int qv_gpu_device_by_pci(const char *bus_id, int *device);

/* CUDA IPC: opens another process's allocation (a cudaIpcMemHandle_t of
 * QV_GPU_IPC_HANDLE_BYTES bytes) on device; close with qv_gpu_ipc_close().
 * *bytes: how many bytes the allocation holds from *dptr on, as the driver
 * says (SIZE_MAX when it cannot tell), so that a client's word is not taken
 * for it. On failure *why (if not NULL) says why (a static string: CUDA's). */
#define QV_GPU_IPC_HANDLE_BYTES 64
int qv_gpu_ipc_open(int device, const void *handle, void **dptr, size_t *bytes,
                    const char **why);
void qv_gpu_ipc_close(int device, void *dptr);

/* Copies bytes from pinned host memory to device memory on n_streams
 * streams in chunks, and waits for the copies. */
int qv_gpu_copy_to_device(int device, void *dst, const void *src, size_t bytes,
                          unsigned n_streams);

typedef struct qv_sink qv_sink;

/* A sink writing into host memory dest[0, dest_bytes). */
int qv_sink_host_create(void *dest, uint64_t dest_bytes, unsigned n_slots, qv_sink **out);

/* A sink writing into device memory dest[0, dest_bytes) on device, with
 * n_streams CUDA streams (>= 1) and an event per each of n_slots ring slots. */
int qv_sink_cuda_create(int device, void *dest, uint64_t dest_bytes, unsigned n_slots,
                        unsigned n_streams, qv_sink **out);

/* Queues the copy of len bytes at src (inside ring slot `slot`) to dest_off.
 * Returns 0, -ERANGE if it would write past the destination, or a CUDA
 * failure as -EIO (the message is in qv_sink_errmsg()). */
int qv_sink_put(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off);

struct qv_codec_pairs;

/* Readies slots [first_slot, first_slot + n_slots) for qv_sink_put_pairs()
 * with frames of up to frame_bytes raw bytes (device memory for the planes).
 * Returns 0, -ENOTSUP where the sink cannot merge frames (host sinks,
 * builds without CUDA, a GPU the kernels were not built for), -EINVAL,
 * -ENODEV, or -ENOMEM / -EIO (the device). */
int qv_sink_pairs_reserve(qv_sink *k, unsigned first_slot, unsigned n_slots, size_t frame_bytes);

/* Queues a BF16 pairs frame taken apart (qv_codec_pairs_planes()) for the
 * sink to merge into dest_off and to check against xxh3, the frame's
 * checksum. The planes must stay untouched until the slot is free (their
 * host memory is copied asynchronously; pinned memory for speed). The
 * slot's qv_sink_slot_busy()/_wait() return QV_ECORRUPT when the frame
 * does not merge or its checksum differs. Returns 0, -ENOTSUP, -ERANGE,
 * -EINVAL (a slot not reserved, a frame larger than reserved or of 240
 * bytes or less), -ENODEV, or -EIO (message in qv_sink_errmsg()). After a
 * failure nothing queued reads the planes any more. */
int qv_sink_put_pairs(qv_sink *k, unsigned slot, const struct qv_codec_pairs *p, uint64_t xxh3,
                      uint64_t dest_off);

/* 1 if the copies out of slot are still running, 0 if the slot is free, <0 on error. */
int qv_sink_slot_busy(qv_sink *k, unsigned slot);
/* Waits until the copies out of slot are done. */
int qv_sink_slot_wait(qv_sink *k, unsigned slot);
/* Waits until every queued copy is done. */
int qv_sink_finish(qv_sink *k);
/* The destination of a host sink (where a read engine may put bytes
 * directly, skipping the copy), or NULL for other sinks. */
void *qv_sink_host_dest(const qv_sink *k, uint64_t *dest_bytes);

/* The description of the last call's failure ("" after a call that did not
 * fail): the call that returned an error is the one it describes. */
const char *qv_sink_errmsg(const qv_sink *k);
/* NULL is a no-op. Waits for queued copies first. */
void qv_sink_destroy(qv_sink *k);

#ifdef __cplusplus
}
#endif
#endif
