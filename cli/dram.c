/* The daemon's DRAM tier: whole versions kept in pinned host memory.
 *
 * An entry is one version's load arena, exactly as qv_load_run() lays it out
 * in host memory, with its tensor table. The memory is a memfd mapped shared
 * and pinned for DMA (so copies to the GPU run at the PCIe link's rate); a
 * host load passes that memfd itself to the client, which maps it
 * copy-on-write: a swap from DRAM copies nothing. Entries are found by digest, so
 * two labels of one content share one entry. When space is needed the least
 * recently used entries no request is reading are dropped. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

struct dram_entry {
	struct dram_entry *next;
	uint8_t digest[QV_DIGEST_LEN];
	char name[2 * QV_NAME_MAX + 2];  /* model@label it was warmed as */
	void *buf;
	size_t bytes;   /* of buf: at least a page */
	size_t size;    /* the load's: 0 for an empty version */
	int fd;         /* the memfd behind buf */
	int pinned;
	qv_load *table;
	uint64_t last_use;
	int readers;
};

static struct {
	pthread_mutex_t mu;
	pthread_mutex_t warm_mu;  /* one warm at a time: no duplicate entries */
	uint64_t capacity, used, clock;
	struct dram_entry *head;
} D = {.mu = PTHREAD_MUTEX_INITIALIZER, .warm_mu = PTHREAD_MUTEX_INITIALIZER};

void dram_init(uint64_t capacity)
{
	D.capacity = capacity;
}

static double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void entry_free(struct dram_entry *e)
{
	qv_load_destroy(e->table);
	if (e->pinned)
		qv_gpu_host_unregister(e->buf);
	if (e->buf)
		munmap(e->buf, e->bytes);
	if (e->fd >= 0)
		close(e->fd);
	free(e);
}

/* A shared memfd of bytes, mapped and pinned where CUDA allows. Sealable:
 * entry_seal() makes it read-only for everyone it is passed to. */
