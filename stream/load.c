/* Loading a version: manifest -> load plan -> read engine -> sink.
 *
 * The plan places every distinct shard of the version at a 4 KiB aligned
 * offset of one arena, so a shard is one extent (a whole file, read from
 * offset 0 in chunk-sized, aligned reads) and each tensor is a pointer into
 * its shard's copy. Engine choice: io_uring with O_DIRECT by default; the
 * pread pool when io_uring cannot start, when the file system refuses
 * O_DIRECT (at open or on the first read), on --io buffered, and on --io auto
 * when the shards are already in the page cache. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "quiver/codec.h"
#include "stream_int.h"

#define DEFAULT_QD 16u
/* Hot reads in flight for a GPU load whose O_DIRECT reads go to a disk the
 * kernel calls rotational. The H200 machine's virtio disk says it is, and
 * reads best with few requests in flight: cold-cache loads to cuda:0 with
 * 1 MiB chunks ran 2.003 GB/s at qd 4 against 1.795 at qd 16 (medians of 4
 * interleaved rounds, 2026-11-30). Host loads keep DEFAULT_QD: on the 2-vCPU
 * box, whose disk says rotational too, qd 16 ran 2.40 against 2.03 (8
 * interleaved rounds), the CPU's copies out of the ring wanting more slots
 * to overlap with. Flash keeps DEFAULT_QD. */
#define HOT_QD_ROTATIONAL_GPU 4u
#define DEFAULT_CHUNK (1u << 20)
#define DEFAULT_STREAMS 4u
#define CACHED_ENOUGH 0.9
/* Decode buffers a decoder has for a device sink (each holds one frame's
 * raw bytes): one it decodes into while the others' copies run. H200 pinned
 * to 2 cores, cold loads to cuda:0, interleaved, medians of 7: 4 a decoder
 * 3.219 GB/s raw against 2.984 with 2, 3.255 with blocking waits as well
 * (gpu/cuda.c; all still counting the driver's start as load time). Host
 * sinks decode in place and leave them untouched. */
#define COLD_BUFS_PER_THREAD 4u
/* Cold frames read at once. A rotational disk serves one sequential stream
 * best, and it is where the cold tier is meant to live; flash wants many
 * reads in flight. The 2-vCPU box's virtio disk says it is rotational, and
 * it is: fio read its cold files at 2.06-2.56 GB/s with 2 or 4 reads of
 * 1 MiB in flight against 1.44-1.83 with 16, and cold loads into a
 * resident buffer ran 2.95-3.14 GB/s raw with 2 readers, 2.77-2.83 with 4
 * and 2.19-2.37 with 8 or 16 (interleaved, medians of 6-10 rounds), and
 * again 2.77 with 2 against 2.49 with 4 (10 rounds, 2026-11-30; the H200
 * machine's disk: 3.11 against 2.95 to cuda:0; docs/BENCHMARKS.md). A frame
 * holds 1-4 MiB raw, about two thirds of that stored, so 2 reads still span
 * a few chunks of a striped array. */
#define COLD_READS_ROTATIONAL 2u
#define COLD_READS_FLASH 16u

struct qv_load {
	qv_version *v;           /* owns the names the tensor table points at */
	qv_load_tensor *tensors;
	size_t n_tensors;
	qv_load_stats stats;
	void *arena;
	int owns_arena;
};

/* ---- the test hook ---------------------------------------------------------------- */
static uint64_t fault_k;
static enum qv_fault_kind fault_kind;

void qv_load_fault_set(uint64_t k, enum qv_fault_kind kind)
{
	fault_k = k;
	fault_kind = kind;
}

enum qv_fault_kind qv__fault_check(uint64_t k)
{
	return fault_k && k == fault_k ? fault_kind : QV_FAULT_NONE;
}

