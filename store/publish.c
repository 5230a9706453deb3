/* Publishing a model version.
 *
 * The one idea: validate everything first, write nothing until the input is
 * known good, and make the version visible in a single LMDB transaction only
 * after every byte it references is durable.
 *
 *   1. collect the input files and parse every safetensors header (bad input
 *      is rejected here, before the store is touched);
 *   2. plan the shards: a tensor of >= 1 MiB is a shard; smaller tensors are
 *      packed, each at a 4 KiB aligned offset; other files are blob shards;
 *   3. a hasher thread computes each shard's SHA-256 (and XXH3) while the
 *      calling thread writes the shards the index does not have yet into temp
 *      files (copy_file_range), so hashing overlaps writing;
 *   4. fsync, rename into root/shards/ab/cd/<digest>, fsync the folders;
 *   5. one write transaction adds the manifest, refcounts, version, aliases
 *      and history.
 * Publishers hold the store lock shared from step 3 to 5; rm and gc take it
 * exclusive, so nothing a publisher deduplicated against can vanish under it.
 * A crash leaves only temp files and unreferenced shard files: gc removes
 * both. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include "store_int.h"

#define HASH_BUF (8u << 20)
#define WALK_DEPTH_MAX 32

struct src {
	char *path;          /* path to open */
	int fd;
	struct stat st;
};

struct entry {           /* one source range placed in a shard */
	uint32_t file;
	uint32_t tensor;     /* UINT32_MAX: the whole file (blob) */
	uint64_t src_off;
	uint64_t len;
	uint64_t dst_off;
};

struct plan {            /* one shard to be */
	uint8_t kind;
	size_t first, n;     /* entries */
	uint64_t size;
	uint8_t digest[QV_DIGEST_LEN];
	uint64_t xxh3;
	int hash_rc;
	int is_new;          /* this call writes it */
	int dup;             /* an earlier plan of this call has the same digest */
	char *tmp;           /* temp file while being written */
	int placed;          /* renamed into root/shards */
};

struct pub {
	qv_store *s;
	const char *model;
	qv__arena arena;
	struct src *srcs;
	qv_file *files;
	size_t n_files;
	int single_file;
	struct entry *entries;
	size_t n_entries, cap_entries;
	struct plan *plans;
	size_t n_plans, cap_plans;
	uint64_t total_bytes;     /* sum of file sizes */
	uint64_t plan_bytes;      /* sum of shard sizes */
	uint64_t n_tensors;
	/* hasher <-> writer */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t hashed;            /* plans [0, hashed) have a digest */
	int stop;
	char err[512];
};

/* ---- step 1: input ---------------------------------------------------------- */

static int add_src(struct pub *p, const char *path, const char *rel, const struct stat *st,
                   size_t *cap)
{
	if (p->n_files >= QV_FILES_MAX)
		return qv__err(p->s, QV_ELIMIT, "%s: more than %u files", path, QV_FILES_MAX);
	if (p->n_files == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct src *ns = realloc(p->srcs, nc * sizeof(*ns));
		qv_file *nf = ns ? realloc(p->files, nc * sizeof(*nf)) : NULL;
		if (ns)
			p->srcs = ns;
		if (!nf)
			return qv__err(p->s, -ENOMEM, "out of memory");
		p->files = nf;
		*cap = nc;
	}
	struct src *sr = &p->srcs[p->n_files];
	qv_file *f = &p->files[p->n_files];
	memset(sr, 0, sizeof(*sr));
	memset(f, 0, sizeof(*f));
	sr->fd = -1;
	if (!qv__utf8_valid(rel)) /* the manifest is JSON */
		return qv__err(p->s, QV_EFORMAT, "%s: the file name is not valid UTF-8", path);
	sr->path = qv__arena_strdup(&p->arena, path);
	f->name = qv__arena_strdup(&p->arena, rel);
	if (!sr->path || !f->name)
		return qv__err(p->s, -ENOMEM, "out of memory");
	sr->st = *st;
	f->size = (uint64_t)st->st_size;
	p->n_files++;
	return 0;
}

