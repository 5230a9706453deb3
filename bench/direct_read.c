/* direct_read: the raw O_DIRECT read rate of a folder of files, for machines
 * without fio (the lent GPU machine). S threads take B-byte requests in
 * order from one cursor over the files, one after another (as fio's
 * --file_service_type=sequential does with S requests in flight), so S
 * requests are in flight whatever the number of files; each reads with
 * O_DIRECT into a buffer on transparent huge pages (2 MiB aligned,
 * MADV_HUGEPAGE, faulted in before the clock starts), or on 4 KiB pages with
 * --small-pages: a virtio disk splits a request into one segment per
 * physically contiguous piece, so 4 KiB-page buffers understate it
 * (docs/BENCHMARKS.md). Prints one line of JSON: bytes, seconds, gb_per_s,
 * streams, block_bytes, huge_pages. Drop the page cache before running it.
 *
 * usage: direct_read [--streams S] [--block SIZE_MIB | --block-kib SIZE_KIB] [--small-pages] DIR
 *   (--block-kib: any multiple of 4 KiB, e.g. a cold frame's stored size)
 *   (defaults: 16 streams, 16 MiB requests)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HUGE_ALIGN (2u << 20)
#define STREAMS_MAX 256

struct files {
	char **path;
	int *fd;              /* O_DIRECT, opened before the clock starts */
	off_t *size;
	size_t n, cap;
};

struct run {
	struct files *f;
	size_t block;
	int huge;
	pthread_mutex_t mu;
	size_t next;          /* the cursor: next request in file `next`, at `at` */
	off_t at;
	unsigned long long bytes;
	int err;
	char errmsg[PATH_MAX + 64];
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Every regular file below dir, in directory order. 0 or -1. */
static int collect(const char *dir, struct files *f)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int rc = 0;

	if (d == NULL) {
		fprintf(stderr, "direct_read: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	while (rc == 0 && (e = readdir(d)) != NULL) {
		char p[PATH_MAX];
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= sizeof(p) ||
		    lstat(p, &st) != 0) {
			fprintf(stderr, "direct_read: %s/%s: cannot stat\n", dir, e->d_name);
			rc = -1;
		} else if (S_ISDIR(st.st_mode)) {
			rc = collect(p, f);
		} else if (S_ISREG(st.st_mode) && st.st_size > 0) {
			if (f->n == f->cap) {
				size_t cap = f->cap ? 2 * f->cap : 64;
				char **np = realloc(f->path, cap * sizeof(*np));

				if (np == NULL) {
					rc = -1;
					break;
				}
				f->path = np;
				f->cap = cap;
			}
			if ((f->path[f->n] = strdup(p)) == NULL)
				rc = -1;
			else
				f->n++;
		}
	}
	closedir(d);
	return rc;
}

/* A read buffer of len bytes: huge pages where the kernel gives them, or
 * plain 4 KiB pages; faulted in. NULL on failure. */
static char *buffer(size_t len, int huge)
{
	/* a huge page needs a whole aligned 2 MiB: a 1 MiB buffer gets one of
	 * its own (advising only len would split off a region too small) */
	size_t span = huge ? (len + HUGE_ALIGN - 1) & ~(size_t)(HUGE_ALIGN - 1) : len;
	size_t map = span + (huge ? HUGE_ALIGN : 0);
	char *p = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (huge) {
		p = (char *)(((uintptr_t)p + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1));
		(void)madvise(p, span, MADV_HUGEPAGE); /* best effort */
	} else {
		(void)madvise(p, span, MADV_NOHUGEPAGE);
	}
	memset(p, 0, span);
	return p;
}

/* KiB of this process's anonymous memory on transparent huge pages: what
 * the buffers really got (0 if unknown). */
