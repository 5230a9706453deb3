/* The cold read path: compressed frames -> readers -> decoders -> sink.
 *
 * A cold shard is a file of independent frames (tiering's codec), each 4 KiB
 * aligned and checksummed. n_readers reader threads take frames in order
 * and read each one with O_DIRECT (falling back to buffered reads where the
 * file system refuses it) into a read buffer of their own; a pool of decode
 * workers, one per core by default, decodes read frames straight into a
 * host destination, or into a pinned buffer from a small pool that the
 * calling thread, which alone talks to the sink (the sink is
 * single-threaded), hands on (CUDA). Reads and decodes are separate so the
 * disk always has n_readers frames asked for while every core decodes.
 * Frames are independent, so their order of arrival does not matter; every
 * frame's XXH3 is checked by the decoder, so damaged bytes never reach the
 * destination as good data. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver/codec.h"
#include "stream_int.h"

/* A read buffer holds any stored frame and starts on a huge page of
 * qv_pinned_alloc's memory: a frame read with O_DIRECT lands in physically
 * contiguous memory. On the 2-vCPU box (virtio-blk) 16 readers that only
 * read ran at 0.88-1.23 GB/s into 4 KiB pages and 1.24-1.39 into huge
 * pages, interleaved runs (docs/BENCHMARKS.md). */
/* qv_codec_header_read() bounds a frame's stored length by its raw length,
 * which is its file's frame_bytes (the last frame's less), at most
 * QV_CODEC_FRAME_MAX: an aligned read of it fits a buffer of the largest
 * frame_bytes of the targets, rounded up to huge pages (rstride). */
_Static_assert(QV_CODEC_FRAME_MAX % QV_CODEC_ALIGN == 0, "an aligned frame read fits a buffer");

/* Frames read ahead: the caller picks how many readers (load.c: fewer on a
 * rotational disk). There is a read buffer for each reader and one more for
 * each decoder, which holds the frame it decodes (with one buffer per
 * reader, 16 decoders left the disk idle). COLD_QUEUED more hold frames
 * read and waiting for a decoder, so the disk keeps reading through a burst
 * of slow decodes and the decoders through a slow patch of the disk, where
 * the two run at about the same rate. 2-vCPU box, 1.07 GB cold loads into
 * fresh memory, interleaved, against none: 16 more 2.200 GB/s raw against
 * 2.114 (medians of 10, faster in 6 of 10), 32 more 2.104 against 1.995
 * (medians of 20, faster in 13). */
#define COLD_QUEUED 16u
/* Frames merged on the GPU keep their read buffer until the sink is done
 * with it (the sign+mantissa plane is copied up from there): this many
 * more read buffers at most, one per decode buffer. */
#define COLD_HELD_MAX 32u
#define COLD_RBUFS_MAX (QV_LOAD_COLD_READS_MAX + QV_COLD_THREADS_MAX + COLD_QUEUED + COLD_HELD_MAX)

/* BF16 pairs frames of at least this many raw bytes go to a sink that
 * merges them itself (the CUDA sink: qv_sink_put_pairs) as planes; smaller
 * ones are not worth three kernel launches. */
#define COLD_SINK_MERGE_MIN (64u << 10)

struct job_done {
	size_t target;
	uint32_t frame;
	unsigned buf;
	int rc;
	int in_place;  /* decoded straight into the host destination */
	int planes;    /* taken apart into pp for the sink to merge; holds rbuf */
	unsigned rbuf;
	struct qv_codec_pairs pp;
};

struct job_read {
	size_t target;
	uint32_t frame;
	unsigned rbuf;
	int rc;        /* of the read */
};

struct cold {
	struct qv__cold_target *t;
	size_t n;
	qv_sink *sink;
	unsigned slot_base;
	char *bufs;                 /* n_bufs pinned buffers of buf_bytes */
	size_t buf_bytes;
	char *host;                 /* a host sink's destination: decode straight into it */
	uint64_t host_bytes;
	unsigned n_bufs;
	char *rbufs;                /* n_rbufs read buffers, rstride apart */
	size_t rstride;
	unsigned n_rbufs;           /* readers + decoders + COLD_QUEUED (+ held) */
	int sink_merges;            /* the sink merges pairs frames (qv_sink_pairs_reserve) */
	pthread_mutex_t mu;
	pthread_cond_t cv_free, cv_done, cv_rfree, cv_read;
	unsigned *free_list, n_free;
	struct job_done *done;      /* ring of n_bufs */
	unsigned dhead, dcount;
	unsigned rfree[COLD_RBUFS_MAX], n_rfree;
	struct job_read read[COLD_RBUFS_MAX]; /* ring of n_rbufs: frames read, not yet decoding */
	unsigned rhead, rcount;
	size_t next_t;              /* next frame to read */
	uint32_t next_f;
	uint64_t frames_total, frames_taken; /* taken: by a decoder */
	uint64_t buffered_frames;   /* read through the page cache */
	uint64_t sink_merged_bytes; /* raw bytes of frames the sink merged */
	int stop;
};