static int walk_dir(struct pub *p, const char *dir, const char *rel, int depth, size_t *cap)
{
	struct dirent **ents = NULL;
	int rc = 0;
	if (depth > WALK_DEPTH_MAX)
		return qv__err(p->s, QV_ELIMIT, "%s: folders nested deeper than %d", dir,
		               WALK_DEPTH_MAX);
	int n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return qv__err(p->s, -errno, "%s: %s", dir, strerror(errno));
	for (int i = 0; i < n && rc == 0; i++) {
		const char *nm = ents[i]->d_name;
		char path[PATH_MAX], r[PATH_MAX];
		if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
			continue;
		if (depth == 0 && (strcmp(nm, ".git") == 0 || strcmp(nm, ".cache") == 0))
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, nm) >= sizeof(path) ||
		    (size_t)snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", nm) >= sizeof(r)) {
			rc = qv__err(p->s, -ENAMETOOLONG, "%s/%s: path too long", dir, nm);
			break;
		}
		struct stat st;
		if (stat(path, &st) < 0) {
			rc = qv__err(p->s, -errno, "%s: %s", path, strerror(errno));
			break;
		}
		if (S_ISDIR(st.st_mode))
			rc = walk_dir(p, path, r, depth + 1, cap);
		else if (S_ISREG(st.st_mode))
			rc = add_src(p, path, r, &st, cap);
		else
			rc = qv__err(p->s, QV_EFORMAT, "%s: not a regular file or folder", path);
	}
	for (int i = 0; i < n; i++)
		free(ents[i]);
	free(ents);
	return rc;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static const qv_file *find_file(const struct pub *p, const char *name)
{
	for (size_t i = 0; i < p->n_files; i++)
		if (strcmp(p->files[i].name, name) == 0)
			return &p->files[i];
	return NULL;
}

/* A Hugging Face index (*.safetensors.index.json) must name only files and
 * tensors that the directory holds. */
