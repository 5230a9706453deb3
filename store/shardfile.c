/* Shard files on disk and the small POSIX helpers around them.
 *
 * A shard lives at root/shards/ab/cd/<64 hex digits>, named by the SHA-256 of
 * its bytes, so a file that exists under its name is complete: writers fill a
 * temp file in root/tmp (same file system), fsync it, rename it into place
 * and fsync the folder before any index entry may point at it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_int.h"

void qv__shard_path(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t n)
{
	qv_shard_path(s, d, buf, n);
}

int qv__mkdir_p_new(const char *path, unsigned mode, struct qv__made *made)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (made) {
		made->path = path;
		made->n = 0;
	}
	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char was = *p;
		*p = 0;
		if (mkdir(buf, mode) == 0) {
			if (made && made->n < sizeof(made->len) / sizeof(made->len[0]))
				made->len[made->n++] = (uint16_t)(p - buf);
		} else if (errno != EEXIST) {
			return -errno;
		}
		*p = was;
		if (was == '\0')
			break;
	}
	struct stat st;
	if (stat(buf, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int qv__mkdir_p(const char *path, unsigned mode)
{
	return qv__mkdir_p_new(path, mode, NULL);
}

void qv__made_undo(const struct qv__made *made)
{
	char buf[PATH_MAX];
	/* the very strings mkdir made, deepest first; one that is not empty
	 * (or is gone) stays as it is */
	for (unsigned i = made->n; i-- > 0;) {
		if (made->len[i] >= sizeof(buf))
			continue;
		memcpy(buf, made->path, made->len[i]);
		buf[made->len[i]] = '\0';
		(void)rmdir(buf);
	}
}