/* ---- the plan ------------------------------------------------------------------------- */
struct plan {
	struct qv__target *t;
	size_t n, cap;
	uint8_t (*digest)[QV_DIGEST_LEN];   /* per target */
	size_t *map;                        /* open addressing: digest -> target */
	size_t mask;
	uint64_t arena_bytes;
	/* filled by open_targets: the hot targets for the engine (copies that
	 * share t[]'s descriptors) and the cold ones for the decode path */
	struct qv__target *hot;
	size_t n_hot;
	struct qv__cold_target *cold;
	size_t n_cold;
	uint64_t cold_raw;
};

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->t[i].fd >= 0)
			close(p->t[i].fd);
	for (size_t i = 0; i < p->n_cold; i++) {
		if (p->cold[i].direct_fd >= 0)
			close(p->cold[i].direct_fd);
		qv_codec_header_destroy(p->cold[i].hdr);
	}
	free(p->cold);
	free(p->hot);
	free(p->t);
	free(p->digest);
	free(p->map);
	memset(p, 0, sizeof(*p));
}

/* Index of the target for shard d, adding it if new. */
static int plan_target(qv_store *s, struct plan *p, const uint8_t d[QV_DIGEST_LEN], size_t *idx)
{
	uint64_t h;
	memcpy(&h, d, sizeof(h));
	size_t j = h & p->mask;
	for (; p->map[j] != SIZE_MAX; j = (j + 1) & p->mask)
		if (memcmp(p->digest[p->map[j]], d, QV_DIGEST_LEN) == 0) {
			*idx = p->map[j];
			return 0;
		}
	qv_shard_info info;
	int rc = qv_shard_info_get(s, d, &info);
	if (rc)
		return rc == QV_ENOTFOUND ? QV_ECORRUPT : rc;
	if (!((info.tier == QV_TIER_HOT && info.codec == QV_CODEC_RAW) ||
	      (info.tier == QV_TIER_COLD && info.codec == QV_CODEC_FRAMES)))
		return qv_store_fail(s, -ENOTSUP, "shard on tier %d with codec %d: not loadable",
		                     info.tier, info.codec);
	struct qv__target *t = &p->t[p->n];
	memset(t, 0, sizeof(*t));
	t->tier = info.tier;
	t->fd = -1;
	t->fixed = -1;
	t->size = info.size;
	t->xxh3 = info.xxh3;
	t->dest_off = (p->arena_bytes + QV_IO_ALIGN - 1) / QV_IO_ALIGN * QV_IO_ALIGN;
	char hex[QV_HEX_LEN + 1];
	qv_digest_hex(d, hex);
	snprintf(t->name, sizeof(t->name), "%.16s", hex);
	memcpy(p->digest[p->n], d, QV_DIGEST_LEN);
	p->arena_bytes = t->dest_off + info.size;
	p->map[j] = p->n;
	*idx = p->n++;
	return 0;
}

/* Builds the plan and, if table != NULL, the tensor table (ptr = offset). */
static int plan_make(qv_store *s, const qv_version *v, struct plan *p, qv_load_tensor **table,
                     size_t *n_tensors)
{
	size_t total = 0;
	for (size_t i = 0; i < v->n_files; i++)
		total += v->files[i].n_tensors;
	size_t cap = 16;
	while (cap < 2 * total)
		cap *= 2;
	memset(p, 0, sizeof(*p));
	p->t = malloc((total ? total : 1) * sizeof(*p->t));
	p->digest = malloc((total ? total : 1) * QV_DIGEST_LEN);
	p->map = malloc(cap * sizeof(size_t));
	qv_load_tensor *tab = table ? calloc(total ? total : 1, sizeof(*tab)) : NULL;
	if (!p->t || !p->digest || !p->map || (table && !tab)) {
		free(tab);
		plan_free(p);
		return qv_store_fail(s, -ENOMEM, "out of memory");
	}
	memset(p->map, 0xff, cap * sizeof(size_t));
	p->mask = cap - 1;
	size_t k = 0;
	for (size_t i = 0; i < v->n_files; i++) {
		const qv_file *f = &v->files[i];
		for (size_t j = 0; j < f->n_tensors; j++) {
			const qv_tensor *x = &f->tensors[j];
			size_t ti = 0;
			int rc = plan_target(s, p, x->shard, &ti);
			if (rc) {
				free(tab);
				plan_free(p);
				return rc;
			}
			if (!tab)
				continue;
			qv_load_tensor *lt = &tab[k++];
			lt->name = x->name;
			lt->file = f->name;
			memcpy(lt->dtype, x->dtype, sizeof(lt->dtype));
			lt->ndim = x->ndim;
			memcpy(lt->shape, x->shape, sizeof(lt->shape));
			lt->bytes = x->bytes;
			lt->offset = p->t[ti].dest_off + x->shard_offset;
		}
	}
	if (table) {
		*table = tab;
		*n_tensors = k;
	}
	return 0;
}