static int check_hf_index(struct pub *p, size_t idx)
{
	const qv_file *f = &p->files[idx];
	int rc = 0;
	json_error_t jerr;
	json_t *root = json_load_file(p->srcs[idx].path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return qv__err(p->s, QV_EFORMAT, "%s: invalid JSON: %s (line %d)", f->name, jerr.text,
		               jerr.line);
	json_t *wm = json_object_get(root, "weight_map");
	if (!json_is_object(wm)) {
		rc = qv__err(p->s, QV_EFORMAT, "%s: no \"weight_map\" object", f->name);
		goto out;
	}
	/* the index names files relative to its own folder */
	char dir[PATH_MAX] = "";
	const char *slash = strrchr(f->name, '/');
	if (slash)
		snprintf(dir, sizeof(dir), "%.*s/", (int)(slash - f->name), f->name);
	const char *tname;
	json_t *v;
	json_object_foreach(wm, tname, v)
	{
		char fname[PATH_MAX];
		if (!json_is_string(v)) {
			rc = qv__err(p->s, QV_EFORMAT, "%s: weight_map['%s'] is not a file name",
			             f->name, tname);
			goto out;
		}
		snprintf(fname, sizeof(fname), "%s%s", dir, json_string_value(v));
		const qv_file *w = find_file(p, fname);
		if (!w || !w->safetensors) {
			rc = qv__err(p->s, QV_EFORMAT,
			             "%s: tensor '%s' maps to '%s', which is not a safetensors file here",
			             f->name, tname, json_string_value(v));
			goto out;
		}
		size_t k;
		for (k = 0; k < w->n_tensors; k++)
			if (strcmp(w->tensors[k].name, tname) == 0)
				break;
		if (k == w->n_tensors) {
			rc = qv__err(p->s, QV_EFORMAT, "%s: tensor '%s' is not in %s", f->name, tname,
			             fname);
			goto out;
		}
	}
out:
	json_decref(root);
	return rc;
}

static int collect_input(struct pub *p, const char *path)
{
	struct stat st;
	size_t cap = 0;
	int rc;
	if (stat(path, &st) < 0)
		return qv__err(p->s, -errno, "%s: %s", path, strerror(errno));
	if (S_ISREG(st.st_mode)) {
		const char *base = strrchr(path, '/');
		base = base ? base + 1 : path;
		if (!ends_with(base, ".safetensors"))
			return qv__err(p->s, QV_EFORMAT,
			               "%s: expected a .safetensors file or a model folder", path);
		p->single_file = 1;
		rc = add_src(p, path, base, &st, &cap);
	} else if (S_ISDIR(st.st_mode)) {
		rc = walk_dir(p, path, "", 0, &cap);
		if (rc == 0 && p->n_files == 0)
			rc = qv__err(p->s, QV_EFORMAT, "%s: the folder holds no files", path);
	} else {
		rc = qv__err(p->s, QV_EFORMAT, "%s: not a file or folder", path);
	}
	if (rc)
		return rc;

	for (size_t i = 0; i < p->n_files; i++) {
		struct src *sr = &p->srcs[i];
		qv_file *f = &p->files[i];
		sr->fd = open(sr->path, O_RDONLY | O_CLOEXEC);
		if (sr->fd < 0)
			return qv__err(p->s, -errno, "%s: %s", sr->path, strerror(errno));
		if (fstat(sr->fd, &sr->st) < 0)
			return qv__err(p->s, -errno, "%s: %s", sr->path, strerror(errno));
		f->size = (uint64_t)sr->st.st_size;
		p->total_bytes += f->size;
		if (!ends_with(f->name, ".safetensors"))
			continue;
		char err[512];
		rc = qv__st_parse_fd(sr->fd, f->size, f->name, &p->arena, f, err, sizeof(err));
		if (rc)
			return qv__err(p->s, rc, "%s", err);
		p->n_tensors += f->n_tensors;
	}
	for (size_t i = 0; i < p->n_files; i++)
		if (ends_with(p->files[i].name, ".safetensors.index.json")) {
			rc = check_hf_index(p, i);
			if (rc)
				return rc;
		}
	return 0;
}

/* ---- step 2: the shard plan ---------------------------------------------------- */

static int plan_new(struct pub *p, uint8_t kind)
{
	if (p->n_plans == p->cap_plans) {
		size_t nc = p->cap_plans ? p->cap_plans * 2 : 64;
		struct plan *np = realloc(p->plans, nc * sizeof(*np));
		if (!np)
			return qv__err(p->s, -ENOMEM, "out of memory");
		p->plans = np;
		p->cap_plans = nc;
	}
	struct plan *pl = &p->plans[p->n_plans++];
	memset(pl, 0, sizeof(*pl));
	pl->kind = kind;
	pl->first = p->n_entries;
	return 0;
}

static int plan_add(struct pub *p, uint32_t file, uint32_t tensor, uint64_t src_off,
                    uint64_t len)
{
	if (p->n_entries == p->cap_entries) {
		size_t nc = p->cap_entries ? p->cap_entries * 2 : 256;
		struct entry *ne = realloc(p->entries, nc * sizeof(*ne));
		if (!ne)
			return qv__err(p->s, -ENOMEM, "out of memory");
		p->entries = ne;
		p->cap_entries = nc;
	}
	struct plan *pl = &p->plans[p->n_plans - 1];
	uint64_t dst = (pl->size + QV_ALIGN - 1) / QV_ALIGN * QV_ALIGN;
	p->entries[p->n_entries++] = (struct entry){file, tensor, src_off, len, dst};
	pl->n++;
	pl->size = dst + len;
	return 0;
}

static int make_plan(struct pub *p)
{
	int rc = 0;
	for (uint32_t i = 0; i < p->n_files && rc == 0; i++) {
		const qv_file *f = &p->files[i];
		if (!f->safetensors) {
			rc = plan_new(p, QV_SHARD_BLOB);
			if (rc == 0)
				rc = plan_add(p, i, UINT32_MAX, 0, f->size);
			continue;
		}
		uint64_t data0 = 8 + f->header_len;
		int pack_open = 0;
		size_t pack_idx = 0;
		/* big tensors first in their own shards, then the packs, so a pack's
		 * entries stay contiguous in the entry array */
		for (uint32_t k = 0; k < f->n_tensors && rc == 0; k++) {
			const qv_tensor *t = &f->tensors[k];
			if (t->bytes < QV_TENSOR_SHARD_MIN)
				continue;
			rc = plan_new(p, QV_SHARD_TENSOR);
			if (rc == 0)
				rc = plan_add(p, i, k, data0 + t->data_offset, t->bytes);
		}
		for (uint32_t k = 0; k < f->n_tensors && rc == 0; k++) {
			const qv_tensor *t = &f->tensors[k];
			if (t->bytes >= QV_TENSOR_SHARD_MIN)
				continue;
			if (pack_open && p->plans[pack_idx].size + QV_ALIGN + t->bytes > QV_PACK_TARGET)
				pack_open = 0;
			if (!pack_open) {
				rc = plan_new(p, QV_SHARD_PACK);
				pack_idx = p->n_plans - 1;
				pack_open = 1;
			}
			if (rc == 0)
				rc = plan_add(p, i, k, data0 + t->data_offset, t->bytes);
		}
	}
	for (size_t i = 0; i < p->n_plans; i++)
		p->plan_bytes += p->plans[i].size;
	return rc;
}

/* ---- step 3: hashing (its own thread) ------------------------------------------- */

static int hash_plan(struct pub *p, struct plan *pl, char *buf, EVP_MD_CTX *md,
                     XXH3_state_t *xx)
{
	static const char zeros[QV_ALIGN];
	uint64_t at = 0;
	if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL) || XXH3_64bits_reset(xx) != XXH_OK)
		return -ENOMEM;
	for (size_t e = pl->first; e < pl->first + pl->n; e++) {
		const struct entry *en = &p->entries[e];
		if (en->dst_off > at) {
			size_t pad = (size_t)(en->dst_off - at);
			EVP_DigestUpdate(md, zeros, pad);
			XXH3_64bits_update(xx, zeros, pad);
		}
		int fd = p->srcs[en->file].fd;
		for (uint64_t done = 0; done < en->len;) {
			size_t n = en->len - done < HASH_BUF ? (size_t)(en->len - done) : HASH_BUF;
			int rc = qv__pread_full(fd, buf, n, en->src_off + done);
			if (rc) {
				snprintf(p->err, sizeof(p->err), "%s: read: %s", p->srcs[en->file].path,
				         rc == QV_EFORMAT ? "file shrank while being published"
				                          : qv_strerror(rc));
				return rc == QV_EFORMAT ? QV_ECHANGED : rc;
			}
			EVP_DigestUpdate(md, buf, n);
			XXH3_64bits_update(xx, buf, n);
			done += n;
		}
		at = en->dst_off + en->len;
	}
	unsigned int dl = 0;
	if (!EVP_DigestFinal_ex(md, pl->digest, &dl) || dl != QV_DIGEST_LEN)
		return -EIO;
	pl->xxh3 = XXH3_64bits_digest(xx);
	return 0;
}

