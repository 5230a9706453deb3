/* Everything CUDA: device queries, device memory, host registration and the
 * CUDA sink. With pairs.cu (the kernels) the only file of the project that
 * includes a CUDA header.
 *
 * The CUDA sink spreads chunks over several streams (slot i on stream i mod
 * n) so several host-to-device copies are in flight while the disk fills
 * other ring slots; an event recorded after each copy tells when its slot may
 * be reused. Every CUDA call is checked; failures become -EIO with the CUDA
 * error text in the sink's message. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h> /* the driver API's types, for cuMemGetAddressRange */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdint.h>

#define XXH_INLINE_ALL /* XXH3's default secret, for the device's check */
#include <xxhash.h>

#include "gpu_int.h"
#include "quiver/codec.h"
#include "quiver/error.h"

_Static_assert(sizeof(XXH3_kSecret) == QV__XXH3_SECRET_BYTES, "XXH3's default secret");

int qv_gpu_built_with_cuda(void) { return 1; }

int qv_gpu_device_count(const char **why)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		if (why)
			*why = cudaGetErrorString(e);
		cudaGetLastError(); /* clear the sticky state of a failed init */
		return 0;
	}
	if (n == 0 && why)
		*why = "no CUDA device found";
	return n;
}

int qv_gpu_pci_bus_id(int device, char *buf, size_t len)
{
	if (len < 16 || len > INT32_MAX)
		return -EINVAL;
	if (cudaDeviceGetPCIBusId(buf, (int)len, device) != cudaSuccess) {
		cudaGetLastError();
		return -ENODEV;
	}
	return 0;
}

int qv_gpu_device_by_pci(const char *bus_id, int *device)
{
	if (!qv__pci_bus_id_valid(bus_id))
		return -EINVAL;
	if (cudaDeviceGetByPCIBusId(device, bus_id) != cudaSuccess) {
		cudaGetLastError();
		return -ENODEV;
	}
	return 0;
}

int qv__cuda_host_register(void *p, size_t bytes)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
		cudaGetLastError();
		return -ENOTSUP;
	}
	if (cudaHostRegister(p, bytes, cudaHostRegisterDefault) != cudaSuccess) {
		cudaGetLastError();
		return -EIO;
	}
	return 0;
}

void qv__cuda_host_unregister(void *p)
{
	cudaHostUnregister(p);
}

/* CUDA keeps a current device per thread, and the caller (torch, an engine)
 * has its own: a function that works on `device` enters it, saving the
 * caller's, and leaves it, putting that back. */
static int dev_enter(int device, int *prev)
{
	if (cudaGetDevice(prev) != cudaSuccess) {
		cudaGetLastError();
		*prev = -1;
	}
	if (cudaSetDevice(device) != cudaSuccess) {
		cudaGetLastError();
		return -ENODEV;
	}
	return 0;
}

static void dev_leave(int prev)
{
	if (prev >= 0 && cudaSetDevice(prev) != cudaSuccess)
		cudaGetLastError();
}

/* A failed call's error, cleared so that the caller's next CUDA call (torch's
 * launch check) does not report it as its own; the errno for it. */
