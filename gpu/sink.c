/* The sink interface and the host sink.
 *
 * The host sink is the path CI exercises: a chunk is memcpy'd to its
 * destination offset at once, so its ring slot is free as soon as put()
 * returns. The dispatch functions check the bounds every sink relies on. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_int.h"
#include "quiver/codec.h"
#include "quiver/error.h"

/* Each call starts with no message (fresh) and leaves one for any failure
 * (said): the backend's where it wrote one, else the code's. So the caller
 * of a failed call reads that failure, never an earlier one. */
static qv_sink *fresh(qv_sink *k)
{
	k->errmsg[0] = '\0';
	return k;
}

static int said(qv_sink *k, int rc)
{
	if (rc < 0 && !k->errmsg[0])
		snprintf(k->errmsg, sizeof(k->errmsg), "%s",
		         rc == QV_ECORRUPT ? "damaged data" : strerror(-rc));
	return rc;
}

/* A copy that would land past the destination's end (or a bad slot). */
static int out_of_range(qv_sink *k)
{
	snprintf(k->errmsg, sizeof(k->errmsg), "out of range");
	return -ERANGE;
}

int qv_sink_put(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off)
{
	if (slot >= fresh(k)->n_slots || dest_off > k->dest_bytes || len > k->dest_bytes - dest_off)
		return out_of_range(k);
	return said(k, k->ops->put(k, slot, src, len, dest_off));
}

int qv_sink_pairs_reserve(qv_sink *k, unsigned first_slot, unsigned n_slots, size_t frame_bytes)
{
	if (!fresh(k)->ops->pairs_reserve)
		return said(k, -ENOTSUP);
	if (first_slot > k->n_slots || n_slots > k->n_slots - first_slot || n_slots == 0 ||
	    frame_bytes == 0 || frame_bytes > QV_CODEC_FRAME_MAX)
		return said(k, -EINVAL);
	return said(k, k->ops->pairs_reserve(k, first_slot, n_slots, frame_bytes));
}

int qv_sink_put_pairs(qv_sink *k, unsigned slot, const struct qv_codec_pairs *p, uint64_t xxh3,
                      uint64_t dest_off)
{
	if (!fresh(k)->ops->put_pairs)
		return said(k, -ENOTSUP);
	uint64_t len = 2 * (uint64_t)p->values + (p->has_tail ? 1 : 0);
	if (slot >= k->n_slots || dest_off > k->dest_bytes || len > k->dest_bytes - dest_off)
		return out_of_range(k);
	return said(k, k->ops->put_pairs(k, slot, p, xxh3, dest_off));
}

int qv_sink_slot_busy(qv_sink *k, unsigned slot)
{
	return said(k, slot < fresh(k)->n_slots ? k->ops->slot_busy(k, slot) : -ERANGE);
}

int qv_sink_slot_wait(qv_sink *k, unsigned slot)
{
	return said(k, slot < fresh(k)->n_slots ? k->ops->slot_wait(k, slot) : -ERANGE);
}

int qv_sink_finish(qv_sink *k)
{
	return said(k, fresh(k)->ops->finish(k));
}

void *qv_sink_host_dest(const qv_sink *k, uint64_t *dest_bytes)
{
	if (dest_bytes)
		*dest_bytes = k->dest_bytes;
	return k->host_dest;
}

const char *qv_sink_errmsg(const qv_sink *k)
{
	return k ? k->errmsg : "";
}

void qv_sink_destroy(qv_sink *k)
{
	if (k)
		k->ops->destroy(k);
}

/* ---- host sink ---------------------------------------------------------------- */
struct host_sink {
	qv_sink base;
	char *dest;
};

static int host_put(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off)
{
	(void)slot;
	memcpy(((struct host_sink *)k)->dest + dest_off, src, len);
	return 0;
}

static int host_idle(qv_sink *k, unsigned slot)
{
	(void)k;
	(void)slot;
	return 0;
}

static int host_finish(qv_sink *k)
{
	(void)k;
	return 0;
}

static void host_destroy(qv_sink *k)
{
	free(k);
}

static const struct qv_sink_ops host_ops = {host_put, host_idle, host_idle, NULL, NULL, host_finish,
                                            host_destroy};

int qv_sink_host_create(void *dest, uint64_t dest_bytes, unsigned n_slots, qv_sink **out)
{
	struct host_sink *h = calloc(1, sizeof(*h));
	*out = NULL;
	if (!h)
		return -ENOMEM;
	h->base.ops = &host_ops;
	h->base.dest_bytes = dest_bytes;
	h->base.n_slots = n_slots;
	h->dest = dest;
	h->base.host_dest = dest;
	*out = &h->base;
	return 0;
}