int qv_load_size(qv_store *s, const char *model, const char *ref, uint64_t *bytes)
{
	qv_version *v;
	struct plan p;
	int rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	if (rc)
		return rc;
	rc = plan_make(s, v, &p, NULL, NULL);
	if (rc == 0) {
		*bytes = p.arena_bytes;
		plan_free(&p);
	}
	qv_version_free(v);
	return rc;
}

/* ---- files and the page cache ---------------------------------------------------------- */
/* Opens a cold target: a buffered descriptor for the header (and as the
 * fallback; open_cold_files may have opened it already), and with direct an
 * O_DIRECT one for the frames where the file system allows. */
static int open_cold(qv_store *s, struct plan *p, size_t i, struct qv__cold_target *ct,
                     int direct)
{
	struct qv__target *t = &p->t[i];
	char path[PATH_MAX];
	struct stat st;
	memset(ct, 0, sizeof(*ct));
	ct->direct_fd = -1;
	ct->dest_off = t->dest_off;
	memcpy(ct->name, t->name, sizeof(ct->name));
	qv_shard_path_tier(s, p->digest[i], QV_TIER_COLD, path, sizeof(path));
	if (t->fd < 0)
		t->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (t->fd < 0)
		return qv_store_fail(s, errno == ENOENT ? QV_ECORRUPT : -errno, "cold shard %s: %s: %s",
		                     t->name, path, strerror(errno));
	ct->fd = t->fd;
	if (fstat(t->fd, &st) < 0)
		return qv_store_fail(s, -errno, "%s: %s", path, strerror(errno));
	int rc = qv_codec_header_read(t->fd, (uint64_t)st.st_size, &ct->hdr);
	if (rc == 0 && ct->hdr->raw_size != t->size)
		rc = QV_ECORRUPT;
	const char *sw = rc == QV_ECORRUPT || rc == QV_EFORMAT
	                         ? qv_shard_size_why(s, p->digest[i], QV_TIER_COLD, (uint64_t)st.st_size)
	                         : NULL;
	if (sw)
		return qv_store_fail(s, QV_ECORRUPT, "cold shard %s is damaged: %s, %llu bytes", t->name,
		                     sw, (unsigned long long)st.st_size);
	if (rc)
		return qv_store_fail(s, rc == QV_EFORMAT ? QV_ECORRUPT : rc,
		                     "cold shard %s is damaged (%s)", t->name, qv_strerror(rc));
	if (direct)
		ct->direct_fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	return 0;
}

/* Closes what an earlier pass opened, then opens every cold file and asks
 * the kernel for its first page (header and frame table) at once, before
 * open_cold reads the headers one by one: the disk (an HDD, for the cold
 * tier) sorts the requests instead of seeking for each file in turn. A file
 * that does not open here is left to open_cold, which reports it. */
static void open_cold_files(qv_store *s, struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		struct qv__target *t = &p->t[i];
		char path[PATH_MAX];
		if (t->fd >= 0)
			close(t->fd);
		t->fd = -1;
		if (t->tier != QV_TIER_COLD)
			continue;
		qv_shard_path_tier(s, p->digest[i], QV_TIER_COLD, path, sizeof(path));
		t->fd = open(path, O_RDONLY | O_CLOEXEC);
		if (t->fd >= 0)
			(void)posix_fadvise(t->fd, 0, QV_CODEC_ALIGN, POSIX_FADV_WILLNEED);
	}
}