static int cuda_errno(cudaError_t e)
{
	cudaGetLastError();
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

int qv_gpu_current_device(void)
{
	int d;
	if (cudaGetDevice(&d) != cudaSuccess) {
		cudaGetLastError();
		return -1;
	}
	return d;
}

void qv_gpu_restore_device(int device)
{
	dev_leave(device);
}

int qv_gpu_init(int device)
{
	if (cudaSetDevice(device) != cudaSuccess || cudaFree(0) != cudaSuccess) {
		cudaGetLastError();
		return -ENODEV;
	}
	return 0;
}

int qv_gpu_alloc(int device, size_t bytes, void **dptr)
{
	int prev, rc;
	*dptr = NULL;
	if ((rc = dev_enter(device, &prev)) == 0) {
		cudaError_t e = cudaMalloc(dptr, bytes);
		if (e != cudaSuccess) {
			*dptr = NULL;
			rc = cuda_errno(e);
		}
	}
	dev_leave(prev);
	return rc;
}

void qv_gpu_free(int device, void *dptr)
{
	int prev;
	if (!dptr)
		return;
	if (dev_enter(device, &prev) == 0 && cudaFree(dptr) != cudaSuccess)
		cudaGetLastError();
	dev_leave(prev);
}

int qv_gpu_to_host(int device, void *host, const void *dptr, size_t bytes)
{
	int prev, rc = dev_enter(device, &prev);
	cudaError_t e;
	if (rc == 0 && (e = cudaMemcpy(host, dptr, bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
		rc = cuda_errno(e);
	dev_leave(prev);
	return rc;
}

int qv_gpu_fill(int device, void *dptr, int byte, size_t bytes)
{
	int prev, rc = dev_enter(device, &prev);
	cudaError_t e;
	if (rc == 0 && ((e = cudaMemset(dptr, byte, bytes)) != cudaSuccess ||
	                (e = cudaDeviceSynchronize()) != cudaSuccess))
		rc = cuda_errno(e);
	dev_leave(prev);
	return rc;
}

int qv_gpu_mem_info(int device, size_t *free_bytes, size_t *total_bytes)
{
	int prev, rc = dev_enter(device, &prev);
	cudaError_t e;
	if (rc == 0 && (e = cudaMemGetInfo(free_bytes, total_bytes)) != cudaSuccess)
		rc = cuda_errno(e);
	dev_leave(prev);
	return rc;
}

/* cuMemGetAddressRange from the driver, found through the runtime (no link
 * to libcuda); NULL where the driver does not give it. */
typedef CUresult (*range_fn)(CUdeviceptr *base, size_t *size, CUdeviceptr p);
static range_fn g_range;
static pthread_once_t g_range_once = PTHREAD_ONCE_INIT;

static void find_range(void)
{
	enum cudaDriverEntryPointQueryResult q;
	void *fn = NULL;
	if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault,
	                                     &q) == cudaSuccess &&
	    q == cudaDriverEntryPointSuccess)
		g_range = (range_fn)fn;
	cudaGetLastError();
}

/* Bytes of the allocation that holds p, from p on; SIZE_MAX if unknown. */
static size_t bytes_from(void *p)
{
	CUdeviceptr base = 0, at = (CUdeviceptr)(uintptr_t)p;
	size_t size = 0;
	pthread_once(&g_range_once, find_range);
	if (!g_range || g_range(&base, &size, at) != CUDA_SUCCESS || at < base || at - base > size)
		return SIZE_MAX;
	return size - (size_t)(at - base);
}

int qv_gpu_ipc_open(int device, const void *handle, void **dptr, size_t *bytes,
                    const char **why)
{
	cudaIpcMemHandle_t h;
	int prev;
	*dptr = NULL;
	*bytes = 0;
	if (dev_enter(device, &prev) != 0) {
		if (why)
			*why = "cannot make the device current";
		dev_leave(prev);
		return -ENODEV;
	}
	memcpy(&h, handle, sizeof(h));
	cudaError_t e = cudaIpcOpenMemHandle(dptr, h, cudaIpcMemLazyEnablePeerAccess);
	if (e != cudaSuccess) {
		if (why)
			*why = cudaGetErrorString(e);
		cudaGetLastError();
		*dptr = NULL;
		dev_leave(prev);
		return -EINVAL;
	}
	*bytes = bytes_from(*dptr);
	dev_leave(prev);
	return 0;
}

void qv_gpu_ipc_close(int device, void *dptr)
{
	int prev;
	if (!dptr)
		return;
	if (dev_enter(device, &prev) == 0 && cudaIpcCloseMemHandle(dptr) != cudaSuccess)
		cudaGetLastError();
	dev_leave(prev);
}

int qv_gpu_copy_to_device(int device, void *dst, const void *src, size_t bytes,
                          unsigned n_streams)
{
	enum { CHUNK = 256 << 20, MAXS = 16 };
	cudaStream_t st[MAXS] = {0};
	int rc = 0;
	if (n_streams < 1)
		n_streams = 1;
	if (n_streams > MAXS)
		n_streams = MAXS;
	int prev;
	if (dev_enter(device, &prev) != 0) {
		dev_leave(prev);
		return -ENODEV;
	}
	for (unsigned i = 0; i < n_streams && rc == 0; i++)
		if (cudaStreamCreateWithFlags(&st[i], cudaStreamNonBlocking) != cudaSuccess)
			rc = -EIO;
	for (size_t off = 0, k = 0; rc == 0 && off < bytes; off += CHUNK, k++) {
		size_t n = bytes - off < CHUNK ? bytes - off : CHUNK;
		if (cudaMemcpyAsync((char *)dst + off, (const char *)src + off, n,
		                    cudaMemcpyHostToDevice, st[k % n_streams]) != cudaSuccess)
			rc = -EIO;
	}
	for (unsigned i = 0; i < n_streams; i++)
		if (st[i]) {
			if (cudaStreamSynchronize(st[i]) != cudaSuccess)
				rc = -EIO;
			cudaStreamDestroy(st[i]);
		}
	if (rc)
		cudaGetLastError();
	dev_leave(prev);
	return rc;
}

/* ---- the CUDA sink -------------------------------------------------------------------- */
#define MAX_STREAMS 16

struct cuda_sink {
	qv_sink base;
	int device;
	char *dest;
	unsigned n_streams;
	cudaStream_t streams[MAX_STREAMS];
	cudaEvent_t *events;     /* one per ring slot */
	unsigned char *pending;  /* a copy out of the slot was queued */
	/* pairs frames merged here (cuda_pairs_reserve): slots [pairs_first,
	 * pairs_first + pairs_n) each have pairs_bytes of device memory for the
	 * planes and a pinned word the frame's status is copied back into */
	unsigned pairs_first, pairs_n;
	size_t pairs_bytes;
	unsigned char *pairs_dev;
	unsigned *pairs_status;
	unsigned char *checking; /* per ring slot: a status to read when it is done */
};

/* Where a pairs frame of n values lies in its slot's device memory. */
struct pairs_layout {
	size_t sm, esc, counts, status, total;
};

static size_t align256(size_t n)
{
	return (n + 255) & ~(size_t)255;
}

static void pairs_layout(uint64_t n, struct pairs_layout *l)
{
	l->sm = align256((size_t)(n + 1) / 2);
	l->esc = l->sm + align256((size_t)n);
	l->counts = l->esc + align256((size_t)(n >> 4)); /* the codec's bound on escapes */
	l->status = l->counts + align256(QV__PAIRS_SEGMENTS_MAX * sizeof(unsigned));
	l->total = l->status + 256;
}

static int cuda_fail(struct cuda_sink *c, cudaError_t e, const char *what)
{
	snprintf(c->base.errmsg, sizeof(c->base.errmsg), "CUDA %s on device %d: %s", what,
	         c->device, cudaGetErrorString(e));
	return cuda_errno(e);
}

static int cuda_put(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	cudaStream_t st = c->streams[slot % c->n_streams];
	cudaError_t e = cudaMemcpyAsync(c->dest + dest_off, src, len, cudaMemcpyHostToDevice, st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaMemcpyAsync");
	e = cudaEventRecord(c->events[slot], st);
	if (e != cudaSuccess) {
		int rc = cuda_fail(c, e, "cudaEventRecord");
		cudaStreamSynchronize(st); /* the copy queued still reads src */
		cudaGetLastError();
		return rc;
	}
	c->pending[slot] = 1;
	return 0;
}

/* A slot's work is done: a pairs frame's status, read back, says whether
 * it merged and matched its checksum. */
static int slot_done(struct cuda_sink *c, unsigned slot)
{
	c->pending[slot] = 0;
	if (!c->checking || !c->checking[slot])
		return 0;
	c->checking[slot] = 0;
	unsigned st = ((volatile unsigned *)c->pairs_status)[slot - c->pairs_first];
	if (st == 0)
		return 0;
	snprintf(c->base.errmsg, sizeof(c->base.errmsg), "a frame merged on device %d %s", c->device,
	         st & QV__PAIRS_BAD_ESCAPES ? "has escapes that do not match its codes"
	                                    : "does not match its checksum");
	return QV_ECORRUPT;
}

static int cuda_busy(qv_sink *k, unsigned slot)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	if (!c->pending[slot])
		return 0;
	cudaError_t e = cudaEventQuery(c->events[slot]);
	if (e == cudaErrorNotReady)
		return 1;
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaEventQuery");
	return slot_done(c, slot);
}

static int cuda_wait(qv_sink *k, unsigned slot)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	if (!c->pending[slot])
		return 0;
	cudaError_t e = cudaEventSynchronize(c->events[slot]);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaEventSynchronize");
	return slot_done(c, slot);
}

static int cuda_pairs_reserve(qv_sink *k, unsigned first_slot, unsigned n_slots,
                              size_t frame_bytes)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	struct pairs_layout l;
	int prev, rc = 0;
	cudaError_t e;

	if (c->pairs_dev)
		return -EINVAL; /* once per sink */
	pairs_layout(frame_bytes / 2, &l);
	c->checking = calloc(k->n_slots, 1);
	if (!c->checking)
		return -ENOMEM;
	if (dev_enter(c->device, &prev) != 0) {
		rc = -ENODEV;
	} else if (qv__cuda_pairs_usable() != cudaSuccess) {
		rc = -ENOTSUP; /* no kernel image for this GPU: the CPU merges */
	} else if ((e = cudaMalloc((void **)&c->pairs_dev, (size_t)n_slots * l.total)) != cudaSuccess) {
		rc = cuda_fail(c, e, "cudaMalloc");
		c->pairs_dev = NULL;
	} else if ((e = cudaHostAlloc((void **)&c->pairs_status, n_slots * sizeof(unsigned),
	                              cudaHostAllocDefault)) != cudaSuccess) {
		rc = cuda_fail(c, e, "cudaHostAlloc");
		c->pairs_status = NULL;
		cudaFree(c->pairs_dev);
		c->pairs_dev = NULL;
	}
	dev_leave(prev);
	if (rc) {
		cudaGetLastError();
		free(c->checking);
		c->checking = NULL;
		return rc;
	}
	c->pairs_first = first_slot;
	c->pairs_n = n_slots;
	c->pairs_bytes = l.total;
	return 0;
}

