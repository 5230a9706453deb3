/* Pinned host buffers for the read ring.
 *
 * The memory comes from mmap (page aligned, so O_DIRECT reads may target it)
 * and is then pinned with cudaHostRegister when CUDA is present. We do not use
 * cudaHostAlloc: its pages are mapped by the driver and may not be pinnable
 * again by io_uring's fixed-buffer registration, while registered anonymous
 * memory serves both the DMA engine and io_uring. */
#include <errno.h>
#include <sys/mman.h>

#include "gpu_int.h"

int qv_pinned_alloc(size_t bytes, int for_cuda, void **out, int *pinned)
{
	*out = NULL;
	*pinned = 0;
	if (bytes == 0)
		return -EINVAL;
	/* pages to pin are faulted in now; host-only buffers as they are used */
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | (for_cuda ? MAP_POPULATE : 0), -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	if (for_cuda && qv__cuda_host_register(p, bytes) == 0)
		*pinned = 1;
	*out = p;
	return 0;
}

void qv_pinned_free(void *p, size_t bytes, int pinned)
{
	if (!p)
		return;
	if (pinned)
		qv__cuda_host_unregister(p);
	munmap(p, bytes);
}

int qv_gpu_host_register(void *p, size_t bytes)
{
	return qv__cuda_host_register(p, bytes);
}

void qv_gpu_host_unregister(void *p)
{
	qv__cuda_host_unregister(p);
}
