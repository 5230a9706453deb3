/* fault_in: what the kernel charges to fault in fresh anonymous memory, the
 * cost a load into fresh host memory pays before it writes a byte
 * (docs/BENCHMARKS.md, "Host arena pages"). Maps SIZE_MIB of
 * anonymous memory, 2 MiB aligned, on 4 KiB pages (MADV_NOHUGEPAGE) or on
 * transparent huge pages (MADV_HUGEPAGE), and faults it in with
 * MADV_POPULATE_WRITE in STEP_KIB pieces, as a decoder's prepare hook does.
 * Prints one line of JSON: mode, bytes, seconds, s_per_gib, and how many
 * of the pages ended up huge (AnonHugePages of /proc/self/smaps_rollup).
 *
 * usage: fault_in [--huge] [--step STEP_KIB] [--size SIZE_MIB]
 *   (defaults: 4 KiB pages, 128 KiB steps, 1024 MiB)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HUGE_ALIGN ((size_t)2 << 20)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* AnonHugePages of this process, in bytes; -1 when unknown. */
static long long anon_huge_bytes(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static int usage(void)
{
	fprintf(stderr, "usage: fault_in [--huge] [--step STEP_KIB] [--size SIZE_MIB]\n");
	return 2;
}

int main(int argc, char **argv)
{
	int huge = 0;
	size_t step = (size_t)128 << 10, size = (size_t)1024 << 20;

	for (int i = 1; i < argc; i++) {
		char *end = NULL;
		if (strcmp(argv[i], "--huge") == 0) {
			huge = 1;
		} else if (strcmp(argv[i], "--step") == 0 && i + 1 < argc) {
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v == 0 || v % 4)
				return usage();
			step = (size_t)v << 10;
		} else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v == 0 || v % 2)
				return usage();
			size = (size_t)v << 20;
		} else {
			return usage();
		}
	}
	char *raw = mmap(NULL, size + HUGE_ALIGN, PROT_READ | PROT_WRITE,
	                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED) {
		fprintf(stderr, "fault_in: mmap of %zu bytes: %s\n", size, strerror(errno));
		return 1;
	}
	char *p = (char *)(((uintptr_t)raw + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1));
	if (madvise(p, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0) {
		fprintf(stderr, "fault_in: madvise(%s): %s\n", huge ? "MADV_HUGEPAGE" : "MADV_NOHUGEPAGE",
		        strerror(errno));
		return 1;
	}
	double t0 = now();
	for (size_t off = 0; off < size; off += step) {
		size_t n = size - off < step ? size - off : step;
		if (madvise(p + off, n, MADV_POPULATE_WRITE) != 0) {
			fprintf(stderr, "fault_in: MADV_POPULATE_WRITE: %s\n", strerror(errno));
			return 1;
		}
	}
	double s = now() - t0;
	printf("{\"mode\": \"%s\", \"bytes\": %zu, \"step_bytes\": %zu, \"seconds\": %.4f, "
	       "\"s_per_gib\": %.4f, \"anon_huge_bytes\": %lld}\n",
	       huge ? "huge" : "small", size, step, s, s / ((double)size / (1u << 30)),
	       anon_huge_bytes());
	munmap(raw, size + HUGE_ALIGN);
	return 0;
}