static void *hasher_main(void *arg)
{
	struct pub *p = arg;
	char *buf = malloc(HASH_BUF);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	XXH3_state_t *xx = XXH3_createState();
	int rc = (buf && md && xx) ? 0 : -ENOMEM;
	for (size_t i = 0; i < p->n_plans; i++) {
		pthread_mutex_lock(&p->mu);
		int stop = p->stop;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			break;
		struct plan *pl = &p->plans[i];
		if (rc == 0) {
			posix_fadvise(p->srcs[p->entries[pl->first].file].fd, 0, 0, POSIX_FADV_SEQUENTIAL);
			rc = hash_plan(p, pl, buf, md, xx);
		}
		pl->hash_rc = rc;
		pthread_mutex_lock(&p->mu);
		p->hashed = i + 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		if (rc)
			break;
	}
	/* unblock the writer however we ended */
	pthread_mutex_lock(&p->mu);
	if (p->hashed < p->n_plans) {
		for (size_t i = p->hashed; i < p->n_plans; i++)
			p->plans[i].hash_rc = rc ? rc : -ECANCELED;
		p->hashed = p->n_plans;
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	XXH3_freeState(xx);
	EVP_MD_CTX_free(md);
	free(buf);
	return NULL;
}

/* ---- step 3/4: writing --------------------------------------------------------- */

/* Is there an earlier plan with the same digest? (open addressing on plan indices) */
struct dedup {
	size_t *slot;
	size_t mask;
};

static int dedup_seen(struct dedup *d, struct plan *plans, size_t i)
{
	uint64_t h;
	memcpy(&h, plans[i].digest, sizeof(h));
	for (size_t j = h & d->mask;; j = (j + 1) & d->mask) {
		if (d->slot[j] == SIZE_MAX) {
			d->slot[j] = i;
			return 0;
		}
		if (memcmp(plans[d->slot[j]].digest, plans[i].digest, QV_DIGEST_LEN) == 0)
			return 1;
	}
}

static int write_plan(struct pub *p, struct plan *pl, size_t idx)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/pub-%ld-%zu.tmp", p->s->tmp_dir, (long)getpid(), idx);
	pl->tmp = qv__arena_strdup(&p->arena, path);
	if (!pl->tmp)
		return qv__err(p->s, -ENOMEM, "out of memory");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		pl->tmp = NULL;
		return qv__err(p->s, -errno, "%s: %s", path, strerror(errno));
	}
	int rc = 0;
	for (size_t e = pl->first; e < pl->first + pl->n && rc == 0; e++) {
		const struct entry *en = &p->entries[e];
		rc = qv__copy_range(p->srcs[en->file].fd, en->src_off, fd, en->dst_off, en->len);
		if (rc == QV_EFORMAT)
			rc = QV_ECHANGED;
	}
	if (rc == 0 && ftruncate(fd, (off_t)pl->size) < 0)
		rc = -errno;
	if (rc == 0 && fdatasync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc)
		return qv__err(p->s, rc, "writing shard for %s: %s",
		               p->files[p->entries[pl->first].file].name, qv_strerror(rc));
	return 0;
}