static int entry_alloc(struct dram_entry *e, size_t bytes)
{
	e->bytes = bytes;
	e->fd = memfd_create("quiver-dram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (e->fd < 0 || ftruncate(e->fd, (off_t)bytes) < 0)
		return -errno;
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, e->fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	e->buf = p;
	e->pinned = qv_gpu_host_register(p, bytes) == 0;
	return 0;
}

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010 /* Linux 5.1 */
#endif

/* Seals a filled entry's memfd: its size fixed, and no new writable shared
 * mapping or write through any descriptor (the daemon's own mapping stays).
 * Clients get it on every DRAM hit; one must not change what the others
 * map. Returns 0 or -errno (a kernel without F_SEAL_FUTURE_WRITE: sizes
 * are still sealed, and the descriptors clients get are read-only). */
static int entry_seal(struct dram_entry *e)
{
	if (fcntl(e->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE) == 0)
		return 0;
	int rc = -errno;
	if (fcntl(e->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		rc = -errno;
	return rc;
}

static struct dram_entry *find(const uint8_t d[QV_DIGEST_LEN])
{
	for (struct dram_entry *e = D.head; e; e = e->next)
		if (memcmp(e->digest, d, QV_DIGEST_LEN) == 0)
			return e;
	return NULL;
}

/* Drops LRU unread entries until `need` more bytes fit. Called with mu held. */
static int make_room(uint64_t need)
{
	while (D.used + need > D.capacity) {
		struct dram_entry **victim = NULL;
		for (struct dram_entry **pp = &D.head; *pp; pp = &(*pp)->next)
			if ((*pp)->readers == 0 && (!victim || (*pp)->last_use < (*victim)->last_use))
				victim = pp;
		if (!victim)
			return -ENOSPC;
		struct dram_entry *e = *victim;
		*victim = e->next;
		D.used -= e->bytes;
		log_info("dram: dropped %s (%zu bytes) to make room", e->name, e->bytes);
		metrics_dram_evict();
		entry_free(e);
	}
	return 0;
}

int dram_warm(qv_store *s, const char *model, const char *ref, char *err, size_t errlen)
{
	qv_version *v = NULL;
	uint64_t need = 0;
	struct dram_entry *e = NULL;
	pthread_mutex_lock(&D.warm_mu);
	int rc = qv_version_get(s, model, ref, 0, &v);
	if (rc == 0)
		rc = qv_load_size(s, model, v->label, &need);
	if (rc) {
		snprintf(err, errlen, "%s", qv_store_errmsg(s));
		goto out;
	}
	uint64_t size = need;
	if (need == 0)
		need = 4096; /* an empty version still takes a page: keep the accounting exact */
	pthread_mutex_lock(&D.mu);
	if (find(v->digest)) {
		find(v->digest)->last_use = ++D.clock;
		pthread_mutex_unlock(&D.mu);
		goto out;
	}
	if (need > D.capacity) {
		pthread_mutex_unlock(&D.mu);
		snprintf(err, errlen, "%s@%s needs %llu bytes; the DRAM tier holds %llu", model, v->label,
		         (unsigned long long)need, (unsigned long long)D.capacity);
		rc = QV_ELIMIT;
		goto out;
	}
	rc = make_room(need);
	if (rc == 0)
		D.used += need; /* reserve while loading */
	pthread_mutex_unlock(&D.mu);
	if (rc) {
		snprintf(err, errlen, "the DRAM tier is full of versions being read");
		goto out;
	}
	e = calloc(1, sizeof(*e));
	if (e)
		e->fd = -1;
	double t0 = now_mono();
	rc = e ? entry_alloc(e, need) : -ENOMEM;
	double t_alloc = now_mono() - t0;
	if (rc == 0) {
		qv_load_opts lo = {.device = QV_DEVICE_CPU};
		rc = qv_load_run(s, model, v->label, e->buf, e->bytes, &lo, &e->table);
		int src = rc == 0 ? entry_seal(e) : 0;
		if (rc)
			snprintf(err, errlen, "%s", qv_store_errmsg(s));
		else if (src)
			log_info("dram: %s@%s: sealing its memory only in part: %s", model, v->label,
			         strerror(-src));
		if (rc == 0)
			log_info("dram: %s@%s: %zu bytes, memory %.2f s (pinned: %s), load %.2f s", model,
			         v->label, e->bytes, t_alloc, e->pinned ? "yes" : "no",
			         now_mono() - t0 - t_alloc);
	} else {
		snprintf(err, errlen, "cannot allocate %llu bytes of pinned memory",
		         (unsigned long long)need);
	}
	pthread_mutex_lock(&D.mu);
	if (rc) {
		D.used -= need;
	} else {
		memcpy(e->digest, v->digest, QV_DIGEST_LEN);
		e->size = size;
		snprintf(e->name, sizeof(e->name), "%s@%s", model, v->label);
		e->last_use = ++D.clock;
		e->next = D.head;
		D.head = e;
		e = NULL;
	}
	pthread_mutex_unlock(&D.mu);
out:
	if (e)
		entry_free(e);
	qv_version_free(v);
	pthread_mutex_unlock(&D.warm_mu);
	return rc;
}

int dram_cool(qv_store *s, const char *model, const char *ref, char *err, size_t errlen)
{
	/* by content; a version removed since it was warmed, by its name */
	qv_version *v = NULL;
	char name[sizeof(((struct dram_entry *)0)->name)];
	int rc = qv_version_get(s, model, ref, 0, &v);
	if (rc && rc != QV_ENOTFOUND) {
		snprintf(err, errlen, "%s", qv_store_errmsg(s));
		return rc;
	}
	if (rc)
		snprintf(err, errlen, "%s", qv_store_errmsg(s));
	snprintf(name, sizeof(name), "%s@%s", model, v ? v->label : ref ? ref : "");
	pthread_mutex_lock(&D.mu);
	int found = 0;
	for (struct dram_entry **pp = &D.head; *pp; pp = &(*pp)->next) {
		struct dram_entry *e = *pp;
		if (v ? memcmp(e->digest, v->digest, QV_DIGEST_LEN) != 0 : strcmp(e->name, name) != 0)
			continue;
		found = 1;
		if (e->readers) {
			rc = -EBUSY;
			snprintf(err, errlen, "%s is being read; try again", name);
			break;
		}
		*pp = e->next;
		D.used -= e->bytes;
		entry_free(e);
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&D.mu);
	if (!found && v) {
		rc = QV_ENOTFOUND;
		snprintf(err, errlen, "%s is not in the DRAM tier", name);
	}
	qv_version_free(v);
	return rc;
}

const void *dram_acquire(const uint8_t d[QV_DIGEST_LEN], size_t *bytes, const qv_load **table,
                         int *fd)
{
	pthread_mutex_lock(&D.mu);
	struct dram_entry *e = find(d);
	if (e) {
		e->readers++;
		e->last_use = ++D.clock;
		*bytes = e->size;
		*table = e->table;
		if (fd)
			*fd = e->fd;
	}
	pthread_mutex_unlock(&D.mu);
	metrics_dram_lookup(e != NULL);
	return e ? e->buf : NULL;
}

void dram_release(const uint8_t d[QV_DIGEST_LEN])
{
	pthread_mutex_lock(&D.mu);
	struct dram_entry *e = find(d);
	if (e && e->readers > 0)
		e->readers--;
	pthread_mutex_unlock(&D.mu);
}

json_t *dram_json(void)
{
	json_t *arr = json_array();
	pthread_mutex_lock(&D.mu);
	for (struct dram_entry *e = D.head; e; e = e->next)
		json_array_append_new(arr, json_pack("{s:s, s:I, s:b, s:i}", "version", e->name, "bytes",
		                                     (json_int_t)e->bytes, "pinned", e->pinned,
		                                     "readers", e->readers));
	json_t *j = json_pack("{s:I, s:I, s:o}", "capacity", (json_int_t)D.capacity, "used",
	                      (json_int_t)D.used, "entries", arr);
	pthread_mutex_unlock(&D.mu);
	return j;
}

void dram_usage(uint64_t *capacity, uint64_t *used, uint64_t *entries)
{
	pthread_mutex_lock(&D.mu);
	*capacity = D.capacity;
	*used = D.used;
	*entries = 0;
	for (struct dram_entry *e = D.head; e; e = e->next)
		(*entries)++;
	pthread_mutex_unlock(&D.mu);
}

void dram_shutdown(void)
{
	pthread_mutex_lock(&D.mu);
	while (D.head) {
		struct dram_entry *e = D.head;
		D.head = e->next;
		entry_free(e);
	}
	D.used = 0;
	pthread_mutex_unlock(&D.mu);
}
