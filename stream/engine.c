/* The read engine: shard files -> ring of pinned buffers -> sink.
 *
 * The one idea: keep `qd` reads in flight, each into its own ring slot, and
 * hand slots to the sink strictly in submission order. In-order hand-off
 * means each shard's bytes pass the XXH3 check in file order (so --verify
 * needs no second pass) and costs little, since one queue's reads complete
 * nearly in order. A slot is refilled only after the sink says its copy is
 * done (the CUDA sink copies asynchronously).
 *
 * Every completion is checked: errors abort the load with the shard and
 * offset named; a short read is resubmitted for the rest (from the aligned
 * offset below it, for O_DIRECT); a read that hits end of file before the
 * index's size means the shard file is truncated. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL /* the state type of tiering's qv__xxh3_update */
#include <xxhash.h>

#include "stream_int.h"
#include "xxh_avx2.h"

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_READY, SLOT_SINKING };

struct slot {
	enum slot_state state;
	size_t target;
	uint64_t off;      /* file offset of the chunk */
	size_t want;       /* bytes of the chunk that belong to the shard */
	size_t req;        /* bytes asked for (aligned up for O_DIRECT) */
	size_t got;        /* bytes read so far */
	size_t best;       /* most bytes ever read into it (detects EOF on re-reads) */
	char *buf;         /* the ring slot */
};

double qv__stream_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t align_up(size_t v)
{
	return (v + QV_IO_ALIGN - 1) / QV_IO_ALIGN * QV_IO_ALIGN;
}

struct engine {
	const struct qv__engine_cfg *cfg;
	struct qv__backend *be;
	struct qv__target *t;
	size_t n;
	qv_sink *sink;
	char *ring;
	struct slot *slots;
	unsigned *fifo;    /* slots in submission order */
	unsigned head, count;
	/* next chunk to submit */
	size_t next_t;
	uint64_t next_off;
	/* verify state of the target being handed to the sink */
	XXH3_state_t *xx;
	size_t hash_t;
	uint64_t total, done, reads;
	double t0, first_done;
	char *err;
	size_t errlen;
};

static int submit_slot(struct engine *e, unsigned s)
{
	struct slot *sl = &e->slots[s];
	const struct qv__target *t = &e->t[sl->target];
	/* Resume after a short read: O_DIRECT needs the offset aligned, so
	 * re-read from the aligned position below what we have. */
	size_t have = e->cfg->direct ? sl->got / QV_IO_ALIGN * QV_IO_ALIGN : sl->got;
	sl->got = have;
	int rc = e->be->submit(e->be, s, t, sl->buf + have, sl->req - have, sl->off + have);
	if (rc) {
		snprintf(e->err, e->errlen, "shard %s: cannot queue a read: %s", t->name, strerror(-rc));
		sl->state = SLOT_READY; /* nothing in flight */
		return rc;
	}
	sl->state = SLOT_READING;
	return 0;
}

/* A free slot: FREE, or SINKING with its copy done. -1 if none now. */
static int free_slot(struct engine *e, int *rc)
{
	for (unsigned s = 0; s < e->cfg->qd; s++) {
		struct slot *sl = &e->slots[s];
		if (sl->state == SLOT_FREE)
			return (int)s;
		if (sl->state == SLOT_SINKING) {
			int b = qv_sink_slot_busy(e->sink, s);
			if (b < 0) {
				snprintf(e->err, e->errlen, "%s", qv_sink_errmsg(e->sink));
				*rc = -EIO;
				return -1;
			}
			if (b == 0) {
				sl->state = SLOT_FREE;
				return (int)s;
			}
		}
	}
	return -1;
}

