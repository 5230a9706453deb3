/* The host arena a load allocates itself (dest NULL, QV_DEVICE_CPU), and
 * which pages it asks for (qv_load_opts.host_pages).
 *
 * A fresh page costs the kernel an allocation, a memory-cgroup charge and a
 * clear. In 2 MiB transparent huge pages that is about half the CPU time of
 * 512 small ones (bench/fault_in on the H200 box: 0.15-0.20 s per GiB
 * against 0.31-0.46), and cold loads into host memory on 2 cores were
 * faster in 18 of 22 rounds on five machines, warm hot loads 2-3 times as
 * fast (docs/BENCHMARKS.md, "Host arena pages"). Two things make huge pages
 * dearer, and QV_HOST_PAGES_AUTO looks for both:
 * - a VM whose virtio balloon reports free memory to the hypervisor (free
 *   page reporting, feature bit 5) hands free 2 MiB blocks back, and a huge
 *   page's first touch then faults on the host as well: 0.7-1.7 s per GiB
 *   on the CPU box, against 0.35-0.38 in small pages;
 * - a kernel short of free huge blocks would compact or reclaim memory in
 *   the fault (THP defrag `madvise`, the usual setting), so huge pages are
 *   asked for only while /proc/buddyinfo shows free blocks for the whole
 *   arena and a quarter more. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stream_int.h"

#define VIRTIO_ID_BALLOON 5
#define VIRTIO_BALLOON_F_REPORTING 5 /* feature bit: free page reporting */
#define PMD_DEFAULT ((size_t)2 << 20)

/* The first line of a small sysfs file into buf, newline dropped; 0 or -1. */
static int read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	char *got = fgets(buf, (int)len, f);
	fclose(f);
	if (!got)
		return -1;
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/* A virtio device's features file is one '0' or '1' per feature bit, bit 0
 * first (drivers/virtio/virtio.c, features_show). */
int qv__free_page_reporting(const char *sysfs)
{
	char dir[PATH_MAX], path[PATH_MAX], line[512];
	if (snprintf(dir, sizeof(dir), "%s/bus/virtio/devices", sysfs) >= (int)sizeof(dir))
		return 0;
	DIR *d = opendir(dir);
	if (!d)
		return 0; /* no virtio bus: not such a VM */
	int found = 0;
	struct dirent *e;
	while (!found && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (snprintf(path, sizeof(path), "%s/%s/device", dir, e->d_name) >= (int)sizeof(path) ||
		    read_line(path, line, sizeof(line)) != 0 ||
		    strtoul(line, NULL, 16) != VIRTIO_ID_BALLOON)
			continue;
		if (snprintf(path, sizeof(path), "%s/%s/features", dir, e->d_name) >= (int)sizeof(path) ||
		    read_line(path, line, sizeof(line)) != 0)
			continue;
		found = strlen(line) > VIRTIO_BALLOON_F_REPORTING && line[VIRTIO_BALLOON_F_REPORTING] == '1';
	}
	closedir(d);
	return found;
}

int qv__thp_never(const char *sysfs)
{
	char path[PATH_MAX], line[128];
	if (snprintf(path, sizeof(path), "%s/kernel/mm/transparent_hugepage/enabled", sysfs) >=
	        (int)sizeof(path) ||
	    read_line(path, line, sizeof(line)) != 0)
		return 1; /* no THP in this kernel */
	return strstr(line, "[never]") != NULL;
}

/* buddyinfo: "Node 0, zone   Normal  c0 c1 ... c10", cK free blocks of
 * page << K bytes. */
long long qv__free_huge_bytes(const char *buddyinfo, size_t huge, size_t page)
{
	FILE *f = fopen(buddyinfo, "re");
	if (!f)
		return -1;
	char line[512];
	long long total = 0;
	int lines = 0;
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, "zone");
		if (!p)
			continue;
		p += 4;
		while (*p == ' ' || *p == '\t')
			p++;
		p += strcspn(p, " \t"); /* the zone's name */
		lines++;
		for (unsigned order = 0; order < 64; order++) {
			char *end;
			errno = 0;
			unsigned long long n = strtoull(p, &end, 10);
			if (end == p || errno)
				break;
			p = end;
			if ((page << order) >= huge && n <= (unsigned long long)(LLONG_MAX - total) /
			                                         (page << order))
				total += (long long)(n * (page << order));
		}
	}
	fclose(f);
	return lines ? total : -1;
}

/* What does not change while the process runs. */
static struct {
	int huge_ok; /* THP on, no free page reporting */
	size_t pmd;  /* bytes of a huge page */
} machine;
static pthread_once_t machine_once = PTHREAD_ONCE_INIT;

static void read_machine(void)
{
	char line[64];
	unsigned long long v;
	machine.huge_ok = !qv__thp_never("/sys") && !qv__free_page_reporting("/sys");
	machine.pmd = PMD_DEFAULT;
	if (read_line("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", line, sizeof(line)) == 0 &&
	    sscanf(line, "%llu", &v) == 1 && v >= 4096 && (v & (v - 1)) == 0 && v <= ((size_t)1 << 30))
		machine.pmd = (size_t)v;
}

enum qv_host_pages qv__host_pages_auto(size_t bytes)
{
	pthread_once(&machine_once, read_machine);
	if (!machine.huge_ok)
		return QV_HOST_PAGES_SMALL;
	long long free_huge = qv__free_huge_bytes("/proc/buddyinfo", machine.pmd,
	                                          (size_t)sysconf(_SC_PAGESIZE));
	if (free_huge < 0 || (unsigned long long)free_huge < bytes + bytes / 4)
		return QV_HOST_PAGES_SMALL;
	return QV_HOST_PAGES_HUGE;
}

/* huge: aligned to a huge page by mapping one more and trimming both ends
 * (page-aligned pieces of our own mapping, so munmap cannot fail). */
void *qv__host_arena(size_t bytes, enum qv_host_pages pages)
{
	pthread_once(&machine_once, read_machine);
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + pg - 1) / pg * pg;
	size_t slack = pages == QV_HOST_PAGES_HUGE ? machine.pmd : 0;
	if (len < bytes || len > SIZE_MAX - slack) {
		errno = ENOMEM;
		return NULL;
	}
	char *p = mmap(NULL, len + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (slack) {
		char *a = (char *)(((uintptr_t)p + slack - 1) & ~(uintptr_t)(slack - 1));
		size_t head = (size_t)(a - p);
		if (head)
			(void)munmap(p, head);
		if (slack - head)
			(void)munmap(a + len, slack - head);
		p = a;
	}
	(void)madvise(p, len, pages == QV_HOST_PAGES_HUGE ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}
