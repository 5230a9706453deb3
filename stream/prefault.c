/* Faulting in a host destination: a thread that runs ahead of an O_DIRECT
 * hot load, and the residency checks and fault-in of the cold decoders.
 *
 * A fresh arena's pages are zeroed by the kernel on first touch. Without
 * this thread that zeroing runs on the thread that submits the reads (it
 * first touched the arena with O_DIRECT reads then; since 2a870df with the
 * copies out of the ring): on the 2-vCPU box it was 93% of a hot load's CPU
 * (perf: clear_page_erms) and loads ran at 1.1-1.25 GB/s against fio's
 * 1.3-1.7 (fio into 4 KiB buffers). This thread walks the destination in
 * the order the plan fills it, with MADV_POPULATE_WRITE, so the zeroing
 * runs on another core while the reads are in flight (1.5-1.8 GB/s).
 * Content is never changed (the kernel populates page tables without
 * writing data).
 *
 * Only for reads from the disk: when the data comes faster than pages can
 * be zeroed (the page cache, many cores) a thread populating beside the
 * loaders slows them down (16-core H200 box, warm host loads: 2-5 GB/s with
 * it, 12 without), and when loads are CPU-bound (decoding cold frames on 2
 * vCPUs) it takes a core from the decoders (1.20 vs 1.53 GB/s). It also
 * stops when it finds the data got ahead of it. Best effort: on kernels
 * before 5.14 (EINVAL) or any other error the thread just stops. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stream_int.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define STEP (16u << 20) /* bytes per madvise: small enough to stop soon */

struct qv__prefault {
	pthread_t thread;
	char *base;
	size_t len;
	atomic_int stop;
};

static void *prefault_main(void *arg)
{
	struct qv__prefault *pf = arg;
	for (size_t off = 0; off < pf->len && !atomic_load_explicit(&pf->stop, memory_order_relaxed);
	     off += STEP) {
		size_t n = pf->len - off < STEP ? pf->len - off : STEP;
		unsigned char in = 0;

		/* the data got here first: zeroing ahead of it no longer helps */
		if (off > 0 && mincore(pf->base + off, 1, &in) == 0 && (in & 1))
			break;
		if (madvise(pf->base + off, n, MADV_POPULATE_WRITE) != 0)
			break;
	}
	return NULL;
}

/* The whole pages inside [dest, dest + len): their start, and their length
 * (0 when there are none). */
static size_t inner_pages(void *dest, size_t len, char **start)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)dest;
	uintptr_t s = (a + pg - 1) & ~(pg - 1), e = (a + len) & ~(pg - 1);
	*start = (char *)s;
	return e > s ? e - s : 0;
}

int qv__resident(void *dest, size_t len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	unsigned char vec[1024];
	char *start;
	size_t n = inner_pages(dest, len, &start);

	for (size_t off = 0; off < n; off += sizeof(vec) * pg) {
		size_t m = n - off < sizeof(vec) * pg ? n - off : sizeof(vec) * pg;

		if (mincore(start + off, m, vec) != 0)
			return 0;
		for (size_t i = 0; i < m / pg; i++)
			if (!(vec[i] & 1))
				return 0;
	}
	return 1;
}

void qv__populate(void *dest, size_t len)
{
	char *start;
	size_t n = inner_pages(dest, len, &start);
	if (n > 0)
		(void)madvise(start, n, MADV_POPULATE_WRITE); /* best effort */
}

int qv__prefault_start(void *dest, size_t len, struct qv__prefault **out)
{
	*out = NULL;
	char *start;
	size_t n = inner_pages(dest, len, &start);
	if (n == 0)
		return 0;
	struct qv__prefault *pf = calloc(1, sizeof(*pf));
	if (!pf)
		return -ENOMEM;
	pf->base = start;
	pf->len = n;
	atomic_init(&pf->stop, 0);
	int rc = pthread_create(&pf->thread, NULL, prefault_main, pf);
	if (rc) {
		free(pf);
		return -rc;
	}
	*out = pf;
	return 0;
}

void qv__prefault_stop(struct qv__prefault *pf)
{
	if (!pf)
		return;
	atomic_store(&pf->stop, 1);
	pthread_join(pf->thread, NULL);
	free(pf);
}