/* Fills free slots with the next chunks. */
static int fill(struct engine *e)
{
	int rc = 0;
	while (e->next_t < e->n && e->count < e->cfg->qd) {
		const struct qv__target *t = &e->t[e->next_t];
		if (e->next_off >= t->size) { /* empty shard or done: next target */
			e->next_t++;
			e->next_off = 0;
			continue;
		}
		int s = free_slot(e, &rc);
		if (rc)
			return rc;
		if (s < 0) {
			if (e->count > 0)
				break; /* reap first */
			/* nothing in flight: wait for the oldest copy to finish */
			for (unsigned i = 0; i < e->cfg->qd; i++)
				if (e->slots[i].state == SLOT_SINKING) {
					if (qv_sink_slot_wait(e->sink, i)) {
						snprintf(e->err, e->errlen, "%s", qv_sink_errmsg(e->sink));
						return -EIO;
					}
					e->slots[i].state = SLOT_FREE;
					s = (int)i;
					break;
				}
			if (s < 0)
				return -EIO; /* cannot happen: qd slots, none in flight */
		}
		struct slot *sl = &e->slots[s];
		uint64_t left = t->size - e->next_off;
		sl->target = e->next_t;
		sl->off = e->next_off;
		sl->want = left < e->cfg->chunk_bytes ? (size_t)left : e->cfg->chunk_bytes;
		sl->req = e->cfg->direct ? align_up(sl->want) : sl->want;
		sl->got = sl->best = 0;
		/* Always into the ring, host destinations too: its huge pages take
		 * a read in a few segments, a fresh arena's 4 KiB pages in one
		 * each, and the copy costs less than the split reads (hot loads to
		 * host memory, interleaved runs: 2-vCPU box 1.18 vs 0.99 GB/s,
		 * H200 box 2.35 vs 1.85; docs/BENCHMARKS.md). */
		sl->buf = e->ring + (size_t)s * e->cfg->chunk_bytes;
		rc = submit_slot(e, (unsigned)s);
		if (rc)
			return rc;
		e->fifo[(e->head + e->count) % e->cfg->qd] = (unsigned)s;
		e->count++;
		e->next_off += sl->want;
		if (e->next_off >= t->size) {
			e->next_t++;
			e->next_off = 0;
		}
	}
	rc = e->be->flush(e->be);
	if (rc)
		snprintf(e->err, e->errlen, "cannot submit reads: %s", strerror(-rc));
	return rc;
}

/* Hands ready slots at the head of the FIFO to the sink, in order. */
static int drain(struct engine *e)
{
	while (e->count > 0) {
		unsigned s = e->fifo[e->head];
		struct slot *sl = &e->slots[s];
		if (sl->state != SLOT_READY)
			break;
		const struct qv__target *t = &e->t[sl->target];
		const char *buf = sl->buf;
		if (e->cfg->verify) {
			if (e->hash_t != sl->target || sl->off == 0) {
				XXH3_64bits_reset(e->xx);
				e->hash_t = sl->target;
			}
			qv__xxh3_update(e->xx, buf, sl->want); /* AVX2 where the CPU has it */
			if (sl->off + sl->want == t->size && XXH3_64bits_digest(e->xx) != t->xxh3) {
				snprintf(e->err, e->errlen,
				         "shard %s: checksum mismatch (XXH3), its bytes are damaged", t->name);
				return QV_ECORRUPT;
			}
		}
		int rc = qv_sink_put(e->sink, s, buf, sl->want, t->dest_off + sl->off);
		if (rc) {
			snprintf(e->err, e->errlen, "shard %s: copy to destination: %s", t->name,
			         qv_sink_errmsg(e->sink));
			return rc == -ERANGE ? -ERANGE : -EIO;
		}
		sl->state = SLOT_SINKING;
		e->head = (e->head + 1) % e->cfg->qd;
		e->count--;
		e->done += sl->want;
		if (e->first_done == 0 && sl->target == 0 && sl->off + sl->want == t->size) {
			/* the first tensor lives in the first shard: done when its copy is */
			if (qv_sink_slot_wait(e->sink, s)) {
				snprintf(e->err, e->errlen, "%s", qv_sink_errmsg(e->sink));
				return -EIO;
			}
			e->first_done = qv__stream_now() - e->t0;
		}
		if (e->cfg->progress)
			e->cfg->progress(e->cfg->progress_arg, e->done,
			                 e->total + e->cfg->progress_after);
	}
	return 0;
}

