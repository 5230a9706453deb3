/* cold_into: loads one version PASSES times into the same host buffer, the
 * page cache dropped before each pass (when it can: needs root), and prints
 * a JSON line per pass. Pass 1 writes into fresh memory, which the kernel
 * faults in page by page as the decoders write it; later passes write into
 * memory already resident, as an engine that reloads weights into its own
 * buffers does (a GPU load's pinned ring is resident too). The difference
 * is the price of the first touch, not of reading or decoding.
 *
 * usage: cold_into ROOT MODEL@REF [PASSES]
 *   QV_IO=direct|buffered|auto (default direct); QV_DROP=0 keeps the page
 *   cache (with QV_IO=buffered and the files cached: no disk at all, the
 *   CPU's own ceiling for reading and decoding); QV_COLD_READS=N sets
 *   qv_load_opts.cold_reads (load --cold-reads), else the default;
 *   QV_VERIFY=1 checks every shard's XXH3 (load --verify). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "quiver/load.h"
#include "quiver/store.h"

/* CPU seconds this process has used, user and system. */
static double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* 1 if the page cache was dropped, 0 if not allowed. */
static int drop_caches(void)
{
	int fd, ok;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd < 0)
		return 0;
	ok = write(fd, "3", 1) == 1;
	close(fd);
	return ok;
}

int main(int argc, char **argv)
{
	char err[512] = "", *at;
	qv_store *s = NULL;
	uint64_t need = 0;
	void *dest = MAP_FAILED;
	int passes = argc > 3 ? atoi(argv[3]) : 2, rc = 1;
	const char *io = getenv("QV_IO"), *drop = getenv("QV_DROP"), *reads = getenv("QV_COLD_READS"),
		   *verify = getenv("QV_VERIFY");
	qv_load_opts o = { .device = QV_DEVICE_CPU, .io = QV_IO_DIRECT };

	if (argc < 3 || argc > 4 || passes < 1 || (at = strrchr(argv[2], '@')) == NULL) {
		fprintf(stderr, "usage: cold_into ROOT MODEL@REF [PASSES]\n");
		return 2;
	}
	if (io)
		o.io = strcmp(io, "buffered") == 0 ? QV_IO_BUFFERED
		       : strcmp(io, "auto") == 0  ? QV_IO_AUTO
						  : QV_IO_DIRECT;
	if (reads)
		o.cold_reads = (unsigned)atoi(reads);
	o.verify = verify && strcmp(verify, "1") == 0;
	*at = '\0';
	if (qv_store_open(argv[1], &s, err, sizeof(err)) != 0) {
		fprintf(stderr, "cold_into: %s\n", err);
		return 1;
	}
	if (qv_load_size(s, argv[2], at + 1, &need) != 0) {
		fprintf(stderr, "cold_into: %s\n", qv_store_errmsg(s));
		goto out;
	}
	dest = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dest == MAP_FAILED) {
		fprintf(stderr, "cold_into: cannot map %" PRIu64 " bytes: %s\n", need, strerror(errno));
		goto out;
	}
	for (int p = 1; p <= passes; p++) {
		qv_load *l = NULL;
		int dropped = drop && strcmp(drop, "0") == 0 ? 0 : drop_caches();

		double cpu0 = cpu_seconds();

		if (qv_load_run(s, argv[2], at + 1, dest, need, &o, &l) != 0) {
			fprintf(stderr, "cold_into: pass %d: %s\n", p, qv_store_errmsg(s));
			goto out;
		}
		double cpu = cpu_seconds() - cpu0;
		const qv_load_stats *st = qv_load_get_stats(l);
		printf("{\"pass\": %d, \"destination\": \"%s\", \"caches_dropped\": %s, "
		       "\"bytes\": %" PRIu64 ", \"cold_bytes\": %" PRIu64 ", \"seconds\": %.6f, "
		       "\"decode_threads\": %u, \"cold_reads\": %u, \"cpu_seconds\": %.3f, "
		       "\"gb_per_s\": %.4f}\n",
		       p, p == 1 ? "fresh" : "resident", dropped ? "true" : "false", st->bytes,
		       st->cold_bytes, st->seconds, st->decode_threads, st->cold_reads, cpu,
		       st->seconds > 0 ? (double)st->bytes / st->seconds / 1e9 : 0.0);
		qv_load_destroy(l);
	}
	rc = 0;
out:
	if (dest != MAP_FAILED)
		munmap(dest, need);
	qv_store_close(s);
	return rc;
}