static int place_plans(struct pub *p)
{
	char dst[PATH_MAX];
	for (size_t i = 0; i < p->n_plans; i++) {
		struct plan *pl = &p->plans[i];
		if (!pl->tmp)
			continue;
		int rc = qv__shard_dir_make(p->s, pl->digest);
		qv__shard_path(p->s, pl->digest, dst, sizeof(dst));
		if (rc == 0 && rename(pl->tmp, dst) < 0)
			rc = -errno;
		if (rc)
			return qv__err(p->s, rc, "%s: %s", dst, qv_strerror(rc));
		pl->tmp = NULL;
		pl->placed = 1;
	}
	/* Make the renames (and any new fan-out folders) durable. */
	for (size_t i = 0; i < p->n_plans; i++) {
		struct plan *pl = &p->plans[i];
		if (!pl->placed)
			continue;
		char hex[QV_HEX_LEN + 1];
		qv_digest_hex(pl->digest, hex);
		snprintf(dst, sizeof(dst), "%s/%.2s/%.2s", p->s->shard_dir, hex, hex + 2);
		int rc = qv__fsync_dir(dst);
		if (rc == 0)
			rc = qv__fsync_parent(dst);
		if (rc)
			return qv__err(p->s, rc, "fsync %s: %s", dst, qv_strerror(rc));
	}
	int rc = qv__fsync_dir(p->s->shard_dir);
	return rc ? qv__err(p->s, rc, "fsync %s: %s", p->s->shard_dir, qv_strerror(rc)) : 0;
}

/* Is shard d in the index? (A shard placed by a publisher that has not
 * committed yet is not: we write our own copy, and the rename is harmless.) */
static int shard_known(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int *known)
{
	qv_shard_info info;
	int rc = qv_shard_info_get(s, d, &info);
	*known = rc == 0;
	return rc == QV_ENOTFOUND ? 0 : rc;
}

static int write_all(struct pub *p, const qv_publish_opts *o, uint64_t *done)
{
	struct dedup dd = {0};
	size_t cap = 16;
	while (cap < 2 * p->n_plans)
		cap *= 2;
	dd.slot = malloc(cap * sizeof(size_t));
	if (!dd.slot)
		return qv__err(p->s, -ENOMEM, "out of memory");
	memset(dd.slot, 0xff, cap * sizeof(size_t));
	dd.mask = cap - 1;
	int rc = 0;
	for (size_t i = 0; i < p->n_plans && rc == 0; i++) {
		struct plan *pl = &p->plans[i];
		pthread_mutex_lock(&p->mu);
		while (p->hashed <= i)
			pthread_cond_wait(&p->cv, &p->mu);
		pthread_mutex_unlock(&p->mu);
		if (pl->hash_rc) {
			rc = qv__err(p->s, pl->hash_rc, "%s",
			             p->err[0] ? p->err : qv_strerror(pl->hash_rc));
			break;
		}
		int known = 0;
		pl->dup = dedup_seen(&dd, p->plans, i);
		if (!pl->dup) {
			rc = shard_known(p->s, pl->digest, &known);
			if (rc == 0 && !known) {
				pl->is_new = 1;
				rc = write_plan(p, pl, i);
			}
		}
		*done += pl->size;
		if (o->progress)
			o->progress(o->progress_arg, *done, p->plan_bytes);
	}
	free(dd.slot);
	return rc;
}

/* ---- step 5: the transaction ------------------------------------------------------ */

static int check_unchanged(struct pub *p)
{
	for (size_t i = 0; i < p->n_files; i++) {
		struct stat st;
		const struct stat *a = &p->srcs[i].st;
		if (fstat(p->srcs[i].fd, &st) < 0)
			return qv__err(p->s, -errno, "%s: %s", p->srcs[i].path, strerror(errno));
		/* ctime too: a writer can set mtime back (utime), not ctime */
		if (st.st_size != a->st_size || st.st_mtim.tv_sec != a->st_mtim.tv_sec ||
		    st.st_mtim.tv_nsec != a->st_mtim.tv_nsec || st.st_ctim.tv_sec != a->st_ctim.tv_sec ||
		    st.st_ctim.tv_nsec != a->st_ctim.tv_nsec)
			return qv__err(p->s, QV_ECHANGED, "%s: changed while being published",
			               p->srcs[i].path);
	}
	return 0;
}

/* Assigns each tensor and blob its shard and offset (after hashing). */
static void bind_manifest(struct pub *p)
{
	for (size_t i = 0; i < p->n_plans; i++) {
		const struct plan *pl = &p->plans[i];
		for (size_t e = pl->first; e < pl->first + pl->n; e++) {
			const struct entry *en = &p->entries[e];
			qv_file *f = &p->files[en->file];
			if (en->tensor == UINT32_MAX) {
				memcpy(f->blob, pl->digest, QV_DIGEST_LEN);
			} else {
				qv_tensor *t = (qv_tensor *)&f->tensors[en->tensor];
				memcpy(t->shard, pl->digest, QV_DIGEST_LEN);
				t->shard_offset = en->dst_off;
			}
		}
	}
}

