/* Pinned host buffers for the read ring.
 *
 * The memory comes from mmap (page aligned, so O_DIRECT reads may target it)
 * and is then pinned with cudaHostRegister when CUDA is present. We do not use
 * cudaHostAlloc: its pages are mapped by the driver and may not be pinnable
 * again by io_uring's fixed-buffer registration, while registered anonymous
 * memory serves both the DMA engine and io_uring.
 *
 * The buffers start on a huge page and ask for transparent huge pages
 * (MADV_HUGEPAGE; best effort): a read of a few MiB then lands in a few
 * physically contiguous segments instead of one per 4 KiB page. On the
 * 2-vCPU box (virtio-blk, 254 segments a request) fio read the same files at
 * 1.26-1.68 GB/s into huge pages against 0.97-1.11 into 4 KiB pages, and the
 * cold readers gained as much (docs/BENCHMARKS.md). */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gpu_int.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif

int qv_pinned_alloc(size_t bytes, int for_cuda, void **out, int *pinned)
{
	*out = NULL;
	*pinned = 0;
	if (bytes == 0 || bytes > SIZE_MAX - QV_PINNED_ALIGN)
		return -EINVAL;
	size_t len = bytes + QV_PINNED_ALIGN;
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return -errno;
	/* keep [p, p + bytes), huge-page aligned: qv_pinned_free unmaps just that */
	char *p = (char *)(((uintptr_t)m + QV_PINNED_ALIGN - 1) & ~(uintptr_t)(QV_PINNED_ALIGN - 1));
	if (p > m)
		munmap(m, (size_t)(p - m));
	/* the tail from the page after the last byte (munmap wants a page
	 * aligned start; qv_pinned_free unmaps up to that page too) */
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	char *end = p + ((bytes + page - 1) & ~(page - 1));
	if (m + len > end)
		munmap(end, (size_t)(m + len - end));
	(void)madvise(p, bytes, MADV_HUGEPAGE);
	/* pages to pin are faulted in now; host-only buffers as they are used */
	if (for_cuda && madvise(p, bytes, MADV_POPULATE_WRITE) != 0)
		for (size_t i = 0; i < bytes; i += 4096)
			p[i] = 0; /* kernels before 5.14 */
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

/* The hex digits at *p (at most max of them), *p moved past them. */
static unsigned hex_run(const char **p, unsigned max)
{
	unsigned n = 0;
	while (n <= max && isxdigit((unsigned char)(*p)[0])) {
		(*p)++;
		n++;
	}
	return n <= max ? n : 0;
}

int qv__pci_bus_id_valid(const char *s)
{
	/* the forms cudaDeviceGetByPCIBusId documents: domain:bus:device.function,
	 * bus:device.function, domain:bus:device (0000:65:00.0, 65:00.0,
	 * 0000:65:00) */
	const char *p = s;
	unsigned first = hex_run(&p, 8);
	if (first == 0 || *p++ != ':')
		return 0;
	unsigned second = hex_run(&p, 2);
	if (second == 0)
		return 0;
	int domain = *p == ':';
	if (domain) { /* first was the domain, second the bus */
		p++;
		if (hex_run(&p, 2) == 0)
			return 0;
	} else if (first > 2) {
		return 0; /* no domain: first is the bus */
	}
	if (*p == '.') {
		p++;
		if (hex_run(&p, 1) != 1)
			return 0;
	} else if (!domain) {
		return 0; /* bus:device names no function and no domain */
	}
	return *p == '\0';
}