static int open_targets(qv_store *s, struct plan *p, int direct)
{
	/* each shard takes a descriptor, a cold one two (buffered and
	 * O_DIRECT), whatever tier the opens below find it on */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
	    rl.rlim_cur < 2 * p->n + 256) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	for (size_t i = 0; i < p->n_cold; i++) {
		if (p->cold[i].direct_fd >= 0)
			close(p->cold[i].direct_fd);
		qv_codec_header_destroy(p->cold[i].hdr);
	}
	free(p->cold);
	free(p->hot);
	p->cold = NULL;
	p->hot = NULL;
	p->n_cold = p->n_hot = 0;
	p->cold_raw = 0;
	p->hot = malloc((p->n ? p->n : 1) * sizeof(*p->hot));
	p->cold = malloc((p->n ? p->n : 1) * sizeof(*p->cold));
	if (!p->hot || !p->cold)
		return qv_store_fail(s, -ENOMEM, "out of memory");
	open_cold_files(s, p);
	for (size_t i = 0; i < p->n; i++) {
		struct qv__target *t = &p->t[i];
		char path[PATH_MAX];
		for (int attempt = 0;; attempt++) {
			int rc = 0;
			if (t->tier == QV_TIER_COLD) {
				rc = open_cold(s, p, i, &p->cold[p->n_cold], direct);
				if (rc == 0) {
					p->n_cold++;
					p->cold_raw += t->size;
					break;
				}
				if (p->cold[p->n_cold].direct_fd >= 0)
					close(p->cold[p->n_cold].direct_fd);
				qv_codec_header_destroy(p->cold[p->n_cold].hdr);
				if (t->fd >= 0)
					close(t->fd);
				t->fd = -1;
			} else {
				qv_shard_path(s, p->digest[i], path, sizeof(path));
				t->fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
				if (t->fd >= 0 || errno != ENOENT)
					break;
				rc = qv_store_fail(s, QV_ECORRUPT, "shard %s is missing (%s)", t->name, path);
			}
			/* Gone from where the plan saw it: a migration may have moved it
			 * meanwhile. Re-resolve once. */
			qv_shard_info info;
			if (attempt > 0 || qv_shard_info_get(s, p->digest[i], &info) || info.tier == t->tier)
				return rc;
			t->tier = info.tier;
		}
		if (t->tier == QV_TIER_COLD)
			continue;
		if (t->fd < 0) {
			int e = errno;
			if (e == EINVAL && direct)
				return QV__EDIRECT;
			if (e == EMFILE || e == ENFILE)
				return qv_store_fail(s, -e, "%zu shard files exceed the open-file limit", p->n);
			return qv_store_fail(s, -e, "%s: %s", path, strerror(e));
		}
		struct stat st;
		if (fstat(t->fd, &st) < 0)
			return qv_store_fail(s, -errno, "%s: %s", path, strerror(errno));
		if ((uint64_t)st.st_size != t->size)
			return qv_store_fail(s, QV_ECORRUPT,
			                     "shard %s is %llu bytes on disk, the index says %llu", t->name,
			                     (unsigned long long)st.st_size, (unsigned long long)t->size);
		p->hot[p->n_hot++] = *t;
	}
	return 0;
}

/* Fraction of the targets' bytes in the page cache (cachestat, else mincore). */
/* Adds fd's pages (size bytes) and how many of them are in the page cache. */
static void count_cached(int fd, uint64_t size, uint64_t *pages, uint64_t *cached)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t np = (size + (uint64_t)pg - 1) / (uint64_t)pg;
	if (np == 0)
		return;
	*pages += np;
#ifdef SYS_cachestat
	struct { uint64_t off, len; } range = {0, 0};
	struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } cs;
	if (syscall(SYS_cachestat, fd, &range, &cs, 0) == 0) {
		*cached += cs.nr_cache;
		return;
	}
#endif
	void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return;
	unsigned char *vec = malloc(np);
	if (vec && mincore(m, size, vec) == 0)
		for (uint64_t k = 0; k < np; k++)
			*cached += vec[k] & 1;
	free(vec);
	munmap(m, size);
}

/* The share of the version's files (hot shards, cold files) in the page cache. */
static double cached_fraction(const struct plan *p)
{
	uint64_t pages = 0, cached = 0;
	for (size_t i = 0; i < p->n_hot; i++)
		count_cached(p->hot[i].fd, p->hot[i].size, &pages, &cached);
	for (size_t i = 0; i < p->n_cold; i++)
		count_cached(p->cold[i].fd, p->cold[i].hdr->file_size, &pages, &cached);
	return pages ? (double)cached / (double)pages : 1.0;
}

