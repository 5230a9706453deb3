/* Export and verify: reading shards back and checking them against their
 * names.
 *
 * Export rebuilds each published file from its manifest (the verbatim
 * safetensors header, then every tensor's bytes in data-offset order) and
 * checks every shard's SHA-256 on the way, so damaged bytes never leave the
 * store silently. Verify hashes every shard a version references and names,
 * for each damaged one, every version it breaks. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "store_int.h"

#define IO_BUF (8u << 20)

/* Hashes the raw bytes of a shard on a non-hot tier through the tier reader. */
static int shard_check_tier(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, uint64_t size,
                            char *buf, const char **why)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int rc = 0;
	if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(md);
		return -ENOMEM;
	}
	for (uint64_t off = 0; off < size && rc == 0;) {
		size_t n = size - off < IO_BUF ? (size_t)(size - off) : IO_BUF;
		rc = qv__shard_read(s, d, tier, off, buf, n);
		if (rc == 0)
			EVP_DigestUpdate(md, buf, n);
		off += n;
	}
	uint8_t got[QV_DIGEST_LEN];
	unsigned int dl;
	EVP_DigestFinal_ex(md, got, &dl);
	EVP_MD_CTX_free(md);
	if (rc == -ENOENT) {
		*why = "missing";
		return QV_ECORRUPT;
	}
	if (rc == QV_ECORRUPT) {
		*why = "damaged frame (checksum mismatch)";
		return rc;
	}
	if (rc)
		return rc;
	if (memcmp(got, d, QV_DIGEST_LEN) != 0) {
		*why = "digest mismatch";
		return QV_ECORRUPT;
	}
	return 0;
}

const char *qv_shard_size_why(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier,
                              uint64_t file_size)
{
	qv_shard_info info;
	if (qv_shard_info_get(s, d, &info) != 0 || info.tier != tier ||
	    file_size == info.stored_size)
		return NULL;
	return file_size < info.stored_size ? "truncated (shorter than the index says)"
	                                    : "size mismatch (longer than the index says)";
}

/* qv_shard_size_why() of d's file on tier as it is now. */
static const char *cold_size_why(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier)
{
	char path[PATH_MAX];
	struct stat st;
	qv_shard_path_tier(s, d, tier, path, sizeof(path));
	return stat(path, &st) == 0 ? qv_shard_size_why(s, d, tier, (uint64_t)st.st_size) : NULL;
}

/* Hashes the whole shard; 0 if it matches d and has size bytes (size < 0:
 * any). On mismatch returns QV_ECORRUPT and sets *why. */
