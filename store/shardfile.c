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

int qv__mkdir_p(const char *path, unsigned mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	struct stat st;
	if (stat(buf, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
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
	DIR *d = opendir(s->tmp_dir);
	int64_t n = 0;
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
	return n;
}

int qv_shard_path(const qv_store *s, const uint8_t d[QV_DIGEST_LEN], char *buf, size_t len)
{
	char hex[QV_HEX_LEN + 1];
	qv_digest_hex(d, hex);
	int n = snprintf(buf, len, "%s/%.2s/%.2s/%s", s->shard_dir, hex, hex + 2, hex);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
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