/* ---- the load --------------------------------------------------------------------------- */
static int check_opts(qv_store *s, const qv_load_opts *o, unsigned *qd, size_t *chunk)
{
	*qd = o->qd ? o->qd : DEFAULT_QD;
	*chunk = o->chunk_bytes ? o->chunk_bytes : DEFAULT_CHUNK;
	if (*qd > QV_LOAD_QD_MAX)
		return qv_store_fail(s, -EINVAL, "queue depth %u is over the limit of %u", *qd,
		                     QV_LOAD_QD_MAX);
	if (*chunk < QV_LOAD_CHUNK_MIN || *chunk > QV_LOAD_CHUNK_MAX || *chunk % QV_IO_ALIGN)
		return qv_store_fail(s, -EINVAL,
		                     "chunk size %zu must be a multiple of 4096 between %u and %u", *chunk,
		                     QV_LOAD_CHUNK_MIN, QV_LOAD_CHUNK_MAX);
	if (o->io > QV_IO_BUFFERED)
		return qv_store_fail(s, -EINVAL, "unknown io mode %d", (int)o->io);
	if ((unsigned)o->host_pages > QV_HOST_PAGES_HUGE)
		return qv_store_fail(s, -EINVAL, "unknown host page setting %d", (int)o->host_pages);
	return 0;
}

static int make_arena(qv_store *s, const qv_load_opts *o, qv_load *l, void *dest,
                      uint64_t dest_bytes, uint64_t need)
{
	if (dest) {
		if (dest_bytes < need)
			return qv_store_fail(s, QV_ELIMIT,
			                     "the destination holds %llu bytes, the version needs %llu",
			                     (unsigned long long)dest_bytes, (unsigned long long)need);
		l->arena = dest;
		return 0;
	}
	size_t bytes = need ? (size_t)need : QV_IO_ALIGN;
	if (o->device == QV_DEVICE_CPU) {
		enum qv_host_pages pages = o->host_pages ? o->host_pages : qv__host_pages_auto(bytes);
		void *p = qv__host_arena(bytes, pages);
		if (!p)
			return qv_store_fail(s, -errno, "cannot allocate %zu bytes of host memory: %s", bytes,
			                     strerror(errno));
		l->arena = p;
		l->stats.host_pages = pages;
	} else {
		size_t fr = 0, tot = 0;
		if (qv_gpu_mem_info(o->device, &fr, &tot) == 0 && fr < bytes)
			return qv_store_fail(s, -ENOMEM,
			                     "the version needs %zu bytes of GPU memory; cuda:%d has %zu free of %zu",
			                     bytes, o->device, fr, tot);
		int rc = qv_gpu_alloc(o->device, bytes, &l->arena);
		if (rc)
			return qv_store_fail(s, rc, "cannot allocate %zu bytes on cuda:%d: %s", bytes,
			                     o->device, strerror(-rc));
	}
	l->owns_arena = 1;
	l->stats.arena_bytes = bytes;
	return 0;
}

static void free_arena(qv_load *l)
{
	if (!l->owns_arena || !l->arena)
		return;
	if (l->stats.device == QV_DEVICE_CPU)
		munmap(l->arena, l->stats.arena_bytes);
	else
		qv_gpu_free(l->stats.device, l->arena);
	l->arena = NULL;
}

/* Reads the hot shards. t0: when the load began (first_tensor_seconds
 * counts from it, as for cold frames). */
static int run_engine(qv_store *s, const qv_load_opts *o, struct plan *p, qv_sink *sink,
                      char *ring, unsigned qd, size_t chunk, int direct, int use_uring,
                      qv_load_stats *stats, double t0)
{
	struct qv__backend *be = NULL;
	char err[512] = "";
	int rc = 0;
	if (p->n_hot == 0) {
		stats->engine = "none"; /* every shard is cold: the decode workers read them */
		return 0;
	}
	if (use_uring) {
		rc = qv__uring_create(qd, ring, chunk, p->hot, p->n_hot, &be, err, sizeof(err));
		if (rc)
			be = NULL; /* io_uring unavailable: fall back below */
	}
	if (!be) {
		rc = qv__pread_create(qd < 16 ? qd : 16, qd, &be);
		if (rc)
			return qv_store_fail(s, rc, "cannot start the read threads: %s", strerror(-rc));
	}
	struct qv__engine_cfg cfg = {qd,          chunk,           direct,     o->verify,
	                             o->progress, o->progress_arg, p->cold_raw};
	struct qv__engine_stats st = {.reads = stats->reads};
	double t_engine = qv__stream_now() - t0;
	rc = qv__engine_run(&cfg, be, p->hot, p->n_hot, sink, ring, &st, err, sizeof(err));
	stats->engine = be->name;
	be->destroy(be);
	stats->reads = st.reads;
	if (rc && rc != QV__EDIRECT)
		return qv_store_fail(s, rc, "%s", err);
	stats->bytes = st.bytes;
	if (p->t[0].tier == QV_TIER_HOT)
		stats->first_tensor_seconds = t_engine + st.first_done_s;
	return rc;
}