static int put_pairs_queue(struct cuda_sink *c, unsigned slot, const struct qv_codec_pairs *p,
                           uint64_t xxh3, uint64_t dest_off);

/* Copies the planes up, then the kernels merge them into the destination
 * and check the checksum; the status comes back before the slot's event.
 * The kernels are launched on the sink's device, whatever the thread's. A
 * failure after the first copy was queued waits for what was queued, so
 * no copy still reads the caller's buffers once this returns. */
static int cuda_put_pairs(qv_sink *k, unsigned slot, const struct qv_codec_pairs *p,
                          uint64_t xxh3, uint64_t dest_off)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	int prev, rc;

	if (dev_enter(c->device, &prev) != 0) {
		dev_leave(prev);
		return -ENODEV;
	}
	rc = put_pairs_queue(c, slot, p, xxh3, dest_off);
	if (rc) {
		cudaStreamSynchronize(c->streams[slot % c->n_streams]);
		cudaGetLastError();
	}
	dev_leave(prev);
	return rc;
}

static int put_pairs_queue(struct cuda_sink *c, unsigned slot, const struct qv_codec_pairs *p,
                           uint64_t xxh3, uint64_t dest_off)
{
	struct pairs_layout l;

	pairs_layout(p->values, &l);
	if (!c->pairs_dev || slot < c->pairs_first || slot - c->pairs_first >= c->pairs_n ||
	    l.total > c->pairs_bytes || p->escapes > p->values >> 4 ||
	    2 * p->values + (p->has_tail ? 1 : 0) <= 240)
		return -EINVAL;
	unsigned i = slot - c->pairs_first;
	unsigned char *d = c->pairs_dev + (size_t)i * c->pairs_bytes;
	cudaStream_t st = c->streams[slot % c->n_streams];
	struct qv__pairs_job j = {
		.codes = d, .sm = d + l.sm, .esc = d + l.esc, .dst = (unsigned char *)c->dest + dest_off,
		.counts = (unsigned *)(d + l.counts), .status = (unsigned *)(d + l.status),
		.values = p->values, .escapes = p->escapes, .xxh3 = xxh3, .tail = p->tail,
		.has_tail = p->has_tail};
	memcpy(j.table, p->table, sizeof(j.table));
	cudaError_t e = cudaMemsetAsync(j.status, 0, sizeof(unsigned), st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaMemsetAsync");
	e = cudaMemcpyAsync(d, p->codes, (size_t)(p->values + 1) / 2, cudaMemcpyHostToDevice, st);
	if (e == cudaSuccess)
		e = cudaMemcpyAsync(d + l.sm, p->sm, (size_t)p->values, cudaMemcpyHostToDevice, st);
	if (e == cudaSuccess && p->escapes)
		e = cudaMemcpyAsync(d + l.esc, p->esc, (size_t)p->escapes, cudaMemcpyHostToDevice, st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaMemcpyAsync");
	e = (cudaError_t)qv__cuda_pairs_queue(&j, XXH3_kSecret, st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "kernel launch");
	e = cudaMemcpyAsync(&c->pairs_status[i], j.status, sizeof(unsigned), cudaMemcpyDeviceToHost,
	                    st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaMemcpyAsync");
	e = cudaEventRecord(c->events[slot], st);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaEventRecord");
	c->pending[slot] = 1;
	c->checking[slot] = 1;
	return 0;
}

static int cuda_finish(qv_sink *k)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	for (unsigned i = 0; i < c->n_streams; i++) {
		cudaError_t e = cudaStreamSynchronize(c->streams[i]);
		if (e != cudaSuccess)
			return cuda_fail(c, e, "cudaStreamSynchronize");
	}
	int rc = 0;
	for (unsigned i = 0; i < c->base.n_slots; i++)
		if (c->pending[i]) {
			int r = slot_done(c, i);
			if (rc == 0)
				rc = r;
		}
	return rc;
}

static void cuda_destroy(qv_sink *k)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	int prev;
	if (dev_enter(c->device, &prev) != 0)
		cudaGetLastError();
	for (unsigned i = 0; i < c->n_streams; i++)
		if (c->streams[i]) {
			cudaStreamSynchronize(c->streams[i]);
			cudaStreamDestroy(c->streams[i]);
		}
	if (c->events)
		for (unsigned i = 0; i < c->base.n_slots; i++)
			if (c->events[i])
				cudaEventDestroy(c->events[i]);
	free(c->events);
	free(c->pending);
	free(c->checking);
	if (c->pairs_dev && cudaFree(c->pairs_dev) != cudaSuccess)
		cudaGetLastError();
	if (c->pairs_status && cudaFreeHost(c->pairs_status) != cudaSuccess)
		cudaGetLastError();
	free(c);
	dev_leave(prev);
}

static const struct qv_sink_ops cuda_ops = {cuda_put,           cuda_busy,      cuda_wait,
                                            cuda_pairs_reserve, cuda_put_pairs, cuda_finish,
                                            cuda_destroy};

int qv_sink_cuda_create(int device, void *dest, uint64_t dest_bytes, unsigned n_slots,
                        unsigned n_streams, qv_sink **out)
{
	struct cuda_sink *c = calloc(1, sizeof(*c));
	*out = NULL;
	if (!c)
		return -ENOMEM;
	c->base.ops = &cuda_ops;
	c->base.dest_bytes = dest_bytes;
	c->base.n_slots = n_slots;
	c->device = device;
	c->dest = dest;
	c->n_streams = n_streams < 1 ? 1 : n_streams > MAX_STREAMS ? MAX_STREAMS : n_streams;
	c->events = calloc(n_slots, sizeof(cudaEvent_t));
	c->pending = calloc(n_slots, 1);
	int rc = 0;
	if (!c->events || !c->pending) {
		rc = -ENOMEM;
		goto fail;
	}
	if (cudaSetDevice(device) != cudaSuccess) {
		rc = -ENODEV;
		goto fail;
	}
	for (unsigned i = 0; i < c->n_streams; i++)
		if (cudaStreamCreateWithFlags(&c->streams[i], cudaStreamNonBlocking) != cudaSuccess) {
			rc = -EIO;
			goto fail;
		}
	/* Waiting for a slot sleeps in the kernel (cudaEventBlockingSync)
	 * instead of polling: with one context on few cores the runtime would
	 * spin, taking a core from the cold decoders. H200 pinned to 2 cores,
	 * cold loads to cuda:0 (2.67 GB raw), interleaved, medians of 7:
	 * 3.179 GB/s raw against 2.984, 0.525 CPU-s per GB against 0.552
	 * (both still counting the driver's start as load time); warm hot
	 * loads unchanged (all cores 22.6 against 22.4 GB/s, 2 cores 11.5
	 * against 11.8, medians of 10 and 5). */
	for (unsigned i = 0; i < n_slots; i++)
		if (cudaEventCreateWithFlags(&c->events[i],
		                             cudaEventDisableTiming | cudaEventBlockingSync) != cudaSuccess) {
			rc = -EIO;
			goto fail;
		}
	*out = &c->base;
	return 0;
fail:
	cudaGetLastError();
	cuda_destroy(&c->base);
	return rc;
}