static int complete(struct engine *e, unsigned s, int64_t res)
{
	struct slot *sl = &e->slots[s];
	const struct qv__target *t = &e->t[sl->target];
	/* This completion is consumed: nothing of the slot is in flight until a
	 * resubmission below puts it back (submit_slot sets SLOT_READING). */
	sl->state = SLOT_READY;
	e->reads++;
	switch (qv__fault_check(e->reads)) {
	case QV_FAULT_EIO: res = -EIO; break;
	case QV_FAULT_SHORT: res = res > 1 ? res / 2 : res; break;
	case QV_FAULT_EINVAL: res = -EINVAL; break;
	default: break;
	}
	if (res == -EINVAL && e->cfg->direct) {
		snprintf(e->err, e->errlen, "shard %s: O_DIRECT read refused (EINVAL)", t->name);
		return QV__EDIRECT;
	}
	if (res < 0) {
		snprintf(e->err, e->errlen, "shard %s: read at offset %llu: %s", t->name,
		         (unsigned long long)(sl->off + sl->got), strerror((int)-res));
		return (int)res;
	}
	if (sl->got + (size_t)res < sl->want && sl->got + (size_t)res <= sl->best) {
		/* a re-read brought nothing new: the file ends here */
		res = 0;
	}
	if (res == 0 && sl->got < sl->want) {
		sl->got = sl->best > sl->got ? sl->best : sl->got;
		snprintf(e->err, e->errlen,
		         "shard %s: file ends at %llu bytes, shorter than the %llu the index says",
		         t->name, (unsigned long long)(sl->off + sl->got), (unsigned long long)t->size);
		return QV_ECORRUPT;
	}
	sl->got += (size_t)res;
	if (sl->got > sl->best)
		sl->best = sl->got;
	if (sl->got < sl->want)
		return submit_slot(e, s) ? -EIO : e->be->flush(e->be);
	return 0;
}

int qv__engine_run(const struct qv__engine_cfg *cfg, struct qv__backend *be,
                   struct qv__target *t, size_t n, qv_sink *sink, char *ring,
                   struct qv__engine_stats *st, char *err, size_t errlen)
{
	struct engine e = {.cfg = cfg, .be = be, .t = t, .n = n, .sink = sink, .ring = ring,
	                   .err = err, .errlen = errlen, .hash_t = SIZE_MAX, .reads = st->reads};
	int rc = 0;
	e.slots = calloc(cfg->qd, sizeof(*e.slots));
	e.fifo = calloc(cfg->qd, sizeof(*e.fifo));
	e.xx = cfg->verify ? XXH3_createState() : NULL;
	if (!e.slots || !e.fifo || (cfg->verify && !e.xx)) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		e.total += t[i].size;
	e.t0 = qv__stream_now();
	for (;;) {
		rc = fill(&e);
		if (rc)
			break;
		if (e.count == 0)
			break;
		unsigned s;
		int64_t res;
		rc = be->reap(be, &s, &res);
		if (rc) {
			snprintf(err, errlen, "waiting for reads: %s", strerror(-rc));
			break;
		}
		if (s >= cfg->qd || e.slots[s].state != SLOT_READING) {
			snprintf(err, errlen, "read engine returned an unknown slot %u", s);
			rc = -EIO;
			break;
		}
		rc = complete(&e, s, res);
		if (rc == 0)
			rc = drain(&e);
		if (rc)
			break;
	}
	/* Reads still in flight write into the ring: wait for them before the
	 * caller frees it. */
	while (e.count > 0) {
		unsigned s;
		int64_t res;
		int any = 0;
		for (unsigned i = 0; i < cfg->qd; i++)
			any |= e.slots[i].state == SLOT_READING;
		if (!any || be->reap(be, &s, &res))
			break;
		if (s < cfg->qd && e.slots[s].state == SLOT_READING)
			e.slots[s].state = SLOT_READY;
	}
	if (rc == 0 && qv_sink_finish(sink)) {
		snprintf(err, errlen, "%s", qv_sink_errmsg(sink));
		rc = -EIO;
	}
	if (rc == 0 && e.first_done == 0)
		e.first_done = qv__stream_now() - e.t0;
	st->bytes = e.done;
	st->first_done_s = e.first_done;
out:
	st->reads = e.reads;
	if (e.xx)
		XXH3_freeState(e.xx);
	free(e.slots);
	free(e.fifo);
	return rc;
}