static int shard_check(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, int64_t size,
                       char *buf, const char **why)
{
	char path[PATH_MAX];
	if (tier != QV_TIER_HOT) {
		qv_shard_info info;
		if (size < 0 && qv_shard_info_get(s, d, &info) == 0)
			size = (int64_t)info.size;
		int rc = shard_check_tier(s, d, tier, (uint64_t)(size < 0 ? 0 : size), buf, why);
		const char *sw = rc == QV_ECORRUPT ? cold_size_why(s, d, tier) : NULL;
		if (sw)
			*why = sw;
		return rc;
	}
	qv__shard_path(s, d, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		*why = errno == ENOENT ? "missing" : "unreadable";
		return errno == ENOENT ? QV_ECORRUPT : -errno;
	}
	struct stat st;
	int rc = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
		rc = -ENOMEM;
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	if (size >= 0 && st.st_size != size) {
		*why = "size mismatch";
		rc = QV_ECORRUPT;
		goto out;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	for (uint64_t off = 0; off < (uint64_t)st.st_size;) {
		size_t n = (uint64_t)st.st_size - off < IO_BUF ? (size_t)(st.st_size - off) : IO_BUF;
		rc = qv__pread_full(fd, buf, n, off);
		if (rc) {
			*why = "unreadable";
			goto out;
		}
		EVP_DigestUpdate(md, buf, n);
		off += n;
	}
	uint8_t got[QV_DIGEST_LEN];
	unsigned int dl;
	EVP_DigestFinal_ex(md, got, &dl);
	if (memcmp(got, d, QV_DIGEST_LEN) != 0) {
		*why = "digest mismatch";
		rc = QV_ECORRUPT;
	}
out:
	EVP_MD_CTX_free(md);
	close(fd);
	return rc;
}

/* ---- export ---------------------------------------------------------------------- */

struct exporter {
	qv_store *s;
	char *buf;
	qv_progress_fn progress;
	void *parg;
	uint64_t done, total;
	/* packs already checked in full */
	uint8_t (*ok)[QV_DIGEST_LEN];
	size_t n_ok;
};

static int pack_checked(struct exporter *x, const uint8_t d[QV_DIGEST_LEN])
{
	for (size_t i = 0; i < x->n_ok; i++)
		if (memcmp(x->ok[i], d, QV_DIGEST_LEN) == 0)
			return 1;
	return 0;
}

/* The tier the index names for shard d now (-1: unknown). When it is not the
 * tier a reader looked it up on, a migration moved it, and a missing or
 * short file there is no damage. */
static int tier_now(qv_store *s, const uint8_t d[QV_DIGEST_LEN])
{
	qv_shard_info now;
	return qv_shard_info_get(s, d, &now) == 0 ? now.tier : -1;
}

/* copy_shard() from the tier the index names now; *tier: that tier. */
static int copy_shard_once(struct exporter *x, const char *fname, const uint8_t d[QV_DIGEST_LEN],
                           uint64_t off, uint64_t len, int out, uint64_t out_off, int *tier)
{
	char path[PATH_MAX], hex[QV_HEX_LEN + 1];
	qv_shard_info info;
	int fd = -1, rc = 0;
	EVP_MD_CTX *md = NULL;
	qv_digest_hex(d, hex);
	rc = qv_shard_info_get(x->s, d, &info);
	if (rc)
		return qv__err(x->s, rc == QV_ENOTFOUND ? QV_ECORRUPT : rc,
		               "%s: shard %.16s is not in the index", fname, hex);
	*tier = info.tier;
	uint64_t size = info.size;
	if (info.tier == QV_TIER_HOT) {
		struct stat st;
		qv__shard_path(x->s, d, path, sizeof(path));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return qv__err(x->s, errno == ENOENT ? QV_ECORRUPT : -errno,
			               "%s: shard %.16s is %s", fname, hex,
			               errno == ENOENT ? "missing" : strerror(errno));
		if (fstat(fd, &st) < 0) {
			rc = qv__err(x->s, -errno, "%s: %s", path, strerror(errno));
			goto out;
		}
		size = (uint64_t)st.st_size;
		posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	}
	int whole = off == 0 && len == size;
	if (!whole && !pack_checked(x, d)) {
		const char *why = "";
		rc = shard_check(x->s, d, info.tier, -1, x->buf, &why);
		if (rc) {
			rc = qv__err(x->s, rc, "%s: shard %.16s: %s", fname, hex,
			             rc == QV_ECORRUPT ? why : qv_strerror(rc));
			goto out;
		}
		void *np = realloc(x->ok, (x->n_ok + 1) * QV_DIGEST_LEN);
		if (!np) {
			rc = qv__err(x->s, -ENOMEM, "out of memory");
			goto out;
		}
		x->ok = np;
		memcpy(x->ok[x->n_ok++], d, QV_DIGEST_LEN);
	}
	if (off + len > size) {
		rc = qv__err(x->s, QV_ECORRUPT, "%s: shard %.16s is shorter than the index says",
		             fname, hex);
		goto out;
	}
	if (whole) {
		md = EVP_MD_CTX_new();
		if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
			rc = qv__err(x->s, -ENOMEM, "out of memory");
			goto out;
		}
	}
	for (uint64_t done = 0; done < len;) {
		size_t n = len - done < IO_BUF ? (size_t)(len - done) : IO_BUF;
		rc = fd >= 0 ? qv__pread_full(fd, x->buf, n, off + done)
		             : qv__shard_read(x->s, d, info.tier, off + done, x->buf, n);
		if (rc) {
			const char *why = rc == QV_EFORMAT ? "truncated"
			                  : rc != QV_ECORRUPT ? qv_strerror(rc)
			                  : fd < 0 ? cold_size_why(x->s, d, info.tier) : NULL;
			if (why == NULL)
				why = "damaged (checksum mismatch)";
			rc = qv__err(x->s, rc == QV_EFORMAT || rc == QV_ECORRUPT || rc == -ENOENT ? QV_ECORRUPT : rc,
			             "%s: shard %.16s: %s", fname, hex, why);
			goto out;
		}
		if (md)
			EVP_DigestUpdate(md, x->buf, n);
		rc = qv__pwrite_full(out, x->buf, n, out_off + done);
		if (rc) {
			rc = qv__err(x->s, rc, "%s: write: %s", fname, qv_strerror(rc));
			goto out;
		}
		done += n;
		x->done += n;
		if (x->progress)
			x->progress(x->parg, x->done, x->total);
	}
	if (md) {
		uint8_t got[QV_DIGEST_LEN];
		unsigned int dl;
		EVP_DigestFinal_ex(md, got, &dl);
		if (memcmp(got, d, QV_DIGEST_LEN) != 0)
			rc = qv__err(x->s, QV_ECORRUPT, "%s: shard %.16s: digest mismatch", fname, hex);
	}
out:
	EVP_MD_CTX_free(md);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Copies len bytes of shard d at off into out@out_off. A copy that is the
 * whole shard is hashed on the way; a piece of a pack is copied after the
 * pack has been checked once in full. A shard that a migration moved while
 * it was read is read again from its new tier. */
static int copy_shard(struct exporter *x, const char *fname, const uint8_t d[QV_DIGEST_LEN],
                      uint64_t off, uint64_t len, int out, uint64_t out_off)
{
	uint64_t done = x->done;
	int tier = -1;
	int rc = copy_shard_once(x, fname, d, off, len, out, out_off, &tier);
	int now;
	if ((rc == QV_ECORRUPT || rc == -ENOENT) && tier >= 0 && (now = tier_now(x->s, d)) >= 0 &&
	    now != tier) {
		x->done = done;
		rc = copy_shard_once(x, fname, d, off, len, out, out_off, &tier);
	}
	return rc;
}

static int export_file(struct exporter *x, const qv_file *f, const char *outdir)
{
	char dst[PATH_MAX], tmp[PATH_MAX + 32];
	if ((size_t)snprintf(dst, sizeof(dst), "%s/%s", outdir, f->name) >= sizeof(dst))
		return qv__err(x->s, -ENAMETOOLONG, "%s/%s: path too long", outdir, f->name);
	/* parent folders of nested files */
	char *slash = strrchr(dst, '/');
	*slash = 0;
	int rc = qv__mkdir_p(dst, 0755);
	if (rc)
		return qv__err(x->s, rc, "%s: %s", dst, qv_strerror(rc));
	/* a temp name of its own (created, never an existing file's: a model
	 * may hold any name), short whatever the file's name */
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.quiver-export-XXXXXX", dst) >= sizeof(tmp))
		return qv__err(x->s, -ENAMETOOLONG, "%s/%s: path too long", outdir, f->name);
	*slash = '/';
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return qv__err(x->s, -errno, "%s: %s", tmp, strerror(errno));
	if (fchmod(fd, 0644) < 0) {
		rc = qv__err(x->s, -errno, "%s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		return rc;
	}
	if (f->safetensors) {
		uint8_t len8[8];
		for (int i = 0; i < 8; i++)
			len8[i] = (uint8_t)(f->header_len >> (8 * i));
		rc = qv__pwrite_full(fd, len8, 8, 0);
		if (rc == 0)
			rc = qv__pwrite_full(fd, f->header, f->header_len, 8);
		if (rc)
			rc = qv__err(x->s, rc, "%s: write: %s", tmp, qv_strerror(rc));
		x->done += 8 + f->header_len;
		if (rc == 0 && x->progress)
			x->progress(x->parg, x->done, x->total);
		uint64_t data0 = 8 + f->header_len;
		for (size_t i = 0; i < f->n_tensors && rc == 0; i++) {
			const qv_tensor *t = &f->tensors[i];
			if (t->bytes)
				rc = copy_shard(x, f->name, t->shard, t->shard_offset, t->bytes, fd,
				                data0 + t->data_offset);
		}
	} else {
		rc = copy_shard(x, f->name, f->blob, 0, f->size, fd, 0);
	}
	if (rc == 0 && ftruncate(fd, (off_t)f->size) < 0)
		rc = qv__err(x->s, -errno, "%s: %s", tmp, strerror(errno));
	if (rc == 0 && fsync(fd) < 0)
		rc = qv__err(x->s, -errno, "%s: fsync: %s", tmp, strerror(errno));
	close(fd);
	if (rc == 0 && rename(tmp, dst) < 0)
		rc = qv__err(x->s, -errno, "%s: %s", dst, strerror(errno));
	if (rc)
		unlink(tmp);
	return rc;
}

int qv_export(qv_store *s, const char *model, const char *ref, const char *outdir,
              qv_progress_fn progress, void *progress_arg)
{
	qv_version *v = NULL;
	struct exporter x = {.s = s, .progress = progress, .parg = progress_arg};
	int rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	if (rc)
		return rc;
	x.buf = malloc(IO_BUF);
	if (!x.buf) {
		rc = qv__err(s, -ENOMEM, "out of memory");
		goto out;
	}
	rc = qv__mkdir_p(outdir, 0755);
	if (rc) {
		rc = qv__err(s, rc, "%s: %s", outdir, qv_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < v->n_files; i++)
		x.total += v->files[i].size;
	for (size_t i = 0; i < v->n_files && rc == 0; i++)
		rc = export_file(&x, &v->files[i], outdir);
	if (rc == 0) {
		rc = qv__fsync_dir(outdir);
		if (rc)
			rc = qv__err(s, rc, "fsync %s: %s", outdir, qv_strerror(rc));
	}
out:
	free(x.buf);
	free(x.ok);
	qv_version_free(v);
	return rc;
}

/* ---- verify ---------------------------------------------------------------------------- */

struct use {                  /* shard d is used by version vi */
	uint8_t d[QV_DIGEST_LEN];
	size_t vi;
};

static int cmp_use(const void *a, const void *b)
{
	const struct use *x = a, *y = b;
	int c = memcmp(x->d, y->d, QV_DIGEST_LEN);
	if (c)
		return c;
	return x->vi < y->vi ? -1 : x->vi > y->vi;
}

struct report_box {
	qv_verify_report r;
	qv__arena a;
};

int qv_verify(qv_store *s, const char *model, const char *ref, qv_verify_report **out,
              qv_progress_fn progress, void *progress_arg)
{
	struct report_box *b = calloc(1, sizeof(*b));
	char **names = NULL;    /* "model@label" per version */
	size_t n_names = 0;
	struct use *uses = NULL;
	size_t n_uses = 0, cap_uses = 0;
	qv_model_list *ml = NULL;
	char *buf = malloc(IO_BUF);
	MDB_txn *txn = NULL;
	int rc = 0;

	*out = NULL;
	qv__errmsg_clear();
	if (!b || !buf) {
		rc = qv__err(s, -ENOMEM, "out of memory");
		goto out;
	}
	/* the versions to check */
	if (model) {
		qv_version *v;
		rc = qv_version_get(s, model, ref, 0, &v);
		if (rc)
			goto out;
		names = malloc(sizeof(char *));
		if (names) {
			names[0] = qv__arena_alloc(&b->a, strlen(v->model) + strlen(v->label) + 2);
			if (names[0]) {
				sprintf(names[0], "%s@%s", v->model, v->label);
				n_names = 1;
			}
		}
		qv_version_free(v);
		if (!n_names) {
			rc = qv__err(s, -ENOMEM, "out of memory");
			goto out;
		}
	} else {
		rc = qv_model_list_get(s, &ml);
		if (rc)
			goto out;
		for (size_t m = 0; m < ml->n && rc == 0; m++) {
			qv_version_list *vl;
			rc = qv_version_list_get(s, ml->m[m].name, &vl);
			if (rc)
				break;
			char **nn = realloc(names, (n_names + vl->n + 1) * sizeof(char *));
			if (!nn) {
				qv_version_list_free(vl);
				rc = qv__err(s, -ENOMEM, "out of memory");
				break;
			}
			names = nn;
			for (size_t i = 0; i < vl->n; i++) {
				char *nm = qv__arena_alloc(&b->a, strlen(vl->v[i].model) +
				                                      strlen(vl->v[i].label) + 2);
				if (!nm) {
					rc = qv__err(s, -ENOMEM, "out of memory");
					break;
				}
				sprintf(nm, "%s@%s", vl->v[i].model, vl->v[i].label);
				names[n_names++] = nm;
			}
			qv_version_list_free(vl);
		}
		if (rc)
			goto out;
	}
	/* shard -> versions, from the manifests */
	for (size_t vi = 0; vi < n_names && rc == 0; vi++) {
		char *at = strrchr(names[vi], '@');
		*at = 0;
		qv_version *v;
		rc = qv_version_get(s, names[vi], at + 1, QV_WITH_MANIFEST, &v);
		*at = '@';
		if (rc)
			break;
		uint8_t (*ds)[QV_DIGEST_LEN];
		size_t nd;
		rc = qv__manifest_shards(v->files, v->n_files, &ds, &nd);
		qv_version_free(v);
		if (rc) {
			rc = qv__err(s, rc, "out of memory");
			break;
		}
		if (n_uses + nd > cap_uses) {
			size_t nc = (n_uses + nd) * 2;
			struct use *nu = realloc(uses, nc * sizeof(*nu));
			if (!nu) {
				free(ds);
				rc = qv__err(s, -ENOMEM, "out of memory");
				break;
			}
			uses = nu;
			cap_uses = nc;
		}
		for (size_t i = 0; i < nd; i++) {
			memcpy(uses[n_uses].d, ds[i], QV_DIGEST_LEN);
			uses[n_uses++].vi = vi;
		}
		free(ds);
	}
	if (rc)
		goto out;
	if (n_uses)
		qsort(uses, n_uses, sizeof(*uses), cmp_use);
	b->r.versions = n_names;

	uint64_t total = 0, done = 0;
	rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		goto out;
	for (size_t i = 0; i < n_uses; i++) {
		if (i && memcmp(uses[i].d, uses[i - 1].d, QV_DIGEST_LEN) == 0)
			continue;
		MDB_val k = {QV_DIGEST_LEN, uses[i].d}, v;
		if (mdb_get(txn, s->db_shards, &k, &v) == 0 && v.mv_size == sizeof(qv__shard_rec))
			total += ((qv__shard_rec *)v.mv_data)->size;
	}
	size_t cap_dmg = 0;
	for (size_t i = 0; i < n_uses && rc == 0;) {
		size_t j = i;
		while (j < n_uses && memcmp(uses[j].d, uses[i].d, QV_DIGEST_LEN) == 0)
			j++;
		MDB_val k = {QV_DIGEST_LEN, uses[i].d}, v;
		const char *why = NULL;
		int64_t size = -1;
		int tier = QV_TIER_HOT;
		int g = mdb_get(txn, s->db_shards, &k, &v);
		if (g == MDB_NOTFOUND || (g == 0 && v.mv_size != sizeof(qv__shard_rec)))
			why = "missing from the index";
		else if (g)
			rc = qv__mdb_fail(s, g, "read shard");
		else {
			size = (int64_t)((qv__shard_rec *)v.mv_data)->size;
			tier = ((qv__shard_rec *)v.mv_data)->tier;
		}
		if (rc == 0 && !why) {
			int c = shard_check(s, uses[i].d, tier, size, buf, &why);
			int now; /* moved since this snapshot: check it there */
			if (c && (now = tier_now(s, uses[i].d)) >= 0 && now != tier) {
				why = NULL;
				c = shard_check(s, uses[i].d, now, size, buf, &why);
			}
			if (c && c != QV_ECORRUPT)
				why = "unreadable";
			b->r.shards++;
			b->r.bytes += (uint64_t)size;
			done += (uint64_t)size;
			if (progress)
				progress(progress_arg, done, total);
		}
		if (rc == 0 && why) {
			if (b->r.n_damaged == cap_dmg) {
				size_t nc = cap_dmg ? cap_dmg * 2 : 8;
				qv_damage *nd = qv__arena_alloc(&b->a, nc * sizeof(*nd));
				if (!nd) {
					rc = qv__err(s, -ENOMEM, "out of memory");
					break;
				}
				if (b->r.n_damaged)
					memcpy(nd, b->r.damaged, b->r.n_damaged * sizeof(*nd));
				b->r.damaged = nd;
				cap_dmg = nc;
			}
			qv_damage *dm = &b->r.damaged[b->r.n_damaged++];
			memcpy(dm->shard, uses[i].d, QV_DIGEST_LEN);
			dm->reason = why;
			const char **vs = qv__arena_alloc(&b->a, (j - i) * sizeof(char *));
			if (!vs) {
				rc = qv__err(s, -ENOMEM, "out of memory");
				break;
			}
			for (size_t u = i; u < j; u++)
				vs[u - i] = names[uses[u].vi];
			dm->versions = vs;
			dm->n_versions = j - i;
		}
		i = j;
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	qv_model_list_free(ml);
	free(uses);
	free(names);
	free(buf);
	if (rc) {
		if (b)
			qv_verify_report_free(&b->r);
		return rc;
	}
	*out = &b->r;
	return 0;
}

void qv_verify_report_free(qv_verify_report *r)
{
	if (!r)
		return;
	struct report_box *b = (struct report_box *)r;
	qv__arena_free(&b->a);
	free(b);
}