int qv__shard_dir_make(const qv_store *s, const uint8_t d[QV_DIGEST_LEN])
{
	char hex[QV_HEX_LEN + 1], buf[PATH_MAX];
	qv_digest_hex(d, hex);
	snprintf(buf, sizeof(buf), "%s/%.2s", s->shard_dir, hex);
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	snprintf(buf, sizeof(buf), "%s/%.2s/%.2s", s->shard_dir, hex, hex + 2);
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int qv__fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

int qv__fsync_parent(const char *path)
{
	char buf[PATH_MAX];
	snprintf(buf, sizeof(buf), "%s", path);
	char *slash = strrchr(buf, '/');
	if (!slash)
		return qv__fsync_dir(".");
	if (slash == buf)
		slash[1] = 0;
	else
		*slash = 0;
	return qv__fsync_dir(buf);
}

int qv__pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return QV_EFORMAT; /* the file is shorter than it should be */
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int qv__pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int copy_fallback(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t len)
{
	const size_t bufsz = 4u << 20;
	char *buf = malloc(bufsz);
	int rc = 0;
	if (!buf)
		return -ENOMEM;
	while (len && rc == 0) {
		size_t n = len < bufsz ? (size_t)len : bufsz;
		rc = qv__pread_full(in_fd, buf, n, in_off);
		if (rc == 0)
			rc = qv__pwrite_full(out_fd, buf, n, out_off);
		in_off += n;
		out_off += n;
		len -= n;
	}
	free(buf);
	return rc;
}

int qv__copy_range(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t len)
{
	while (len) {
		loff_t io = (loff_t)in_off, oo = (loff_t)out_off;
		size_t want = len > (1u << 30) ? (1u << 30) : (size_t)len;
		ssize_t n = copy_file_range(in_fd, &io, out_fd, &oo, want, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
			    errno == EBADF || errno == EPERM)
				return copy_fallback(in_fd, in_off, out_fd, out_off, len);
			return -errno;
		}
		if (n == 0)
			return QV_EFORMAT; /* source shorter than expected */
		in_off += (uint64_t)n;
		out_off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

int64_t qv__tmp_sweep(qv_store *s)
{
	int64_t n = 0;
	for (int t = 0; t < QV_TIERS; t++) {
		if (!s->tier[t].tmp_dir)
			continue;
		DIR *d = opendir(s->tier[t].tmp_dir);
		if (!d)
			return -errno;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			if (unlinkat(dirfd(d), e->d_name, 0) == 0)
				n++;
		}
		closedir(d);
	}
	return n;
}

int qv_shard_path_tier(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, char *buf,
                       size_t len)
{
	char hex[QV_HEX_LEN + 1];
	if (tier < 0 || tier >= QV_TIERS || !s->tier[tier].shard_dir)
		return -ENOENT;
	qv_digest_hex(d, hex);
	int n = snprintf(buf, len, "%s/%.2s/%.2s/%s", s->tier[tier].shard_dir, hex, hex + 2, hex);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int qv_shard_path(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t len)
{
	return qv_shard_path_tier(s, d, QV_TIER_HOT, buf, len);
}

int qv_shard_info_get(qv_store *s, const uint8_t d[QV_DIGEST_LEN], qv_shard_info *out)
{
	MDB_txn *txn;
	int rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	MDB_val k = {QV_DIGEST_LEN, (void *)d}, v;
	rc = mdb_get(txn, s->db_shards, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(qv__shard_rec)) {
		qv__shard_rec rec;
		memcpy(&rec, v.mv_data, sizeof(rec));
		out->size = rec.size;
		out->stored_size = rec.stored_size;
		out->xxh3 = rec.xxh3;
		out->tier = rec.tier;
		out->codec = rec.codec;
		out->last_use_ns = rec.last_use_ns;
	} else {
		char hex[QV_HEX_LEN + 1];
		qv_digest_hex(d, hex);
		rc = rc == MDB_NOTFOUND || rc == 0
			? qv__err(s, rc ? QV_ENOTFOUND : QV_ECORRUPT, "shard %.16s: %s", hex,
			          rc ? "not in the index" : "damaged index record")
			: qv__mdb_fail(s, rc, "read shard");
	}
	mdb_txn_abort(txn);
	return rc;
}

int qv_shard_relocate(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int from, int to,
                      uint64_t epoch, uint64_t stored_size, int codec)
{
	MDB_txn *txn;
	char hex[QV_HEX_LEN + 1];
	qv_digest_hex(d, hex);
	int rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		return rc;
	MDB_val k = {QV_DIGEST_LEN, (void *)d}, v;
	qv__shard_rec rec;
	rc = mdb_get(txn, s->db_shards, &k, &v);
	if (rc == MDB_NOTFOUND) {
		rc = qv__err(s, QV_ENOTFOUND, "shard %.16s: no longer in the index", hex);
		goto out;
	}
	if (rc || v.mv_size != sizeof(rec)) {
		rc = rc ? qv__mdb_fail(s, rc, "read shard")
		        : qv__err(s, QV_ECORRUPT, "shard %.16s: damaged index record", hex);
		goto out;
	}
	memcpy(&rec, v.mv_data, sizeof(rec));
	if (rec.tier != from) {
		rc = qv__err(s, QV_ECHANGED, "shard %.16s: moved by someone else", hex);
		goto out;
	}
	if (epoch != QV_EPOCH_ANY) {
		uint64_t now;
		rc = qv__protect_epoch_get(s, txn, &now);
		if (rc == 0 && now != epoch)
			rc = qv__err(s, QV_ECHANGED, "a version was protected while shard %.16s moved",
			             hex);
		if (rc)
			goto out;
	}
	rec.tier = (uint8_t)to;
	rec.codec = (uint8_t)codec;
	rec.stored_size = stored_size;
	v.mv_size = sizeof(rec);
	v.mv_data = &rec;
	rc = mdb_put(txn, s->db_shards, &k, &v, 0);
	if (rc) {
		rc = qv__mdb_fail(s, rc, "write shard");
		goto out;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc)
		rc = qv__mdb_fail(s, rc, "commit");
out:
	if (txn)
		mdb_txn_abort(txn);
	return rc;
}

int qv_shard_foreach(qv_store *s, qv_shard_visit_fn fn, void *arg)
{
	MDB_txn *txn;
	MDB_cursor *c;
	int rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	rc = mdb_cursor_open(txn, s->db_shards, &c);
	if (rc) {
		mdb_txn_abort(txn);
		return qv__mdb_fail(s, rc, "cursor");
	}
	MDB_val k, v;
	int g = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (g == 0) {
		if (k.mv_size == QV_DIGEST_LEN && v.mv_size == sizeof(qv__shard_rec)) {
			qv__shard_rec rec;
			memcpy(&rec, v.mv_data, sizeof(rec));
			qv_shard_info info = {rec.size, rec.stored_size, rec.xxh3, rec.tier, rec.codec,
			                      rec.last_use_ns};
			rc = fn(arg, k.mv_data, &info);
			if (rc)
				break;
		}
		g = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	if (rc == 0 && g != MDB_NOTFOUND)
		rc = qv__mdb_fail(s, g, "cursor");
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return rc;
}
