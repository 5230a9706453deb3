/* Garbage collection: free what no version references.
 *
 * gc does not trust the refcounts; it recomputes the live set from the
 * versions (versions -> manifests -> shards), fixes any entry that drifted,
 * drops dead manifest and shard entries in one transaction, and only after
 * that commits deletes files: dead shard files, shard files the index never
 * knew (a publisher or rm that crashed between its renames and its commit or
 * between its commit and its unlinks) and temp files. It holds the store lock
 * exclusively, so no publisher is between writing a shard and committing it. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_int.h"

struct dset {                       /* a sorted set of digests with counts */
	uint8_t (*d)[QV_DIGEST_LEN];
	uint64_t *count;
	size_t n, cap;
};

static int dset_add(struct dset *s, const uint8_t d[QV_DIGEST_LEN])
{
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 256;
		void *nd = realloc(s->d, nc * QV_DIGEST_LEN);
		if (!nd)
			return -ENOMEM;
		s->d = nd;
		void *ncn = realloc(s->count, nc * sizeof(uint64_t));
		if (!ncn)
			return -ENOMEM;
		s->count = ncn;
		s->cap = nc;
	}
	memcpy(s->d[s->n], d, QV_DIGEST_LEN);
	s->count[s->n++] = 1;
	return 0;
}

static int cmp_d(const void *a, const void *b)
{
	return memcmp(a, b, QV_DIGEST_LEN);
}

/* Sorts and merges duplicates, summing their counts. */
static void dset_seal(struct dset *s)
{
	if (s->n == 0)
		return;
	/* sort (digest, count) pairs by digest: counts are all 1 before sealing */
	qsort(s->d, s->n, QV_DIGEST_LEN, cmp_d);
	size_t u = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (u && memcmp(s->d[u - 1], s->d[i], QV_DIGEST_LEN) == 0) {
			s->count[u - 1]++;
			continue;
		}
		memmove(s->d[u], s->d[i], QV_DIGEST_LEN);
		s->count[u++] = 1;
	}
	s->n = u;
}

static uint64_t dset_count(const struct dset *s, const uint8_t d[QV_DIGEST_LEN])
{
	if (s->n == 0)
		return 0;
	uint8_t (*hit)[QV_DIGEST_LEN] = bsearch(d, s->d, s->n, QV_DIGEST_LEN, cmp_d);
	return hit ? s->count[hit - s->d] : 0;
}

static void dset_free(struct dset *s)
{
	free(s->d);
	free(s->count);
}

/* Live manifests (counted per version) from the versions database. */
static int live_manifests(qv_store *s, MDB_txn *txn, struct dset *man)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, s->db_versions, &c);
	if (rc)
		return qv__mdb_fail(s, rc, "cursor");
	MDB_val k, v;
	int g = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (g == 0 && rc == 0) {
		char model[QV_NAME_MAX + 1], label[QV_NAME_MAX + 1];
		const char *key = k.mv_data;
		size_t ml = strnlen(key, k.mv_size);
		if (ml <= QV_NAME_MAX && k.mv_size - ml - 1 <= QV_NAME_MAX && ml < k.mv_size) {
			memcpy(model, key, ml);
			model[ml] = 0;
			memcpy(label, key + ml + 1, k.mv_size - ml - 1);
			label[k.mv_size - ml - 1] = 0;
			qv__version_rec rec;
			rc = qv__version_rec_get(s, txn, model, label, &rec);
			if (rc == 0)
				rc = dset_add(man, rec.digest) ? qv__err(s, -ENOMEM, "out of memory") : 0;
		}
		if (rc == 0)
			g = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (rc)
		return rc;
	if (g != MDB_NOTFOUND)
		return qv__mdb_fail(s, g, "cursor");
	dset_seal(man);
	return 0;
}

/* Walks the manifests database: drops dead ones (unless dry_run), fixes
 * refcounts, and collects the live shards (counted per manifest). */
