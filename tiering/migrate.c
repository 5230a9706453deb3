/* Migrations between the hot and cold tiers, and the cold reader.
 *
 * The one idea: the index names exactly one location per shard, and it moves
 * only after the new copy is durable (write temp on the target tier's file
 * system, fsync, rename, fsync the folder, commit), and the old copy goes
 * only after the commit. So at every instant the index points at a complete
 * copy; a crash leaves at most an extra copy or a temp file for each of the
 * two shards a migration has in flight, which gc removes. Migrations
 * hold the store's writer lock (shared), so gc never runs between a rename
 * and its commit, and root/migrate.lock (exclusive), so no other migration
 * moves a shard between this one's look at it and its unlink of the old
 * copy. Which shards must stay hot is decided under that lock, at a
 * protection epoch the commit checks (qv_shard_relocate): a version
 * protected meanwhile (activate, alias, pin) makes the migration decide
 * again. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "quiver/codec.h"
#include "quiver/tier.h"
#include "tier_int.h"

double qv__tier_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- per-version shard lists ------------------------------------------------------ */

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, QV_DIGEST_LEN);
}

void qv__dlist_free(struct qv__dlist *l)
{
	free(l->d);
	free(l->dtype);
	memset(l, 0, sizeof(*l));
}

/* The distinct shards of v (manifest needed), sorted, each with the codec
 * dtype class of what it holds: a pack of tensors of several classes gets
 * the float class with the most bytes, and QV_CODEC_MIXED (its frames then
 * also try plain zstd and keep the smaller). */
int qv__version_shards(const qv_version *v, struct qv__dlist *out)
{
	size_t total = 0;
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < v->n_files; i++)
		total += v->files[i].safetensors ? v->files[i].n_tensors : 1;
	struct ent {
		uint8_t d[QV_DIGEST_LEN];
		int dtype;
		uint64_t bytes;
	} *e = malloc((total ? total : 1) * sizeof(*e));
	if (!e)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < v->n_files; i++) {
		const qv_file *f = &v->files[i];
		if (!f->safetensors) {
			memcpy(e[k].d, f->blob, QV_DIGEST_LEN);
			e[k].bytes = f->size;
			e[k++].dtype = QV_CODEC_PLAIN;
			continue;
		}
		for (size_t t = 0; t < f->n_tensors; t++) {
			memcpy(e[k].d, f->tensors[t].shard, QV_DIGEST_LEN);
			e[k].bytes = f->tensors[t].bytes;
			e[k++].dtype = qv_codec_dtype_from_name(f->tensors[t].dtype);
		}
	}
	qsort(e, k, sizeof(*e), cmp_digest);
	out->d = malloc((k ? k : 1) * QV_DIGEST_LEN);
	out->dtype = malloc((k ? k : 1) * sizeof(int));
	if (!out->d || !out->dtype) {
		free(e);
		qv__dlist_free(out);
		return -ENOMEM;
	}
	for (size_t i = 0, j; i < k; i = j) {
		uint64_t by[QV_CODEC_F32 + 1] = {0};
		int classes = 0, best = QV_CODEC_PLAIN;
		for (j = i; j < k && memcmp(e[j].d, e[i].d, QV_DIGEST_LEN) == 0; j++) {
			classes += by[e[j].dtype] == 0;
			by[e[j].dtype] += e[j].bytes ? e[j].bytes : 1;
		}
		/* the float class with the most bytes: its planes may suit the
		 * others too (small integers), and plain zstd is tried as well */
		for (int c = QV_CODEC_PLAIN + 1; c <= QV_CODEC_F32; c++)
			if (by[c] > 0 && (best == QV_CODEC_PLAIN || by[c] > by[best]))
				best = c;
		memcpy(out->d[out->n], e[i].d, QV_DIGEST_LEN);
		out->dtype[out->n++] = best | (classes > 1 ? QV_CODEC_MIXED : 0);
	}
	free(e);
	return 0;
}

int qv__dlist_has(const struct qv__dlist *l, const uint8_t d[QV_DIGEST_LEN])
{
	return l->n && bsearch(d, l->d, l->n, QV_DIGEST_LEN, cmp_digest) != NULL;
}