static unsigned long anon_huge_kib(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	unsigned long kib = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lu kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static void fail(struct run *r, const char *path, int e)
{
	pthread_mutex_lock(&r->mu);
	if (!r->err) {
		r->err = e;
		snprintf(r->errmsg, sizeof(r->errmsg), "%s: %s", path, strerror(e));
	}
	pthread_mutex_unlock(&r->mu);
}

struct stream_arg {
	struct run *r;
	char *buf; /* r->block bytes */
};

static void *stream(void *arg)
{
	struct run *r = ((struct stream_arg *)arg)->r;
	char *buf = ((struct stream_arg *)arg)->buf;

	for (;;) {
		pthread_mutex_lock(&r->mu);
		while (r->next < r->f->n && r->at >= r->f->size[r->next]) {
			r->next++;
			r->at = 0;
		}
		size_t i = r->next;
		off_t at = r->at;
		int stop = r->err || i >= r->f->n;
		r->at += (off_t)r->block;
		pthread_mutex_unlock(&r->mu);
		if (stop)
			break;
		ssize_t n;

		do
			n = pread(r->f->fd[i], buf, r->block, at);
		while (n < 0 && errno == EINTR);
		if (n < 0) {
			fail(r, r->f->path[i], errno);
			break;
		}
		pthread_mutex_lock(&r->mu);
		r->bytes += (unsigned long long)n;
		pthread_mutex_unlock(&r->mu);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned streams = 16;
	size_t block_kib = 16u << 10;
	int huge = 1;
	const char *dir = NULL;
	struct files f = { 0 };
	struct run r = { 0 };
	pthread_t th[STREAMS_MAX];
	struct stream_arg sa[STREAMS_MAX];
	unsigned started = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--streams") == 0 && i + 1 < argc)
			streams = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--block") == 0 && i + 1 < argc)
			block_kib = strtoul(argv[++i], NULL, 10) << 10;
		else if (strcmp(argv[i], "--block-kib") == 0 && i + 1 < argc)
			block_kib = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--small-pages") == 0)
			huge = 0;
		else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			printf("usage: direct_read [--streams S] [--block SIZE_MIB | --block-kib SIZE_KIB] "
			       "[--small-pages] DIR\n");
			return 0;
		} else if (argv[i][0] == '-' || dir) {
			dir = NULL;
			break;
		} else
			dir = argv[i];
	}
	if (dir == NULL || streams < 1 || streams > STREAMS_MAX || block_kib < 4 || block_kib % 4 ||
	    block_kib > (256u << 10)) {
		fprintf(stderr, "usage: direct_read [--streams 1-%d] [--block 1-256 (MiB) | "
				"--block-kib 4-262144, a multiple of 4] [--small-pages] DIR\n", STREAMS_MAX);
		return 2;
	}
	if (collect(dir, &f) != 0)
		return 1;
	if (f.n == 0) {
		fprintf(stderr, "direct_read: no files below %s\n", dir);
		return 1;
	}
	f.fd = calloc(f.n, sizeof(*f.fd));
	f.size = calloc(f.n, sizeof(*f.size));
	if (f.fd == NULL || f.size == NULL) {
		fprintf(stderr, "direct_read: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < f.n; i++) {
		struct stat st;

		f.fd[i] = open(f.path[i], O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (f.fd[i] < 0 || fstat(f.fd[i], &st) != 0) {
			fprintf(stderr, "direct_read: %s: %s\n", f.path[i], strerror(errno));
			return 1;
		}
		f.size[i] = st.st_size;
	}
	r.f = &f;
	r.block = block_kib << 10;
	r.huge = huge;
	pthread_mutex_init(&r.mu, NULL);
	for (unsigned i = 0; i < streams; i++) {
		sa[i] = (struct stream_arg){ &r, buffer(r.block, huge) };
		if (sa[i].buf == NULL) {
			fprintf(stderr, "direct_read: cannot map the read buffers\n");
			return 1;
		}
	}
	double t0 = now();
	for (; started < streams; started++)
		if (pthread_create(&th[started], NULL, stream, &sa[started]) != 0)
			break;
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	double s = now() - t0;
	if (started == 0 || r.err) {
		fprintf(stderr, "direct_read: %s\n", started ? r.errmsg : "cannot start threads");
		return 1;
	}
	printf("{\"bytes\": %llu, \"seconds\": %.6f, \"gb_per_s\": %.4f, \"streams\": %u, "
	       "\"block_bytes\": %zu, \"huge_pages\": %s, \"anon_huge_kib\": %lu}\n",
	       r.bytes, s, (double)r.bytes / s / 1e9, started, r.block, huge ? "true" : "false",
	       anon_huge_kib());
	for (size_t i = 0; i < f.n; i++) {
		close(f.fd[i]);
		free(f.path[i]);
	}
	free(f.path);
	free(f.fd);
	free(f.size);
	return 0;
}