/* Next frame to read, or 0 if none left / stopping. Called with mu held. */
static int take_job(struct cold *c, size_t *t, uint32_t *f)
{
	while (c->next_t < c->n && c->next_f >= c->t[c->next_t].hdr->frame_count) {
		c->next_t++;
		c->next_f = 0;
	}
	if (c->stop || c->next_t >= c->n)
		return 0;
	*t = c->next_t;
	*f = c->next_f++;
	return 1;
}

/* Reads a frame into rbuf; *buffered set when any of it went through the
 * page cache (no O_DIRECT descriptor, O_DIRECT refused, or an odd tail):
 * the descriptor only ever falls back from O_DIRECT, never returns to it. */
static int read_frame(struct qv__cold_target *ct, const struct qv_codec_frame *fr, char *rbuf,
                      int *buffered)
{
	size_t len = (size_t)qv_codec_align(fr->stored_bytes);
	int fd = ct->direct_fd >= 0 ? ct->direct_fd : ct->fd;

	for (size_t got = 0; got < fr->stored_bytes;) {
		ssize_t r = pread(fd, rbuf + got, len - got, (off_t)(fr->offset + got));
		if (r < 0 && errno == EINVAL && fd == ct->direct_fd) {
			fd = ct->fd; /* O_DIRECT refused: buffered from here on */
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return QV_ECORRUPT; /* shorter than its frame table says */
		got += (size_t)r;
		if (fd == ct->direct_fd && got % QV_CODEC_ALIGN)
			fd = ct->fd; /* continue an odd tail buffered */
	}
	*buffered = fd != ct->direct_fd;
	return 0;
}

/* Takes a buffer index from a free list, waiting on cv for one; 0, or -1
 * when stopping. Called with mu held. */
static int take_free(struct cold *c, unsigned *list, unsigned *n, pthread_cond_t *cv,
                     unsigned *out)
{
	while (*n == 0 && !c->stop)
		pthread_cond_wait(cv, &c->mu);
	if (c->stop)
		return -1;
	*out = list[--*n];
	return 0;
}

/* A reader: reads frames in order into free read buffers. */
static void *reader(void *arg)
{
	struct cold *c = arg;
	size_t t;
	uint32_t f;

	pthread_mutex_lock(&c->mu);
	while (take_job(c, &t, &f)) {
		unsigned rb;

		if (take_free(c, c->rfree, &c->n_rfree, &c->cv_rfree, &rb))
			break;
		pthread_mutex_unlock(&c->mu);
		int buffered = 0;
		int rc = read_frame(&c->t[t], &c->t[t].hdr->frames[f], c->rbufs + (size_t)rb * c->rstride,
		                    &buffered);
		pthread_mutex_lock(&c->mu);
		c->buffered_frames += (uint64_t)buffered;
		c->read[(c->rhead + c->rcount) % c->n_rbufs] = (struct job_read){ t, f, rb, rc };
		c->rcount++;
		pthread_cond_signal(&c->cv_read);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* Bytes of fresh destination faulted in at a time, as the decoder reaches
 * them. The kernel zeroes each page it faults in; populated just before the
 * decoder writes them, the zeroed lines are still in cache, where a whole
 * 2 MiB frame populated up front has pushed its first lines out to memory
 * (written there as zeros, read back for the decoder's stores). 2-vCPU
 * box, 1.07 GB cold loads into fresh memory, interleaved against a whole
 * frame at a time, medians of 10: CPU time 923 ms against 1040 (frames in
 * the page cache), 2.13 GB/s raw against 2.00 from the disk. 512 KiB did
 * about as well as 128; 32 KiB gained nothing (a system call per 8 pages). */
#define POPULATE_STEP (128u << 10)

static void populate_ahead(void *arg, void *dst, size_t len)
{
	(void)arg;
	qv__populate(dst, len);
}

/* A decoder: decodes frames read, in place into a host destination or
 * into a buffer the calling thread hands to the sink. */
static void *decoder(void *arg)
{
	struct cold *c = arg;
	struct qv_codec_ctx *ctx = NULL;
	size_t scratch_len = qv_codec_scratch_bytes(QV_CODEC_FRAME_MAX);
	char *scratch = malloc(scratch_len);
	int init_rc = scratch ? qv_codec_ctx_create(&ctx) : -ENOMEM;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->rcount == 0 && !c->stop && c->frames_taken < c->frames_total)
			pthread_cond_wait(&c->cv_read, &c->mu);
		if (c->stop || c->rcount == 0)
			break; /* stopping, or every frame is taken */
		struct job_read r = c->read[c->rhead];
		c->rhead = (c->rhead + 1) % c->n_rbufs;
		c->rcount--;
		if (++c->frames_taken == c->frames_total)
			pthread_cond_broadcast(&c->cv_read); /* the other decoders can end */
		unsigned b;

		if (take_free(c, c->free_list, &c->n_free, &c->cv_free, &b))
			break;
		pthread_mutex_unlock(&c->mu);

		struct qv__cold_target *ct = &c->t[r.target];
		const struct qv_codec_frame *fr = &ct->hdr->frames[r.frame];
		uint64_t at = ct->dest_off + (uint64_t)r.frame * ct->hdr->frame_bytes;
		char *own = c->bufs + (size_t)b * c->buf_bytes;
		/* host destination: decode in place, no copy (frames never overlap) */
		char *dst = c->host && at + fr->raw_bytes <= c->host_bytes ? c->host + at : own;
		int rc = r.rc ? r.rc : init_rc;

		/* Fresh host memory is faulted in by the decoder just ahead of
		 * its writes, POPULATE_STEP at a time (see there). A destination
		 * already resident (loaded into before) is left alone: populating
		 * it again walks its pages and marks each one accessed, moving it
		 * to the active list under the LRU lock (resident reloads, no
		 * disk, 2-vCPU box: 0.274 s against 0.295, medians of 6). */
		if (ctx)
			qv_codec_ctx_set_prepare(ctx,
			                         rc == 0 && dst != own && !qv__resident(dst, fr->raw_bytes)
			                                 ? populate_ahead
			                                 : NULL,
			                         NULL, POPULATE_STEP);
		const char *src = c->rbufs + (size_t)r.rbuf * c->rstride;
		struct job_done j = {r.target, r.frame, b, rc, dst != own, 0, r.rbuf, {0}};
		/* the sink merges it: its compressed planes (the codes) are
		 * decoded into the pinned buffer, the rest is copied up from the
		 * read buffer, which stays the frame's until the sink is done */
		j.planes = rc == 0 && c->sink_merges && dst == own && ctx &&
		           fr->method == QV_CODEC_METHOD_BF16_PAIRS &&
		           fr->raw_bytes >= COLD_SINK_MERGE_MIN;
		if (j.planes)
			rc = qv_codec_pairs_planes(ctx, fr, src, fr->stored_bytes, own, c->buf_bytes,
			                           &j.pp);
		else if (rc == 0)
			rc = qv_codec_frame_decode(ctx, fr, src, fr->stored_bytes, dst,
			                           dst == own ? c->buf_bytes : fr->raw_bytes,
			                           scratch, scratch_len);
		j.rc = rc;
		j.planes = j.planes && rc == 0;
		pthread_mutex_lock(&c->mu);
		if (!j.planes) {
			c->rfree[c->n_rfree++] = r.rbuf;
			pthread_cond_signal(&c->cv_rfree);
		}
		c->done[(c->dhead + c->dcount) % c->n_bufs] = j;
		c->dcount++;
		pthread_cond_signal(&c->cv_done);
	}
	pthread_mutex_unlock(&c->mu);
	qv_codec_ctx_destroy(ctx);
	free(scratch);
	return NULL;
}

/* A frame is at its destination: its buffer (if it used one) goes back to
 * the decoders, and the counts and progress move on. */
static void frame_landed(struct cold *c, const struct job_done *j, struct qv__cold_stats *st,
                        uint64_t *frames_left, uint64_t *done, double t0,
                        qv_progress_fn progress, void *progress_arg, uint64_t total, size_t *left)
{
	const struct qv_codec_frame *fr = &c->t[j->target].hdr->frames[j->frame];

	pthread_mutex_lock(&c->mu);
	c->free_list[c->n_free++] = j->buf;
	pthread_cond_signal(&c->cv_free);
	if (j->planes) {
		c->rfree[c->n_rfree++] = j->rbuf;
		pthread_cond_signal(&c->cv_rfree);
	}
	pthread_mutex_unlock(&c->mu);
	(*frames_left)--;
	*done += fr->raw_bytes;
	if (j->planes)
		c->sink_merged_bytes += fr->raw_bytes;
	st->bytes += fr->raw_bytes;
	st->frames++;
	if (--left[j->target] == 0 && j->target == 0)
		st->first_done_s = qv__stream_now() - t0;
	if (progress)
		progress(progress_arg, *done, total);
}

/* A frame in the sink failed: its copy, or (merged there) its checksum. */
static void sink_failed(const struct cold *c, const struct job_done *j, int rc, qv_sink *sink,
                        char *err, size_t errlen)
{
	if (rc == QV_ECORRUPT)
		snprintf(err, errlen, "cold shard %s, frame %u: damaged (%s)", c->t[j->target].name,
		         j->frame, qv_sink_errmsg(sink));
	else
		snprintf(err, errlen, "cold shard %s: copy to destination: %s", c->t[j->target].name,
		         qv_sink_errmsg(sink));
}

int qv__cold_run(struct qv__cold_target *t, size_t n, unsigned n_threads, unsigned n_readers,
                 qv_sink *sink, unsigned slot_base, unsigned n_bufs, char *bufs, size_t buf_bytes,
                 struct qv__cold_stats *st, qv_progress_fn progress, void *progress_arg,
                 uint64_t done0, uint64_t total, char *err, size_t errlen)
{
	struct cold c = {.t = t, .n = n, .sink = sink, .slot_base = slot_base, .bufs = bufs,
	                 .buf_bytes = buf_bytes, .n_bufs = n_bufs};
	c.host = qv_sink_host_dest(sink, &c.host_bytes);
	pthread_t th[QV_COLD_THREADS_MAX + QV_LOAD_COLD_READS_MAX];
	unsigned started = 0, decoders = 0, readers = 0;
	uint64_t frames_left = 0, done = done0;
	size_t *left = calloc(n ? n : 1, sizeof(size_t));
	struct job_done *fly = malloc(n_bufs * sizeof(*fly));
	unsigned fly_head = 0, fly_n = 0;
	size_t rbufs_len;
	int rbufs_pinned = 0;
	double t0 = qv__stream_now();
	int rc = 0;

	if (n > 0 && (n_bufs == 0 || bufs == NULL || buf_bytes == 0)) {
		/* a decoder would wait for a free buffer for ever */
		snprintf(err, errlen, "no decode buffers for %zu cold shards", n);
		free(left);
		free(fly);
		return -EINVAL;
	}
	if (n_threads < 1)
		n_threads = 1;
	if (n_threads > QV_COLD_THREADS_MAX)
		n_threads = QV_COLD_THREADS_MAX;
	if (n_readers < 1)
		n_readers = 1;
	if (n_readers > QV_LOAD_COLD_READS_MAX)
		n_readers = QV_LOAD_COLD_READS_MAX;
	/* A sink that merges BF16 frames itself gets them as planes (the CUDA
	 * sink); QV_SINK_MERGE=0 keeps every merge on the CPU (comparisons). */
	const char *merge_env = getenv("QV_SINK_MERGE");
	int bf16 = 0;
	for (size_t i = 0; i < n; i++)
		bf16 |= t[i].hdr->dtype == QV_CODEC_BF16;
	c.sink_merges = bf16 && !(merge_env && strcmp(merge_env, "0") == 0) &&
	                qv_sink_pairs_reserve(sink, slot_base, n_bufs, buf_bytes) == 0;
	c.n_rbufs = n_readers + n_threads + COLD_QUEUED +
	            (c.sink_merges ? (n_bufs < COLD_HELD_MAX ? n_bufs : COLD_HELD_MAX) : 0);
	for (size_t i = 0; i < n; i++)
		if (t[i].hdr->frame_bytes > c.rstride)
			c.rstride = t[i].hdr->frame_bytes;
	c.rstride = (c.rstride + QV_PINNED_ALIGN - 1) & ~(QV_PINNED_ALIGN - 1);
	rbufs_len = (size_t)c.n_rbufs * (c.rstride ? c.rstride : QV_PINNED_ALIGN);
	c.free_list = malloc(n_bufs * sizeof(unsigned));
	c.done = malloc(n_bufs * sizeof(*c.done));
	/* pinned for the sink's copies when it merges */
	if (qv_pinned_alloc(rbufs_len, c.sink_merges, (void **)&c.rbufs, &rbufs_pinned))
		c.rbufs = NULL;
	if (!c.free_list || !c.done || !left || !fly || !c.rbufs) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto out;
	}
	for (unsigned i = 0; i < n_bufs; i++)
		c.free_list[c.n_free++] = i;
	for (unsigned i = 0; i < c.n_rbufs; i++)
		c.rfree[c.n_rfree++] = i;
	for (size_t i = 0; i < n; i++) {
		left[i] = t[i].hdr->frame_count;
		frames_left += left[i];
	}
	c.frames_total = frames_left;
	pthread_mutex_init(&c.mu, NULL);
	pthread_cond_init(&c.cv_free, NULL);
	pthread_cond_init(&c.cv_done, NULL);
	pthread_cond_init(&c.cv_rfree, NULL);
	pthread_cond_init(&c.cv_read, NULL);
	for (; decoders < n_threads; decoders++, started++)
		if (pthread_create(&th[started], NULL, decoder, &c) != 0)
			break;
	for (; decoders > 0 && readers < n_readers; readers++, started++)
		if (pthread_create(&th[started], NULL, reader, &c) != 0)
			break;
	if (decoders == 0 || readers == 0) {
		snprintf(err, errlen, "cannot start the cold read and decode threads");
		rc = -EAGAIN;
	}
	/* Copies to the sink (CUDA) run while the next frames decode: a buffer
	 * goes back to the decoders once its copy is done (fly: the copies in
	 * flight, oldest first), never waited for one at a time. */
	while (rc == 0 && frames_left > 0) {
		int busy = 1;
		while (fly_n > 0 && (busy = qv_sink_slot_busy(sink, slot_base + fly[fly_head].buf)) == 0) {
			frame_landed(&c, &fly[fly_head], st, &frames_left, &done, t0, progress,
			             progress_arg, total, left);
			fly_head = (fly_head + 1) % n_bufs;
			fly_n--;
		}
		if (busy < 0) {
			rc = busy;
			sink_failed(&c, &fly[fly_head], rc, sink, err, errlen);
			break;
		}
		if (frames_left == 0)
			break;
		pthread_mutex_lock(&c.mu);
		if (c.dcount == 0 && fly_n > 0) {
			/* nothing decoded yet: wait for the oldest copy instead */
			pthread_mutex_unlock(&c.mu);
			rc = qv_sink_slot_wait(sink, slot_base + fly[fly_head].buf);
			if (rc)
				sink_failed(&c, &fly[fly_head], rc, sink, err, errlen);
			continue;
		}
		while (c.dcount == 0)
			pthread_cond_wait(&c.cv_done, &c.mu);
		struct job_done j = c.done[c.dhead];
		c.dhead = (c.dhead + 1) % n_bufs;
		c.dcount--;
		pthread_mutex_unlock(&c.mu);

		struct qv__cold_target *ct = &t[j.target];
		const struct qv_codec_frame *fr = &ct->hdr->frames[j.frame];
		if (j.rc) {
			snprintf(err, errlen, "cold shard %s, frame %u: %s", ct->name, j.frame,
			         j.rc == QV_ECORRUPT ? "damaged (checksum mismatch)" : strerror(-j.rc));
			rc = j.rc == QV_ECORRUPT ? QV_ECORRUPT : j.rc;
		} else if (j.in_place) {
			frame_landed(&c, &j, st, &frames_left, &done, t0, progress, progress_arg, total,
			             left);
		} else {
			uint64_t off = ct->dest_off + (uint64_t)j.frame * ct->hdr->frame_bytes;
			rc = j.planes ? qv_sink_put_pairs(sink, slot_base + j.buf, &j.pp, fr->xxh3, off)
			              : qv_sink_put(sink, slot_base + j.buf, bufs + (size_t)j.buf * buf_bytes,
			                            fr->raw_bytes, off);
			if (rc)
				sink_failed(&c, &j, rc, sink, err, errlen);
			else
				fly[(fly_head + fly_n++) % n_bufs] = j;
		}
	}
	for (; fly_n > 0; fly_n--, fly_head = (fly_head + 1) % n_bufs)
		qv_sink_slot_wait(sink, slot_base + fly[fly_head].buf); /* before the buffers go */
	pthread_mutex_lock(&c.mu);
	c.stop = 1;
	pthread_cond_broadcast(&c.cv_free);
	pthread_cond_broadcast(&c.cv_rfree);
	pthread_cond_broadcast(&c.cv_read);
	pthread_mutex_unlock(&c.mu);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	st->buffered_frames = c.buffered_frames;
	st->sink_merged_bytes = c.sink_merged_bytes;
	pthread_cond_destroy(&c.cv_free);
	pthread_cond_destroy(&c.cv_done);
	pthread_cond_destroy(&c.cv_rfree);
	pthread_cond_destroy(&c.cv_read);
	pthread_mutex_destroy(&c.mu);
out:
	qv_pinned_free(c.rbufs, rbufs_len, rbufs_pinned);
	free(left);
	free(fly);
	free(c.free_list);
	free(c.done);
	return rc;
}
