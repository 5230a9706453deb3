/* Everything CUDA: device queries, device memory, host registration and the
 * CUDA sink. The only file of the project that includes a CUDA header.
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

#include "gpu_int.h"

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
};

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
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaEventRecord");
	c->pending[slot] = 1;
	return 0;
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
	c->pending[slot] = 0;
	return 0;
}

static int cuda_wait(qv_sink *k, unsigned slot)
{
	struct cuda_sink *c = (struct cuda_sink *)k;
	if (!c->pending[slot])
		return 0;
	cudaError_t e = cudaEventSynchronize(c->events[slot]);
	if (e != cudaSuccess)
		return cuda_fail(c, e, "cudaEventSynchronize");
	c->pending[slot] = 0;
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
	for (unsigned i = 0; i < c->base.n_slots; i++)
		c->pending[i] = 0;
	return 0;
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
	free(c);
	dev_leave(prev);
}

static const struct qv_sink_ops cuda_ops = {cuda_put, cuda_busy, cuda_wait, cuda_finish,
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