/* ---- moving one shard ----------------------------------------------------------------- */

/* fsyncs the folder that holds path. */
static int fsync_path_dir(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return -EINVAL;
	*slash = 0;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

/* mkdir dir; if it made it, fsyncs its parent so the new entry is durable. */
static int mkdir_durable(const char *dir)
{
	if (mkdir(dir, 0755) < 0)
		return errno == EEXIST ? 0 : -errno;
	return fsync_path_dir(dir);
}

/* Makes the two fan-out folders above shard_path (shards/ab/cd), each
 * durable before the shard is renamed into it. */
static int make_fanout(const char *shard_path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", shard_path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return -EINVAL;
	*slash = 0;
	struct stat st;
	if (stat(dir, &st) == 0)
		return 0;
	char parent[PATH_MAX];
	snprintf(parent, sizeof(parent), "%s", dir);
	*strrchr(parent, '/') = 0;
	int rc = mkdir_durable(parent);
	return rc ? rc : mkdir_durable(dir);
}

/* Where a shard's move stands, for the migration's progress. */
struct shard_progress {
	struct qv__tier_progress *pg;
	uint64_t before; /* bytes the migration had moved when this shard began */
};

/* Tells pg->fn done, clamped between what it was told before and total. */
static void progress_report(struct qv__tier_progress *pg, uint64_t done)
{
	if (!pg->fn)
		return;
	if (done > pg->total)
		done = pg->total;
	if (done < pg->reported) /* a shard moved again, a version that failed */
		done = pg->reported;
	pg->reported = done;
	pg->fn(pg->arg, done, pg->total);
}

static void shard_progress(void *arg, uint64_t raw_done)
{
	struct shard_progress *sp = arg;
	progress_report(sp->pg, sp->before + raw_done);
}

/* A frame of a cold copy is written: start writing out what is dirty, so
 * the fsync before the rename waits for the last frames only (1.07 GB
 * demotes, 5 interleaved pairs: 4.72-5.27 s against 5.47-6.02), and report
 * progress. The write-out is a hint: the fsync reports what fails. */
struct encode_frame {
	int out_fd;
	struct shard_progress *sp;
};

static void encoded_frame(void *arg, uint64_t raw_done)
{
	struct encode_frame *ef = arg;
	(void)sync_file_range(ef->out_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	if (ef->sp)
		shard_progress(ef->sp, raw_done);
}

/* Where decode_to_fd's frames go: the hot copy, and the shard's SHA-256. */
struct hot_copy {
	int out_fd;
	int direct_fd;     /* the same file with O_DIRECT, or -1 */
	atomic_int direct; /* no direct write refused yet */
	size_t align;      /* what a direct write must be aligned to */
	EVP_MD_CTX *md;
	struct shard_progress *sp;
};

/* Writes a frame, on the thread that decoded it: with O_DIRECT where the
 * file system takes it and the frame is block-aligned (all but a shard's
 * tail), else through the page cache. Frames go out as they come, several
 * at once, so the disk is kept busy while the caller hashes. */
static int hot_copy_write(void *arg, uint64_t raw_off, const void *raw, size_t len)
{
	struct hot_copy *hc = arg;
	int rc;

	if (hc->direct_fd >= 0 && atomic_load(&hc->direct) && (uintptr_t)raw % hc->align == 0 &&
	    len % hc->align == 0 && raw_off % hc->align == 0) {
		rc = qv__tier_pwrite_full(hc->direct_fd, raw, len, raw_off);
		if (rc != -EINVAL)
			return rc;
		atomic_store(&hc->direct, 0); /* refused: through the page cache */
	}
	rc = qv__tier_pwrite_full(hc->out_fd, raw, len, raw_off);
	/* start writing it out now, so the fsync before the rename waits for
	 * the last frames only. A hint: the fsync reports what fails. */
	if (rc == 0)
		(void)sync_file_range(hc->out_fd, (off_t)raw_off, (off_t)len, SYNC_FILE_RANGE_WRITE);
	return rc;
}

/* Hashes a frame, in order on the calling thread, and reports progress. */
static int hot_copy_hash(void *arg, uint64_t raw_off, const void *raw, size_t len)
{
	struct hot_copy *hc = arg;

	if (EVP_DigestUpdate(hc->md, raw, len) != 1)
		return -ENOMEM;
	if (hc->sp)
		shard_progress(hc->sp, raw_off + len);
	return 0;
}

/* Writes the decoded raw bytes of cold file in_fd (header hdr) to out_fd,
 * the new file tmp, checking every frame's XXH3 and the whole shard's
 * SHA-256 against d. Frames decode and are written on several threads
 * while this one hashes them. */
static int decode_to_fd(int in_fd, const struct qv_codec_header *hdr, int out_fd, const char *tmp,
                        const uint8_t d[QV_DIGEST_LEN], struct shard_progress *sp)
{
	struct hot_copy hc = {.out_fd = out_fd,
	                      .direct_fd = open(tmp, O_WRONLY | O_CLOEXEC | O_DIRECT),
	                      .md = EVP_MD_CTX_new(),
	                      .sp = sp};
	int rc = hc.md && EVP_DigestInit_ex(hc.md, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;

	/* whole pages too, so that a buffered tail never shares a page with
	 * a direct write (pages larger than 4 KiB) */
	long page = sysconf(_SC_PAGESIZE);
	hc.align = page > (long)QV_CODEC_ALIGN ? (size_t)page : QV_CODEC_ALIGN;
	atomic_init(&hc.direct, 1);
	(void)posix_fadvise(in_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (rc == 0)
		rc = qv_codec_decode_each(in_fd, hdr, hot_copy_write, hot_copy_hash, &hc);
	if (rc == 0) {
		uint8_t got[QV_DIGEST_LEN];
		unsigned int dl;
		if (EVP_DigestFinal_ex(hc.md, got, &dl) != 1)
			rc = -ENOMEM;
		else if (memcmp(got, d, QV_DIGEST_LEN) != 0)
			rc = QV_ECORRUPT;
	}
	if (hc.direct_fd >= 0)
		close(hc.direct_fd);
	EVP_MD_CTX_free(hc.md);
	return rc;
}

/* A shard's move, in two steps: copy_shard() writes the new copy to the
 * destination tier's temp folder and starts a thread that fsyncs it and
 * renames it into place; copy_finish() waits for that thread, moves the
 * index and drops the old copy. The migration copies the next
 * shard before it finishes this one, so the disk writes one shard out while
 * the next is decoded or encoded, instead of waiting idle on each shard's
 * fsync and journal commits. With the threaded decode and direct writes of
 * decode_to_fd, promotes took 3.53-3.96 s against 4.29-4.71 (H200, 2.67 GB)
 * and 5.26-5.65 s against 5.67-5.88 (2-vCPU box, 1.07 GB; system CPU 0.6 s
 * against 2.0); demotes did not change (docs/BENCHMARKS.md). */
struct copy {
	int active;        /* a copy made, not yet finished or dropped */
	size_t i;          /* the shard's place in the version's list */
	uint64_t kept;     /* the migration's kept shards before it */
	uint8_t d[QV_DIGEST_LEN];
	int from, to;
	int in, out;
	uint64_t size, stored;
	char src[PATH_MAX], dst[PATH_MAX], tmp[PATH_MAX + 64];
	pthread_t th;
	int syncing; /* th runs copy_sync_thread */
	int sync_rc, renamed;
	const char *sync_path; /* where sync_rc went wrong */
};

/* Makes the copy durable under its final name: fsync, rename, fsync of the
 * folder. File system calls only (no store state), so it runs on a thread
 * of its own. The fan-out folders exist already (made durable by the
 * calling thread, so that no two threads race to make one). Sets
 * c->sync_rc and, where it fails, c->sync_path. */
static void *copy_sync_thread(void *arg)
{
	struct copy *c = arg;
	int rc = fsync(c->out) < 0 ? -errno : 0;

	c->sync_path = c->tmp;
	if (close(c->out) < 0 && rc == 0)
		rc = -errno;
	c->out = -1;
	if (rc == 0) {
		c->sync_path = c->dst;
		if (rename(c->tmp, c->dst) < 0)
			rc = -errno;
	}
	if (rc == 0) {
		c->renamed = 1;
		rc = fsync_path_dir(c->dst);
	}
	c->sync_rc = rc;
	return NULL;
}

static int copy_sync_wait(struct copy *c)
{
	if (c->syncing)
		pthread_join(c->th, NULL);
	c->syncing = 0;
	return c->sync_rc;
}

/* Closes what c holds open and removes its temp file (gone already once it
 * has been renamed). */
static void copy_release(struct copy *c)
{
	copy_sync_wait(c);
	if (c->out >= 0)
		close(c->out);
	if (c->in >= 0)
		close(c->in);
	c->out = c->in = -1;
	/* renamed but not in the index: unreferenced, and no other migration
	 * can have put it there (the migration lock) */
	unlink(c->renamed ? c->dst : c->tmp);
	c->renamed = 0;
	c->active = 0;
}

/* Drops a copy made (if any): the shard stays where the index says. */
static void copy_drop(struct copy *c)
{
	if (c->active)
		copy_release(c);
}

/* Copies shard d from tier `from` to a temp file of tier `to`, and starts
 * the thread that makes it durable in place; dtype guides the codec. Leaves
 * c->active 0 if the shard is on `to` already. The caller holds the
 * migration lock. pg (may be NULL or without fn): the migration's progress,
 * `before` raw bytes of it copied before this shard. */
static int copy_shard(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int dtype, int from, int to,
                      uint64_t before, struct qv__tier_progress *pg, struct copy *c)
{
	struct shard_progress sp = {pg, pg ? pg->base + before : 0};
	struct shard_progress *spp = pg && pg->fn ? &sp : NULL;
	char hex[QV_HEX_LEN + 1];
	qv_shard_info info;
	struct qv_codec_header *hdr = NULL;
	int rc;

	c->active = 0;
	c->in = c->out = -1;
	c->syncing = c->renamed = c->sync_rc = 0;
	c->tmp[0] = 0;
	qv_digest_hex(d, hex);
	rc = qv_shard_info_get(s, d, &info);
	if (rc)
		return rc;
	if (info.tier == to)
		return 0;
	if (info.tier != from)
		return qv_store_fail(s, QV_ECHANGED, "shard %.16s is on tier %d", hex, info.tier);
	memcpy(c->d, d, QV_DIGEST_LEN);
	c->from = from;
	c->to = to;
	c->size = info.size;
	c->active = 1;
	qv_shard_path_tier(s, d, from, c->src, sizeof(c->src));
	qv_shard_path_tier(s, d, to, c->dst, sizeof(c->dst));
	snprintf(c->tmp, sizeof(c->tmp), "%s/mig-%ld-%.16s.tmp", qv_store_tmp_dir(s, to),
	         (long)getpid(), hex);
	c->in = open(c->src, O_RDONLY | O_CLOEXEC);
	if (c->in < 0) {
		rc = qv_store_fail(s, errno == ENOENT ? QV_ECORRUPT : -errno, "shard %.16s: %s: %s", hex,
		                   c->src, strerror(errno));
		goto out;
	}
	c->out = open(c->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c->out < 0) {
		rc = qv_store_fail(s, -errno, "%s: %s", c->tmp, strerror(errno));
		goto out;
	}
	if (to == QV_TIER_COLD) {
		posix_fadvise(c->in, 0, 0, POSIX_FADV_SEQUENTIAL);
		struct encode_frame ef = {c->out, spp};
		rc = qv_codec_encode_fd(c->in, info.size, dtype, 0, 0, c->out, &c->stored,
		                        encoded_frame, &ef);
		if (rc)
			rc = qv_store_fail(s, rc, "shard %.16s: compressing: %s", hex, qv_strerror(rc));
	} else {
		struct stat st;
		rc = fstat(c->in, &st) < 0 ? -errno
		                           : qv_codec_header_read(c->in, (uint64_t)st.st_size, &hdr);
		if (rc == 0 && hdr->raw_size != info.size)
			rc = QV_ECORRUPT;
		if (rc == 0)
			rc = decode_to_fd(c->in, hdr, c->out, c->tmp, d, spp);
		const char *sw = rc == QV_ECORRUPT || rc == QV_EFORMAT
		                         ? qv_shard_size_why(s, d, from, (uint64_t)st.st_size)
		                         : NULL;
		if (sw)
			rc = qv_store_fail(s, QV_ECORRUPT, "shard %.16s: its cold copy: %s, %llu bytes",
			                   hex, sw, (unsigned long long)st.st_size);
		else if (rc)
			rc = qv_store_fail(s, rc, "shard %.16s: decoding the cold copy: %s", hex,
			                   rc == QV_ECORRUPT ? "damaged (checksum mismatch)" : qv_strerror(rc));
		c->stored = info.size;
	}
	if (rc == 0) {
		rc = make_fanout(c->dst);
		if (rc)
			rc = qv_store_fail(s, rc, "%s: %s", c->dst, strerror(-rc));
	}
	if (rc == 0) {
		c->syncing = pthread_create(&c->th, NULL, copy_sync_thread, c) == 0;
		if (!c->syncing) /* no thread: sync here */
			copy_sync_thread(c);
	}
out:
	qv_codec_header_destroy(hdr);
	if (rc)
		copy_release(c);
	return rc;
}

/* Asks the kernel to read the start of shard d's copy on tier `from` into
 * the page cache, so that the next copy_shard() finds it there. Its first
 * reads would otherwise wait on the disk before read-ahead begins: on the
 * 2-vCPU box 35-41 ms per shard, with every encoder idle. Best effort; 0 if
 * the shard is not on `from` (it will not be copied). */
#define PREFETCH_BYTES ((off_t)8 << 20)
static int prefetch_shard(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int from)
{
	char path[PATH_MAX];
	qv_shard_info info;

	if (qv_shard_info_get(s, d, &info) != 0 || info.tier != from)
		return 0; /* nothing to copy there */
	qv_shard_path_tier(s, d, from, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		(void)posix_fadvise(fd, 0, PREFETCH_BYTES, POSIX_FADV_WILLNEED);
		close(fd);
	}
	return 1;
}

/* Finishes a copy: once its thread has made it durable in place, moves the
 * index (epoch as for qv_shard_relocate()) and drops the old copy. On
 * failure the shard stays where it was, and the new copy goes. */
static int copy_finish(qv_store *s, struct copy *c, uint64_t epoch, qv_migrate_result *r)
{
	int rc = copy_sync_wait(c);

	if (rc) {
		rc = qv_store_fail(s, rc, "%s: %s", c->sync_path, strerror(-rc));
		goto out;
	}
	/* the new copy is durable: move the index, then drop the old copy */
	rc = qv_shard_relocate(s, c->d, c->from, c->to, epoch, c->stored,
	                       c->to == QV_TIER_COLD ? QV_CODEC_FRAMES : QV_CODEC_RAW);
	if (rc)
		goto out;
	c->renamed = 0; /* the index names it now */
	unlink(c->src);
	r->shards++;
	r->raw_bytes += c->size;
	r->stored_bytes += c->stored;
out:
	copy_release(c);
	return rc;
}

/* ---- versions ------------------------------------------------------------------------ */

/* Shards that versions other than (model, label) keep hot: current, aliased
 * or pinned versions, and versions entirely hot that are not in `leaving`
 * (a NULL-terminated list of "model@label" being demoted together). */
int qv__hot_keep_set(qv_store *s, const char *const *leaving, struct qv__dlist *keep)
{
	qv_model_list *ml = NULL;
	int rc = qv_model_list_get(s, &ml);
	memset(keep, 0, sizeof(*keep));
	struct qv__dlist acc = {0};
	for (size_t m = 0; rc == 0 && m < ml->n; m++) {
		qv_version_list *vl = NULL;
		rc = qv_version_list_get(s, ml->m[m].name, &vl);
		for (size_t i = 0; rc == 0 && i < vl->n; i++) {
			const qv_version *lv = &vl->v[i];
			char name[2 * QV_NAME_MAX + 2];
			snprintf(name, sizeof(name), "%s@%s", lv->model, lv->label);
			int is_leaving = 0;
			for (const char *const *p = leaving; p && *p; p++)
				is_leaving |= strcmp(*p, name) == 0;
			if (is_leaving)
				continue;
			qv_version *v;
			rc = qv_version_get(s, lv->model, lv->label, QV_WITH_MANIFEST, &v);
			if (rc)
				break;
			int tier = QV_TIER_HOT;
			int protected_ = v->n_aliases > 0 || v->pinned;
			if (!protected_)
				rc = qv_tier_of_version(s, v, &tier);
			struct qv__dlist l;
			if (rc == 0 && (protected_ || tier == QV_TIER_HOT)) {
				rc = qv__version_shards(v, &l);
				if (rc == 0) {
					void *nd = realloc(acc.d, (acc.n + l.n + 1) * QV_DIGEST_LEN);
					if (nd) {
						acc.d = nd;
						memcpy(acc.d[acc.n], l.d, l.n * QV_DIGEST_LEN);
						acc.n += l.n;
					} else {
						rc = -ENOMEM;
					}
					qv__dlist_free(&l);
				}
			}
			qv_version_free(v);
		}
		qv_version_list_free(vl);
	}
	qv_model_list_free(ml);
	if (rc) {
		free(acc.d);
		return rc;
	}
	if (acc.n)
		qsort(acc.d, acc.n, QV_DIGEST_LEN, cmp_digest);
	*keep = acc;
	return 0;
}

/* Takes root/migrate.lock exclusively: one migration at a time, across
 * processes. Returns the lock's descriptor (close it to release) or a
 * negative error, reported on s. */
static int migrate_lock(qv_store *s)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/migrate.lock", qv_store_root(s));
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return qv_store_fail(s, -errno, "%s: %s", path, strerror(errno));
	int rc = qv_store_flock(s, fd, LOCK_EX, "another migration (migrate.lock)");
	if (rc) {
		qv_store_fail(s, rc, "%s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	return fd;
}

/* What a demotion must leave alone, decided at one protection epoch: the
 * shards other versions keep hot and, for the policy, whether the version
 * is protected itself. */
static int decide(qv_store *s, const qv_version *v, int policy, uint64_t *epoch,
                  struct qv__dlist *keep, int *skip)
{
	char name[2 * QV_NAME_MAX + 2];
	const char *leaving[] = {name, NULL};
	qv_version *now = NULL;
	qv__dlist_free(keep);
	*skip = 0;
	int rc = qv_store_protect_epoch(s, epoch);
	if (rc == 0 && policy) {
		rc = qv_version_get(s, v->model, v->label, 0, &now);
		if (rc == 0 && (now->n_aliases > 0 || now->pinned))
			*skip = 1;
		qv_version_free(now);
	}
	snprintf(name, sizeof(name), "%s@%s", v->model, v->label);
	if (rc == 0 && !*skip) {
		rc = qv__hot_keep_set(s, leaving, keep);
		if (rc == -ENOMEM)
			rc = qv_store_fail(s, rc, "out of memory");
	}
	return rc;
}

/* The progress total of a migration: done (what it has told already) plus
 * the raw bytes of mine[from..] still to move, not on `to` yet and not kept. */
static void count_total(qv_store *s, const struct qv__dlist *mine, size_t from, int to,
                        const struct qv__dlist *keep, struct qv__tier_progress *pg, uint64_t done)
{
	pg->total = done;
	for (size_t i = from; i < mine->n; i++) {
		qv_shard_info info;
		if ((to != QV_TIER_COLD || !qv__dlist_has(keep, mine->d[i])) &&
		    qv_shard_info_get(s, mine->d[i], &info) == 0 && info.tier != to)
			pg->total += info.size;
	}
	if (pg->total < pg->reported) /* a shard told in part, now kept */
		pg->total = pg->reported;
}

/* Moves model@ref's shards to tier `to`. policy: a demotion by the placement
 * policy, which leaves the version alone if it is protected by the time the
 * migration lock is taken or becomes protected during the move. */
static int migrate_version(qv_store *s, const char *model, const char *ref, int to, int policy,
                           qv_migrate_result *res, struct qv__tier_progress *pg)
{
	qv_migrate_result r = {0};
	qv_version *v = NULL;
	struct qv__dlist mine = {0}, keep = {0};
	double t0 = qv__tier_now();
	uint64_t epoch = QV_EPOCH_ANY;
	int rc, locked = 0, lock_fd = -1, skip = 0;

	if (!qv_store_tmp_dir(s, QV_TIER_COLD)) {
		rc = qv_store_fail(s, -ENOTSUP, "this store has no cold tier (see 'quiver init --cold')");
		goto out;
	}
	rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	if (rc)
		goto out;
	rc = qv__version_shards(v, &mine);
	if (rc) {
		rc = qv_store_fail(s, rc, "out of memory");
		goto out;
	}
	lock_fd = rc = migrate_lock(s);
	if (rc < 0)
		goto out;
	rc = qv_store_writer_lock(s);
	if (rc)
		goto out;
	locked = 1;
	if (to == QV_TIER_COLD)
		rc = decide(s, v, policy, &epoch, &keep, &skip);
	if (rc == 0 && !skip && pg && pg->fn && pg->own_total)
		count_total(s, &mine, 0, to, &keep, pg, 0);
	/* Each shard is copied, then the one before it finished (its fsync ran
	 * during the copy). A version protected during the move makes it decide
	 * again, from the first shard not finished; a bound on how often,
	 * against a loop that protects versions without end. */
	struct copy cp[2];
	struct copy *prev = &cp[0], *cur = &cp[1];
	prev->active = cur->active = 0;
	for (size_t i = 0, again = 0; rc == 0 && !skip && (i < mine.n || prev->active);) {
		size_t at = i; /* where to begin again after a new decision */
		int crc = 0, frc = 0;
		if (i < mine.n) {
			if (to == QV_TIER_COLD && qv__dlist_has(&keep, mine.d[i])) {
				r.kept++;
				i++;
				continue;
			}
			for (size_t j = i + 1; j < mine.n; j++) /* the next one to copy */
				if ((to != QV_TIER_COLD || !qv__dlist_has(&keep, mine.d[j])) &&
				    prefetch_shard(s, mine.d[j], 1 - to))
					break;
			uint64_t before = r.raw_bytes + (prev->active ? prev->size : 0);
			crc = copy_shard(s, mine.d[i], mine.dtype[i], 1 - to, to, before, pg, cur);
			cur->i = i;
			cur->kept = r.kept;
		}
		if (prev->active)
			frc = copy_finish(s, prev, epoch, &r);
		if (frc) { /* the shard before failed: this copy goes too */
			at = prev->i;
			r.kept = prev->kept; /* counted again from there */
			copy_drop(cur);
			rc = frc;
		} else {
			rc = crc;
		}
		uint64_t now;
		if (rc == QV_ECHANGED && to == QV_TIER_COLD && again++ < 1000 &&
		    qv_store_protect_epoch(s, &now) == 0 && now != epoch) {
			rc = decide(s, v, policy, &epoch, &keep, &skip);
			if (rc == 0 && !skip && pg && pg->fn && pg->own_total)
				count_total(s, &mine, at, to, &keep, pg, pg->base + r.raw_bytes);
			i = at;
			continue; /* from that shard, under the new decision */
		}
		if (rc) {
			copy_drop(cur);
			break;
		}
		struct copy *t = prev;
		prev = cur;
		cur = t;
		if (i < mine.n)
			i++;
	}
	copy_drop(prev);
	copy_drop(cur);
out:
	if (locked)
		qv_store_writer_unlock(s);
	if (lock_fd >= 0)
		close(lock_fd);
	r.seconds = qv__tier_now() - t0;
	if (res)
		*res = r;
	qv__dlist_free(&mine);
	qv__dlist_free(&keep);
	qv_version_free(v);
	return rc;
}

int qv_tier_demote(qv_store *s, const char *model, const char *ref, qv_migrate_result *res,
                   qv_progress_fn progress, void *progress_arg)
{
	struct qv__tier_progress pg = {.fn = progress, .arg = progress_arg, .own_total = 1};
	return migrate_version(s, model, ref, QV_TIER_COLD, 0, res, &pg);
}

int qv__tier_demote_policy(qv_store *s, const char *model, const char *label,
                           qv_migrate_result *res, struct qv__tier_progress *pg)
{
	return migrate_version(s, model, label, QV_TIER_COLD, 1, res, pg);
}

int qv_tier_promote(qv_store *s, const char *model, const char *ref, qv_migrate_result *res,
                    qv_progress_fn progress, void *progress_arg)
{
	struct qv__tier_progress pg = {.fn = progress, .arg = progress_arg, .own_total = 1};
	return migrate_version(s, model, ref, QV_TIER_HOT, 0, res, &pg);
}

int qv_tier_of_version(qv_store *s, const qv_version *v, int *tier)
{
	struct qv__dlist l;
	int rc = qv__version_shards(v, &l);
	if (rc)
		return qv_store_fail(s, rc, "out of memory");
	int hot = 0, cold = 0;
	for (size_t i = 0; i < l.n && rc == 0; i++) {
		qv_shard_info info;
		rc = qv_shard_info_get(s, l.d[i], &info);
		if (rc == 0) {
			hot += info.tier == QV_TIER_HOT;
			cold += info.tier == QV_TIER_COLD;
		}
	}
	qv__dlist_free(&l);
	*tier = cold == 0 ? QV_TIER_HOT : hot == 0 ? QV_TIER_COLD : -1;
	return rc;
}

/* ---- the cold reader (export, verify) -------------------------------------------------- */

static int cold_read(void *arg, qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, uint64_t off,
                     void *buf, size_t len)
{
	(void)arg;
	char path[PATH_MAX];
	struct qv_codec_header *hdr = NULL;
	struct qv_codec_ctx *ctx = NULL;
	char *in = NULL, *raw = NULL, *scratch = NULL;
	size_t scratch_len = qv_codec_scratch_bytes(QV_CODEC_FRAME_MAX);
	struct stat st;
	int rc;
	if (tier != QV_TIER_COLD)
		return -ENOTSUP;
	qv_shard_path_tier(s, d, tier, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = fstat(fd, &st) < 0 ? -errno : qv_codec_header_read(fd, (uint64_t)st.st_size, &hdr);
	if (rc == QV_EFORMAT)
		rc = QV_ECORRUPT;
	if (rc == 0 && (off > hdr->raw_size || len > hdr->raw_size - off))
		rc = -ERANGE;
	if (rc == 0) {
		in = malloc(QV_CODEC_FRAME_MAX);
		raw = malloc(QV_CODEC_FRAME_MAX);
		scratch = malloc(scratch_len);
		rc = in && raw && scratch ? qv_codec_ctx_create(&ctx) : -ENOMEM;
	}
	/* decode the frames that cover [off, off + len) */
	uint64_t fb = rc == 0 ? hdr->frame_bytes : 1;
	for (uint64_t at = off; rc == 0 && at < off + len;) {
		const struct qv_codec_frame *f = &hdr->frames[at / fb];
		uint64_t f0 = at / fb * fb;
		ssize_t n = pread(fd, in, f->stored_bytes, (off_t)f->offset);
		if (n != (ssize_t)f->stored_bytes) {
			rc = n < 0 ? -errno : QV_ECORRUPT;
			break;
		}
		rc = qv_codec_frame_decode(ctx, f, in, f->stored_bytes, raw, QV_CODEC_FRAME_MAX, scratch,
		                           scratch_len);
		if (rc)
			break;
		uint64_t take = f0 + f->raw_bytes - at;
		if (take > off + len - at)
			take = off + len - at;
		memcpy((char *)buf + (at - off), raw + (at - f0), take);
		at += take;
	}
	qv_codec_ctx_destroy(ctx);
	qv_codec_header_destroy(hdr);
	free(in);
	free(raw);
	free(scratch);
	close(fd);
	return rc;
}

void qv_tier_attach(qv_store *s)
{
	qv_store_set_tier_reader(s, cold_read, NULL);
}