/* Adds one reference from a new manifest to every distinct shard of the plan. */
static int ref_shards(struct pub *p, MDB_txn *txn, uint64_t *new_shards, uint64_t *new_bytes,
                      uint64_t *distinct)
{
	int64_t now = qv__now_ns();
	for (size_t i = 0; i < p->n_plans; i++) {
		struct plan *pl = &p->plans[i];
		if (pl->dup)
			continue;
		(*distinct)++;
		MDB_val k = {QV_DIGEST_LEN, pl->digest}, v;
		qv__shard_rec rec;
		int rc = mdb_get(txn, p->s->db_shards, &k, &v);
		if (rc == 0) {
			if (v.mv_size != sizeof(rec))
				return qv__err(p->s, QV_ECORRUPT, "damaged shard record in the index");
			memcpy(&rec, v.mv_data, sizeof(rec));
			rec.refcount++;
		} else if (rc == MDB_NOTFOUND) {
			if (!pl->placed)
				return qv__err(p->s, QV_ECORRUPT,
				               "shard vanished from the index during publish");
			memset(&rec, 0, sizeof(rec));
			rec.magic = QV_SHARD_REC_MAGIC;
			rec.kind = pl->kind;
			rec.tier = QV_TIER_HOT;
			rec.codec = QV_CODEC_RAW;
			rec.size = rec.stored_size = pl->size;
			rec.refcount = 1;
			rec.xxh3 = pl->xxh3;
			rec.created_ns = now;
			(*new_shards)++;
			*new_bytes += pl->size;
		} else {
			return qv__mdb_fail(p->s, rc, "read shard");
		}
		v.mv_size = sizeof(rec);
		v.mv_data = &rec;
		rc = mdb_put(txn, p->s->db_shards, &k, &v, 0);
		if (rc)
			return qv__mdb_fail(p->s, rc, "write shard");
	}
	return 0;
}