static int sweep_manifests(qv_store *s, MDB_txn *txn, const struct dset *man, int dry_run,
                           struct dset *live, qv_free_result *r)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, s->db_manifests, &c);
	if (rc)
		return qv__mdb_fail(s, rc, "cursor");
	MDB_val k, v;
	int g = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (g == 0 && rc == 0) {
		uint64_t want = k.mv_size == QV_DIGEST_LEN ? dset_count(man, k.mv_data) : 0;
		if (want == 0) {
			r->index_fixes++;
			if (!dry_run && (g = mdb_cursor_del(c, 0)) != 0) {
				rc = qv__mdb_fail(s, g, "delete manifest");
				break;
			}
		} else {
			uint64_t refs;
			memcpy(&refs, v.mv_data, 8);
			qv__arena a = {0};
			qv_file *files;
			size_t nf;
			int single;
			uint8_t (*ds)[QV_DIGEST_LEN] = NULL;
			size_t nd = 0;
			rc = qv__manifest_decode((char *)v.mv_data + 8, v.mv_size - 8, &a, &files, &nf,
			                         &single);
			if (rc == 0)
				rc = qv__manifest_shards(files, nf, &ds, &nd);
			for (size_t i = 0; rc == 0 && i < nd; i++)
				rc = dset_add(live, ds[i]);
			free(ds);
			qv__arena_free(&a);
			if (rc) {
				rc = qv__err(s, rc, "manifest: %s", qv_strerror(rc));
				break;
			}
			if (refs != want) {
				r->index_fixes++;
				if (!dry_run) {
					char *buf = malloc(v.mv_size);
					if (!buf) {
						rc = qv__err(s, -ENOMEM, "out of memory");
						break;
					}
					memcpy(buf, v.mv_data, v.mv_size);
					memcpy(buf, &want, 8);
					MDB_val nv = {v.mv_size, buf};
					g = mdb_cursor_put(c, &k, &nv, MDB_CURRENT);
					free(buf);
					if (g) {
						rc = qv__mdb_fail(s, g, "write manifest");
						break;
					}
				}
			}
		}
		g = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (rc)
		return rc;
	if (g != MDB_NOTFOUND)
		return qv__mdb_fail(s, g, "cursor");
	dset_seal(live);
	return 0;
}

/* Drops dead shard entries and fixes refcounts that drifted; the surviving
 * shards go into on_tier[] by the tier the index has them on. */
static int sweep_shards(qv_store *s, MDB_txn *txn, const struct dset *live, int dry_run,
                        struct dset on_tier[QV_TIERS], qv_free_result *r)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, s->db_shards, &c);
	if (rc)
		return qv__mdb_fail(s, rc, "cursor");
	MDB_val k, v;
	int g = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (g == 0 && rc == 0) {
		qv__shard_rec rec;
		uint64_t want = k.mv_size == QV_DIGEST_LEN ? dset_count(live, k.mv_data) : 0;
		int bad = v.mv_size != sizeof(rec);
		if (!bad)
			memcpy(&rec, v.mv_data, sizeof(rec));
		if (want == 0 || bad) {
			if (!bad && rec.refcount != 0)
				r->index_fixes++;
			if (!dry_run && (g = mdb_cursor_del(c, 0)) != 0) {
				rc = qv__mdb_fail(s, g, "delete shard");
				break;
			}
		} else {
			if (rec.tier < QV_TIERS && dset_add(&on_tier[rec.tier], k.mv_data)) {
				rc = qv__err(s, -ENOMEM, "out of memory");
				break;
			}
			if (rec.refcount != want) {
				r->index_fixes++;
				rec.refcount = want;
				MDB_val nv = {sizeof(rec), &rec};
				if (!dry_run && (g = mdb_cursor_put(c, &k, &nv, MDB_CURRENT)) != 0) {
					rc = qv__mdb_fail(s, g, "write shard");
					break;
				}
			}
		}
		g = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (rc)
		return rc;
	if (g != MDB_NOTFOUND)
		return qv__mdb_fail(s, g, "cursor");
	return 0;
}

/* Deletes (or counts) every shard file of tier that the index does not
 * place there (live: the digests it does). */