/* 1 if the file is on a disk the kernel calls rotational, 0 if on another
 * block device, -1 if unknown (tmpfs, overlay, a file system over several
 * devices: st_dev is then not a block device's). */
static int on_rotational_disk(int fd)
{
	static const char *const queue[] = {"queue", "../queue"}; /* a disk, a partition */
	struct stat st;

	if (fstat(fd, &st) != 0 || major(st.st_dev) == 0)
		return -1;
	for (size_t i = 0; i < sizeof(queue) / sizeof(queue[0]); i++) {
		char path[96];
		snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/%s/rotational",
		         major(st.st_dev), minor(st.st_dev), queue[i]);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		int c = fgetc(f);
		fclose(f);
		if (c == '0' || c == '1')
			return c == '1';
	}
	return -1;
}

/* Decodes the cold targets into the sink (slots after the ring's). */
static int run_cold(qv_store *s, const qv_load_opts *o, struct plan *p, qv_sink *sink,
                    unsigned slot_base, unsigned threads, char *bufs, size_t buf_bytes,
                    qv_load_stats *stats, double t_engine)
{
	char err[512] = "";
	struct qv__cold_stats cs = {0};
	if (p->n_cold == 0)
		return 0;
	uint64_t total = stats->bytes + p->cold_raw;
	/* the cold tier is one folder: its first file's disk holds them all */
	unsigned readers = o->cold_reads                        ? o->cold_reads
	                   : on_rotational_disk(p->cold[0].fd) == 1 ? COLD_READS_ROTATIONAL
	                                                            : COLD_READS_FLASH;
	if (readers > QV_LOAD_COLD_READS_MAX)
		readers = QV_LOAD_COLD_READS_MAX;
	int rc = qv__cold_run(p->cold, p->n_cold, threads, readers, sink, slot_base,
	                      threads * COLD_BUFS_PER_THREAD, bufs, buf_bytes, &cs, o->progress,
	                      o->progress_arg, stats->bytes, total, err, sizeof(err));
	if (rc)
		return qv_store_fail(s, rc, "%s", err);
	stats->bytes += cs.bytes;
	stats->cold_bytes = cs.bytes;
	stats->cold_gpu_bytes = cs.sink_merged_bytes;
	stats->decode_threads = threads;
	stats->cold_reads = readers;
	stats->cold_io = cs.buffered_frames ? QV_IO_BUFFERED : QV_IO_DIRECT;
	if (p->t[0].tier == QV_TIER_COLD)
		stats->first_tensor_seconds = t_engine + cs.first_done_s;
	return 0;
}

