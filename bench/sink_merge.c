/* How fast the CUDA sink merges BF16 pairs frames (qv_sink_put_pairs):
 * one realistic 2 MiB frame (N(0, 0.02) weights, encoded by the codec) is
 * taken apart once, then queued again and again:
 *   latency: put + wait on one slot, one frame at a time;
 *   throughput: `slots` frames in flight on `streams` streams;
 * and, for scale, the CPU decoding the same frame on one thread.
 * Usage: sink_merge [slots [streams [frames]]]  (default 8 4 500); prints
 * one JSON object. Needs a GPU: exits 77 without one. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quiver/codec.h"
#include "quiver/gpu.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double unit(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}

int main(int argc, char **argv)
{
	unsigned slots = argc > 1 ? (unsigned)atoi(argv[1]) : 8;
	unsigned streams = argc > 2 ? (unsigned)atoi(argv[2]) : 4;
	unsigned frames = argc > 3 ? (unsigned)atoi(argv[3]) : 500;
	const size_t raw = 2u << 20, n = raw / 2;
	const char *why = NULL;

	if (slots < 1 || slots > 64 || streams < 1 || frames < 1) {
		fprintf(stderr, "usage: sink_merge [slots 1-64 [streams [frames]]]\n");
		return 2;
	}
	if (!qv_gpu_built_with_cuda() || qv_gpu_device_count(&why) <= 0) {
		printf("SKIP sink_merge: no CUDA device (%s)\n", why ? why : "no CUDA in this build");
		return 77;
	}
	unsigned char *src = malloc(raw), *back = malloc(raw), *scratch = malloc(qv_codec_scratch_bytes(raw));
	void *stored = NULL, *planes = NULL, *dev = NULL;
	int p1 = 0, p2 = 0;
	struct qv_codec_ctx *ctx = NULL;
	struct qv_codec_frame f;
	struct qv_codec_pairs pp;
	qv_sink *k = NULL;
	if (!src || !back || !scratch || qv_pinned_alloc(raw, 1, &stored, &p1) ||
	    qv_pinned_alloc(raw, 1, &planes, &p2) || qv_codec_ctx_create(&ctx) ||
	    qv_gpu_alloc(0, raw * slots, &dev)) {
		fprintf(stderr, "sink_merge: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		float x = (float)(sqrt(-2.0 * log(unit())) * cos(6.283185307179586 * unit()) * 0.02);
		uint32_t b;
		memcpy(&b, &x, 4);
		uint16_t v = (uint16_t)(b >> 16);
		memcpy(src + 2 * i, &v, 2);
	}
	int rc = qv_codec_frame_encode(ctx, QV_CODEC_BF16, 0, src, raw, stored, raw, scratch,
	                               qv_codec_scratch_bytes(raw), &f);
	if (rc || f.method != QV_CODEC_METHOD_BF16_PAIRS) {
		fprintf(stderr, "sink_merge: encode %d, method %u\n", rc, f.method);
		return 1;
	}
	rc = qv_codec_pairs_planes(ctx, &f, stored, f.stored_bytes, planes, raw, &pp);
	if (rc == 0)
		rc = qv_sink_cuda_create(0, dev, raw * slots, slots, streams, &k);
	if (rc == 0)
		rc = qv_sink_pairs_reserve(k, 0, slots, raw);
	if (rc) {
		fprintf(stderr, "sink_merge: set up: %d %s\n", rc, k ? qv_sink_errmsg(k) : "");
		return 1;
	}
	/* latency, one at a time (the first one warms the kernels up) */
	double t0 = 0;
	for (int i = -1; i < 50 && rc == 0; i++) {
		if (i == 0)
			t0 = now();
		rc = qv_sink_put_pairs(k, 0, &pp, f.xxh3, 0);
		if (rc == 0)
			rc = qv_sink_slot_wait(k, 0);
	}
	double lat = (now() - t0) / 50;
	/* throughput, slots in flight */
	t0 = now();
	for (unsigned i = 0; i < frames && rc == 0; i++) {
		unsigned s = i % slots;
		rc = qv_sink_slot_wait(k, s);
		if (rc == 0)
			rc = qv_sink_put_pairs(k, s, &pp, f.xxh3, (uint64_t)s * raw);
	}
	if (rc == 0)
		rc = qv_sink_finish(k);
	double tput = (double)frames * raw / (now() - t0) / 1e9;
	if (rc) {
		fprintf(stderr, "sink_merge: %d %s\n", rc, qv_sink_errmsg(k));
		return 1;
	}
	/* the CPU, one thread, the same frame */
	t0 = now();
	for (int i = 0; i < 50 && rc == 0; i++)
		rc = qv_codec_frame_decode(ctx, &f, stored, f.stored_bytes, back, raw, scratch,
		                           qv_codec_scratch_bytes(raw));
	double cpu = (now() - t0) / 50;
	/* the CPU's share of a GPU merge: taking the frame apart */
	t0 = now();
	for (int i = 0; i < 50 && rc == 0; i++)
		rc = qv_codec_pairs_planes(ctx, &f, stored, f.stored_bytes, planes, raw, &pp);
	double apart = (now() - t0) / 50;
	printf("{\"slots\": %u, \"streams\": %u, \"frames\": %u, \"frame_bytes\": %zu, "
	       "\"stored_over_raw\": %.3f, \"latency_ms\": %.3f, \"gpu_gbps\": %.2f, "
	       "\"cpu_decode_ms\": %.3f, \"cpu_take_apart_ms\": %.3f, \"rc\": %d}\n",
	       slots, streams, frames, raw, (double)f.stored_bytes / raw, lat * 1e3, tput, cpu * 1e3,
	       apart * 1e3, rc);
	qv_sink_destroy(k);
	qv_gpu_free(0, dev);
	qv_codec_ctx_destroy(ctx);
	return rc ? 1 : 0;
}