static int sweep_files(qv_store *s, int tier, const struct dset *live, int dry_run,
                       qv_free_result *r)
{
	const char *dir = s->tier[tier].shard_dir;
	DIR *d1 = opendir(dir);
	if (!d1)
		return qv__err(s, -errno, "%s: %s", dir, strerror(errno));
	struct dirent *e1;
	while ((e1 = readdir(d1))) {
		if (e1->d_name[0] == '.')
			continue;
		char p1[PATH_MAX];
		if (strlen(e1->d_name) != 2)
			continue;
		snprintf(p1, sizeof(p1), "%s/%s", dir, e1->d_name);
		DIR *d2 = opendir(p1);
		if (!d2)
			continue;
		struct dirent *e2;
		while ((e2 = readdir(d2))) {
			if (e2->d_name[0] == '.')
				continue;
			char p2[PATH_MAX + 8];
			if (strlen(e2->d_name) != 2)
				continue;
			snprintf(p2, sizeof(p2), "%s/%.2s", p1, e2->d_name);
			DIR *d3 = opendir(p2);
			if (!d3)
				continue;
			struct dirent *e3;
			while ((e3 = readdir(d3))) {
				uint8_t dg[QV_DIGEST_LEN];
				if (e3->d_name[0] == '.')
					continue;
				if (qv__hex_parse(e3->d_name, dg) == 0 && dset_count(live, dg))
					continue;
				struct stat st;
				if (fstatat(dirfd(d3), e3->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
					continue;
				if (!dry_run && unlinkat(dirfd(d3), e3->d_name, 0) < 0)
					continue;
				r->shards++;
				r->bytes += (uint64_t)st.st_size;
			}
			closedir(d3);
		}
		closedir(d2);
	}
	closedir(d1);
	return 0;
}

static int64_t count_tmp(qv_store *s)
{
	int64_t n = 0;
	for (int t = 0; t < QV_TIERS; t++) {
		DIR *d = s->tier[t].tmp_dir ? opendir(s->tier[t].tmp_dir) : NULL;
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)))
			n += e->d_name[0] != '.';
		closedir(d);
	}
	return n;
}

int qv_gc(qv_store *s, int dry_run, qv_free_result *res)
{
	qv_free_result r = {0};
	struct dset man = {0}, live = {0}, on_tier[QV_TIERS] = {{0}};
	MDB_txn *txn = NULL;
	int rc;

	qv__errmsg_clear();
	rc = qv__lock_exclusive(s);
	if (rc)
		return rc;
	rc = qv__txn_begin(s, dry_run ? MDB_RDONLY : 0, &txn);
	if (rc)
		goto out;
	rc = live_manifests(s, txn, &man);
	if (rc == 0)
		rc = sweep_manifests(s, txn, &man, dry_run, &live, &r);
	if (rc == 0)
		rc = sweep_shards(s, txn, &live, dry_run, on_tier, &r);
	if (rc)
		goto out;
	if (dry_run) {
		mdb_txn_abort(txn);
	} else {
		rc = mdb_txn_commit(txn);
		if (rc) {
			txn = NULL;
			rc = qv__mdb_fail(s, rc, "commit");
			goto out;
		}
	}
	txn = NULL;
	/* After the commit: files of dead and unknown shards (and copies left
	 * on the wrong tier by an interrupted migration), then temp files. */
	for (int t = 0; t < QV_TIERS && rc == 0; t++) {
		if (!s->tier[t].shard_dir)
			continue;
		dset_seal(&on_tier[t]);
		rc = sweep_files(s, t, &on_tier[t], dry_run, &r);
	}
	if (rc)
		goto out;
	int64_t ntmp = dry_run ? count_tmp(s) : qv__tmp_sweep(s);
	if (ntmp > 0)
		r.temp_files = (uint64_t)ntmp;
	if (!dry_run) {
		rc = qv__fsync_dir(s->shard_dir);
		if (rc)
			rc = qv__err(s, rc, "fsync %s: %s", s->shard_dir, qv_strerror(rc));
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	qv__unlock(s);
	dset_free(&man);
	dset_free(&live);
	for (int t = 0; t < QV_TIERS; t++)
		dset_free(&on_tier[t]);
	if (res)
		*res = r;
	return rc;
}