static int commit_version(struct pub *p, const qv_publish_opts *o, qv_publish_result *res)
{
	char *mtxt = NULL;
	size_t mlen = 0;
	MDB_txn *txn = NULL;
	qv__version_rec rec;
	char label[QV_NAME_MAX + 1];
	int rc;

	bind_manifest(p);
	rc = qv__manifest_encode(p->files, p->n_files, p->single_file, &mtxt, &mlen);
	if (rc)
		return qv__err(p->s, rc, "encoding manifest: %s", qv_strerror(rc));
	memset(&rec, 0, sizeof(rec));
	{
		unsigned int dl = 0;
		if (!EVP_Digest(mtxt, mlen, rec.digest, &dl, EVP_sha256(), NULL)) {
			rc = qv__err(p->s, -EIO, "SHA-256 failed");
			goto out;
		}
	}
	rc = qv__txn_begin(p->s, 0, &txn);
	if (rc)
		goto out;
	rc = qv__model_next_seq(p->s, txn, p->model, &rec.seq);
	if (rc)
		goto out;
	if (o->label) {
		snprintf(label, sizeof(label), "%s", o->label);
	} else {
		for (;;) { /* next vN not taken by a hand-chosen label or an alias */
			snprintf(label, sizeof(label), "v%llu", (unsigned long long)rec.seq);
			qv__version_rec tmp;
			char other[QV_NAME_MAX + 1];
			rc = qv__version_rec_get(p->s, txn, p->model, label, &tmp);
			if (rc == QV_ENOTFOUND)
				rc = qv__alias_get(p->s, txn, p->model, label, other);
			if (rc == QV_ENOTFOUND)
				break;
			if (rc)
				goto out;
			rc = qv__model_next_seq(p->s, txn, p->model, &rec.seq);
			if (rc)
				goto out;
		}
	}
	{
		qv__version_rec tmp;
		rc = qv__version_rec_get(p->s, txn, p->model, label, &tmp);
		if (rc == 0) {
			rc = qv__err(p->s, QV_EEXIST, "%s@%s already exists", p->model, label);
			goto out;
		}
		if (rc != QV_ENOTFOUND)
			goto out;
		char other[QV_NAME_MAX + 1];
		rc = qv__alias_get(p->s, txn, p->model, label, other);
		if (rc == 0) {
			rc = qv__err(p->s, QV_EEXIST, "%s: '%s' is already an alias (of %s)", p->model,
			             label, other);
			goto out;
		}
		if (rc != QV_ENOTFOUND)
			goto out;
	}
	/* manifest: new, or one more version on an existing one */
	MDB_val k = {QV_DIGEST_LEN, rec.digest}, v;
	rc = mdb_get(txn, p->s->db_manifests, &k, &v);
	uint64_t new_shards = 0, new_bytes = 0, distinct = 0;
	if (rc == 0) {
		uint64_t refs;
		memcpy(&refs, v.mv_data, 8);
		refs++;
		char *buf = malloc(v.mv_size);
		if (!buf) {
			rc = qv__err(p->s, -ENOMEM, "out of memory");
			goto out;
		}
		memcpy(buf, v.mv_data, v.mv_size);
		memcpy(buf, &refs, 8);
		MDB_val nv = {v.mv_size, buf};
		rc = mdb_put(txn, p->s->db_manifests, &k, &nv, 0);
		free(buf);
		if (rc) {
			rc = qv__mdb_fail(p->s, rc, "write manifest");
			goto out;
		}
		for (size_t i = 0; i < p->n_plans; i++)
			distinct += !p->plans[i].dup;
	} else if (rc == MDB_NOTFOUND) {
		MDB_val nv = {8 + mlen, NULL};
		rc = mdb_put(txn, p->s->db_manifests, &k, &nv, MDB_RESERVE);
		if (rc) {
			rc = qv__mdb_fail(p->s, rc, "write manifest");
			goto out;
		}
		uint64_t one = 1;
		memcpy(nv.mv_data, &one, 8);
		memcpy((char *)nv.mv_data + 8, mtxt, mlen);
		rc = ref_shards(p, txn, &new_shards, &new_bytes, &distinct);
		if (rc)
			goto out;
	} else {
		rc = qv__mdb_fail(p->s, rc, "read manifest");
		goto out;
	}

	char cur[QV_NAME_MAX + 1] = "";
	rc = qv__alias_get(p->s, txn, p->model, "current", cur);
	if (rc && rc != QV_ENOTFOUND)
		goto out;
	rec.created_ns = qv__now_ns();
	rec.bytes = p->total_bytes;
	rec.n_tensors = p->n_tensors;
	rec.single_file = p->single_file;
	snprintf(rec.parent, sizeof(rec.parent), "%s", cur);
	snprintf(rec.message, sizeof(rec.message), "%s", o->message ? o->message : "");
	rc = qv__version_rec_put(p->s, txn, p->model, label, &rec);
	if (rc)
		goto out;
	if (!o->no_activate) {
		rc = qv__alias_put(p->s, txn, p->model, "current", label, "publish");
		if (rc)
			goto out;
	}
	for (size_t i = 0; i < o->n_aliases; i++) {
		rc = qv__alias_put(p->s, txn, p->model, o->aliases[i], label, "alias");
		if (rc)
			goto out;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc) {
		rc = qv__mdb_fail(p->s, rc, "commit");
		goto out;
	}
	if (res) {
		snprintf(res->label, sizeof(res->label), "%s", label);
		memcpy(res->digest, rec.digest, QV_DIGEST_LEN);
		res->files = p->n_files;
		res->tensors = p->n_tensors;
		res->bytes = p->total_bytes;
		res->shards = distinct;
		res->new_shards = new_shards;
		res->new_bytes = new_bytes;
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	free(mtxt);
	return rc;
}

/* Early, read-only check that the label is free: fail before any work. */
/* The names the publish will write, checked before any shard is: the label
 * names no version or alias yet, and no alias asked for names a version.
 * (The transaction checks again: another writer may come between.) */
static int names_free(qv_store *s, const char *model, const qv_publish_opts *o)
{
	MDB_txn *txn;
	qv__version_rec rec;
	char other[QV_NAME_MAX + 1];
	int rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	if (o->label) {
		rc = qv__version_rec_get(s, txn, model, o->label, &rec);
		if (rc == 0)
			rc = qv__err(s, QV_EEXIST, "%s@%s already exists", model, o->label);
		else if (rc == QV_ENOTFOUND &&
		         (rc = qv__alias_get(s, txn, model, o->label, other)) == 0)
			rc = qv__err(s, QV_EEXIST, "%s: '%s' is already an alias (of %s)", model, o->label,
			             other);
		if (rc == QV_ENOTFOUND)
			rc = 0;
	}
	for (size_t i = 0; rc == 0 && i < o->n_aliases; i++) {
		rc = qv__version_rec_get(s, txn, model, o->aliases[i], &rec);
		if (rc == 0)
			rc = qv__err(s, QV_EEXIST, "%s: '%s' is a version label; an alias may not shadow it",
			             model, o->aliases[i]);
		else if (rc == QV_ENOTFOUND)
			rc = 0;
	}
	mdb_txn_abort(txn);
	return rc;
}

static int check_opts(qv_store *s, const char *model, const qv_publish_opts *o)
{
	if (qv_name_check_model(model))
		return qv__err(s, QV_ENAME,
		               "invalid model name '%.200s': use letters, digits, '.', '_', '-', '+' in "
		               "'/'-separated parts, no '..', no leading '.' or '/', at most %d bytes",
		               model, QV_NAME_MAX);
	if (o->label && qv_name_check_label(o->label))
		return qv__err(s, QV_ENAME,
		               "invalid version label '%.200s': use letters, digits, '.', '_', '-', '+', "
		               "no '..', no leading '.', at most %d bytes",
		               o->label, QV_NAME_MAX);
	if (o->label && strcmp(o->label, "current") == 0)
		return qv__err(s, QV_ENAME, "'current' names the current version; it cannot be a label");
	for (size_t i = 0; i < o->n_aliases; i++)
		if (qv_name_check_label(o->aliases[i]))
			return qv__err(s, QV_ENAME, "invalid alias name '%.200s'", o->aliases[i]);
	if (o->message && strlen(o->message) > QV_MESSAGE_MAX)
		return qv__err(s, QV_ELIMIT, "message longer than %u bytes", QV_MESSAGE_MAX);
	if (o->message && !qv__utf8_valid(o->message))
		return qv__err(s, QV_EFORMAT, "the message is not valid UTF-8");
	return 0;
}

int qv_publish(qv_store *s, const char *model, const char *path, const qv_publish_opts *opts,
               qv_publish_result *res)
{
	static const qv_publish_opts defaults;
	const qv_publish_opts *o = opts ? opts : &defaults;
	struct pub p = {.s = s, .model = model};
	double t0 = qv__mono_s();
	pthread_t hasher;
	int hasher_started = 0, locked = 0;
	uint64_t done = 0;
	int rc;

	qv__errmsg_clear();
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	rc = check_opts(s, model, o);
	if (rc)
		goto out;
	rc = collect_input(&p, path);
	if (rc)
		goto out;
	rc = make_plan(&p);
	if (rc)
		goto out;
	rc = names_free(s, model, o);
	if (rc)
		goto out;

	/* Sweep temp files of crashed writers if no writer runs now. */
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0)
		qv__tmp_sweep(s);
	rc = qv__lock_shared(s);
	if (rc)
		goto out;
	locked = 1;

	if ((rc = pthread_create(&hasher, NULL, hasher_main, &p)) != 0) {
		rc = qv__err(s, -rc, "cannot start hasher thread: %s", strerror(rc));
		goto out;
	}
	hasher_started = 1;
	rc = write_all(&p, o, &done);
	pthread_mutex_lock(&p.mu);
	p.stop = 1;
	pthread_mutex_unlock(&p.mu);
	pthread_join(hasher, NULL);
	hasher_started = 0;
	if (rc)
		goto out;
	rc = check_unchanged(&p);
	if (rc)
		goto out;
	rc = place_plans(&p);
	if (rc)
		goto out;
	rc = commit_version(&p, o, res);
	if (rc == 0 && res)
		res->seconds = qv__mono_s() - t0;
out:
	if (hasher_started) {
		pthread_mutex_lock(&p.mu);
		p.stop = 1;
		pthread_mutex_unlock(&p.mu);
		pthread_join(hasher, NULL);
	}
	/* On failure: temp files go now. Shards already renamed into place are
	 * unreferenced; remove them only if no other publisher could be relying
	 * on the same file, else gc will. */
	for (size_t i = 0; i < p.n_plans; i++)
		if (p.plans[i].tmp)
			unlink(p.plans[i].tmp);
	char saved[1024];
	snprintf(saved, sizeof(saved), "%s", qv_store_errmsg(s)); /* the cleanup's lookups may overwrite it */
	if (rc && locked && flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0) {
		for (size_t i = 0; i < p.n_plans; i++) {
			int known = 1;
			if (!p.plans[i].placed || shard_known(s, p.plans[i].digest, &known) || known)
				continue;
			char dst[PATH_MAX];
			qv__shard_path(s, p.plans[i].digest, dst, sizeof(dst));
			unlink(dst);
		}
	}
	if (locked)
		qv__unlock(s);
	if (rc)
		qv__err(s, rc, "%s", saved);
	for (size_t i = 0; i < p.n_files; i++)
		if (p.srcs[i].fd >= 0)
			close(p.srcs[i].fd);
	free(p.srcs);
	free(p.files);
	free(p.entries);
	free(p.plans);
	qv__arena_free(&p.arena);
	pthread_cond_destroy(&p.cv);
	pthread_mutex_destroy(&p.mu);
	return rc;
}