int qv_load_run(qv_store *s, const char *model, const char *ref, void *dest, uint64_t dest_bytes,
                const qv_load_opts *opts, qv_load **out)
{
	static const qv_load_opts defaults = {.device = QV_DEVICE_CPU};
	const qv_load_opts *o = opts ? opts : &defaults;
	double t0 = qv__stream_now();
	struct plan p = {0};
	qv_sink *sink = NULL;
	struct qv__prefault *pf = NULL;
	char *ring = NULL, *cold_bufs = NULL;
	int pinned = 0, cold_pinned = 0, caller_device = -1;
	size_t cold_len = 0, cold_buf = 0;
	unsigned qd, ring_slots = 0;
	size_t chunk;
	int rc;

	*out = NULL;
	qv_load *l = calloc(1, sizeof(*l));
	if (!l)
		return qv_store_fail(s, -ENOMEM, "out of memory");
	l->stats.device = o->device;
	rc = check_opts(s, o, &qd, &chunk);
	if (rc)
		goto out;
	if (o->device != QV_DEVICE_CPU) {
		/* the driver starts in the first CUDA call, here: device init
		 * counts from it (H200: 0.16-0.26 s before the context) */
		double ti = qv__stream_now();
		caller_device = qv_gpu_current_device(); /* put back at the end */
		const char *why = "";
		int n = qv_gpu_device_count(&why);
		if (!qv_gpu_built_with_cuda()) {
			rc = qv_store_fail(s, -ENOTSUP, "cuda:%d requested, but quiver was built without CUDA",
			                   o->device);
			goto out;
		}
		if (o->device < 0 || o->device >= n) {
			rc = qv_store_fail(s, -ENODEV, "no device cuda:%d (%d found%s%s)", o->device, n,
			                   *why ? ": " : "", why);
			goto out;
		}
		rc = qv_gpu_init(o->device);
		if (rc) {
			rc = qv_store_fail(s, rc, "cannot start CUDA on cuda:%d", o->device);
			goto out;
		}
		l->stats.device_init_seconds = qv__stream_now() - ti;
	}
	rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &l->v);
	if (rc)
		goto out;
	rc = plan_make(s, l->v, &p, &l->tensors, &l->n_tensors);
	if (rc)
		goto out;
	rc = make_arena(s, o, l, dest, dest_bytes, p.arena_bytes);
	if (rc)
		goto out;
	if (!l->owns_arena)
		l->stats.arena_bytes = dest_bytes;

	int direct = o->io != QV_IO_BUFFERED;
	rc = open_targets(s, &p, direct);
	if (rc == 0 && o->io == QV_IO_AUTO && cached_fraction(&p) >= CACHED_ENOUGH) {
		direct = 0;
		rc = open_targets(s, &p, 0);
	}
	if (rc == QV__EDIRECT) {
		direct = 0;
		rc = open_targets(s, &p, 0);
	}
	if (rc)
		goto out;
	/* reads that go to the disk (O_DIRECT); the hot tier is one folder: its
	 * first file's disk holds them all. Reads from the page cache are
	 * copies, which more in flight speed up (H200: warm loads to cuda:0
	 * 15-20 GB/s at 16, 6.4-7.9 at 4) */
	unsigned qd_buffered = qd; /* if O_DIRECT is refused after all */
	if (!o->qd && o->device != QV_DEVICE_CPU && direct && p.n_hot > 0 &&
	    on_rotational_disk(p.hot[0].fd) == 1)
		qd = HOT_QD_ROTATIONAL_GPU;
	ring_slots = qd > qd_buffered ? qd : qd_buffered;
	if (o->device == QV_DEVICE_CPU && direct && p.n_hot > 0)
		qv__prefault_start(l->arena, p.arena_bytes, &pf); /* best effort, see prefault.c */

	unsigned threads = 0;
	if (p.n_cold) {
		/* one decoder a core this process may run on (taskset, cpusets):
		 * cold.c reads ahead on threads of its own */
		cpu_set_t set;
		long cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set)
		                                                           : sysconf(_SC_NPROCESSORS_ONLN);
		threads = o->decode_threads ? o->decode_threads : cores < 1 ? 1u : (unsigned)cores;
		if (threads > QV_COLD_THREADS_MAX)
			threads = QV_COLD_THREADS_MAX;
		for (size_t i = 0; i < p.n_cold; i++) /* a buffer holds a frame's raw bytes */
			if (p.cold[i].hdr->frame_bytes > cold_buf)
				cold_buf = p.cold[i].hdr->frame_bytes;
		cold_len = (size_t)threads * COLD_BUFS_PER_THREAD * cold_buf;
		rc = qv_pinned_alloc(cold_len, o->device != QV_DEVICE_CPU, (void **)&cold_bufs,
		                     &cold_pinned);
		if (rc) {
			rc = qv_store_fail(s, rc, "cannot allocate the decode buffers: %s", strerror(-rc));
			goto out;
		}
	}
	/* the read ring serves hot shards only */
	rc = p.n_hot == 0 ? 0
	                  : qv_pinned_alloc((size_t)ring_slots * chunk, o->device != QV_DEVICE_CPU,
	                                    (void **)&ring, &pinned);
	if (rc) {
		rc = qv_store_fail(s, rc, "cannot allocate the %zu-byte read ring: %s",
		                   (size_t)ring_slots * chunk, strerror(-rc));
		goto out;
	}
	unsigned n_slots = ring_slots + threads * COLD_BUFS_PER_THREAD;
	rc = o->device == QV_DEVICE_CPU
		? qv_sink_host_create(l->arena, l->stats.arena_bytes, n_slots, &sink)
		: qv_sink_cuda_create(o->device, l->arena, l->stats.arena_bytes, n_slots,
		                      o->cuda_streams ? o->cuda_streams : DEFAULT_STREAMS, &sink);
	if (rc) {
		rc = qv_store_fail(s, rc, "cannot create the %s sink: %s",
		                   o->device == QV_DEVICE_CPU ? "host" : "CUDA", strerror(-rc));
		goto out;
	}
	rc = run_engine(s, o, &p, sink, ring, qd, chunk, direct, direct, &l->stats, t0);
	if (rc == QV__EDIRECT) { /* O_DIRECT refused on the first read */
		direct = 0;
		/* copies out of ring slots may still run: a fresh engine would
		 * refill them */
		rc = qv_sink_finish(sink) ? qv_store_fail(s, -EIO, "%s", qv_sink_errmsg(sink)) : 0;
		if (rc == 0)
			rc = open_targets(s, &p, 0);
		/* the opens resolve each shard again: one demoted meanwhile needs
		 * decode buffers that were sized for the first look */
		for (size_t i = 0; rc == 0 && i < p.n_cold; i++)
			if (threads == 0 || p.cold[i].hdr->frame_bytes > cold_buf)
				rc = qv_store_fail(s, QV_ECHANGED,
				                   "%s@%s: shards moved to the cold tier during the load; "
				                   "load again", model, l->v->label);
		qd = qd_buffered; /* page-cache copies gain from more in flight */
		if (rc == 0)
			rc = run_engine(s, o, &p, sink, ring, qd, chunk, 0, 0, &l->stats, t0);
	}
	if (rc == 0)
		rc = run_cold(s, o, &p, sink, ring_slots, threads, cold_bufs, cold_buf, &l->stats,
		              qv__stream_now() - t0);
	if (rc == 0 && (rc = qv_sink_finish(sink)) != 0) /* a frame merged there may be damaged */
		rc = qv_store_fail(s, rc == QV_ECORRUPT ? QV_ECORRUPT : -EIO, "%s", qv_sink_errmsg(sink));
	qv__prefault_stop(pf);
	pf = NULL;
	if (rc)
		goto out;
	for (size_t i = 0; i < l->n_tensors; i++)
		l->tensors[i].ptr = (char *)l->arena + l->tensors[i].offset;
	qv_version_touch(s, l->v->model, l->v->label); /* for the tier policy; best effort */
	l->stats.tensors = l->n_tensors;
	l->stats.io = direct ? QV_IO_DIRECT : QV_IO_BUFFERED;
	l->stats.qd = qd;
	l->stats.chunk_bytes = chunk;
	l->stats.seconds = qv__stream_now() - t0;
out:
	qv__prefault_stop(pf);
	qv_sink_destroy(sink);
	qv_pinned_free(ring, (size_t)ring_slots * chunk, pinned);
	qv_pinned_free(cold_bufs, cold_len, cold_pinned);
	plan_free(&p);
	if (caller_device >= 0)
		qv_gpu_restore_device(caller_device);
	if (rc) {
		qv_load_destroy(l);
		return rc;
	}
	*out = l;
	return 0;
}

const qv_load_tensor *qv_load_tensors(const qv_load *l, size_t *n)
{
	*n = l->n_tensors;
	return l->tensors;
}

const qv_load_stats *qv_load_get_stats(const qv_load *l)
{
	return &l->stats;
}

void *qv_load_arena(const qv_load *l)
{
	return l->arena;
}

void qv_load_destroy(qv_load *l)
{
	if (!l)
		return;
	free_arena(l);
	free(l->tensors);
	qv_version_free(l->v);
	free(l);
}
