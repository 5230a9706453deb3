/* Error codes and messages, plus the small utilities every store file uses
 * (arena allocator, clocks). A failing call records one line of context in
 * the handle (qv__err) so the CLI can print exactly one clear error line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_int.h"

const char *qv_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case QV_ECORRUPT: return "integrity damage: stored bytes do not match their digest";
	case QV_ENOTFOUND: return "not found";
	case QV_EEXIST: return "already exists";
	case QV_EFORMAT: return "invalid input format";
	case QV_EAMBIGUOUS: return "ambiguous digest prefix";
	case QV_ENAME: return "invalid name";
	case QV_EINUSE: return "version is in use";
	case QV_ECHANGED: return "input changed while being published";
	case QV_ESCHEMA: return "store schema is not supported by this version of quiver";
	case QV_ELMDB: return "index (LMDB) failure";
	case QV_ELIMIT: return "input exceeds a limit";
	default:
		if (err < 0 && err > -4096)
			return strerror(-err);
		return "unknown error";
	}
}

int qv__mdb_err(int rc)
{
	switch (rc) {
	case 0: return 0;
	case MDB_NOTFOUND: return QV_ENOTFOUND;
	case MDB_KEYEXIST: return QV_EEXIST;
	case MDB_MAP_FULL: return -ENOSPC;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID: return QV_ECORRUPT;
	case MDB_VERSION_MISMATCH: return QV_ESCHEMA;
	default:
		if (rc > 0 && rc < 4096)
			return -rc;
		return QV_ELMDB;
	}
}

int qv__mdb_fail(qv_store *s, int rc, const char *what)
{
	return qv__err(s, qv__mdb_err(rc), "index: %s: %s", what, mdb_strerror(rc));
}

static _Thread_local char tl_errmsg[1024];

void qv__errmsg_clear(void)
{
	tl_errmsg[0] = 0;
}

int qv_store_fail(qv_store *s, int err, const char *fmt, ...)
{
	va_list ap;
	(void)s;
	va_start(ap, fmt);
	vsnprintf(tl_errmsg, sizeof(tl_errmsg), fmt, ap);
	va_end(ap);
	return err;
}

const char *qv_store_errmsg(const qv_store *s)
{
	(void)s;
	return tl_errmsg;
}

/* ---- arena ---------------------------------------------------------------- */
struct qv__arena_blk {
	struct qv__arena_blk *next;
	size_t used, cap;
	max_align_t data[];
};

void *qv__arena_alloc(qv__arena *a, size_t n)
{
	const size_t al = sizeof(max_align_t);
	n = (n + al - 1) / al * al;
	struct qv__arena_blk *b = a->head;
	if (!b || b->cap - b->used < n) {
		size_t cap = n > 16384 ? n : 16384;
		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		b->cap = cap;
		b->used = 0;
		b->next = a->head;
		a->head = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += n;
	memset(p, 0, n);
	return p;
}

char *qv__arena_strndup(qv__arena *a, const char *s, size_t n)
{
	char *p = qv__arena_alloc(a, n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

char *qv__arena_strdup(qv__arena *a, const char *s)
{
	return qv__arena_strndup(a, s, strlen(s));
}

void qv__arena_free(qv__arena *a)
{
	struct qv__arena_blk *b = a->head;
	while (b) {
		struct qv__arena_blk *n = b->next;
		free(b);
		b = n;
	}
	a->head = NULL;
}

/* ---- clocks ---------------------------------------------------------------- */
int64_t qv__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double qv__mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
