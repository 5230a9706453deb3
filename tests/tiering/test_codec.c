/* Tests of the cold-tier codec (tiering/codec.c): frame and whole-file round
 * trips for every dtype class on random and realistic float data, odd
 * lengths, raw fallback, corruption, lying headers and determinism. Data
 * comes from a seeded generator; the seed is printed on failure. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <xxhash.h>

#include "quiver/codec.h"
#include "quiver/error.h"

#define MIB (1u << 20)

static uint64_t rng_state;
static uint64_t seed;

static uint64_t rng_next(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(void)
{
	return (double)(rng_next() >> 11) / 9007199254740992.0;
}

static double rng_normal(void)
{
	double u = rng_unit(), v = rng_unit();
	if (u < 1e-300)
		u = 1e-300;
	return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static void fill_random(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(rng_next() >> 56);
}

static uint32_t f32_bits(float f)
{
	uint32_t b;
	memcpy(&b, &f, 4);
	return b;
}

static uint16_t to_bf16(float f)
{
	uint32_t b = f32_bits(f);
	return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

static uint16_t to_f16(float f)
{
	uint32_t b = f32_bits(f);
	uint32_t sign = (b >> 16) & 0x8000;
	int e = (int)((b >> 23) & 0xff) - 127 + 15;
	uint32_t m = b & 0x7fffff;

	if (e >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (e <= 0) {
		if (e < -10)
			return (uint16_t)sign;
		m |= 0x800000;
		return (uint16_t)(sign | (m >> (14 - e)));
	}
	return (uint16_t)(sign | ((uint32_t)e << 10) | (m >> 13));
}

/* Weights-like data: N(0, 0.02) values in the dtype's encoding; an odd
 * byte count gets a random tail. */
static void fill_weights(enum qv_codec_dtype dtype, unsigned char *p, size_t n)
{
	size_t i = 0;

	switch (dtype) {
	case QV_CODEC_F32:
		for (; i + 4 <= n; i += 4) {
			float f = (float)(rng_normal() * 0.02);
			memcpy(p + i, &f, 4);
		}
		break;
	case QV_CODEC_BF16:
	case QV_CODEC_F16:
		for (; i + 2 <= n; i += 2) {
			float f = (float)(rng_normal() * 0.02);
			uint16_t h = dtype == QV_CODEC_BF16 ? to_bf16(f) : to_f16(f);
			memcpy(p + i, &h, 2);
		}
		break;
	case QV_CODEC_PLAIN:
		/* small integers: compressible bytes */
		for (; i < n; i++)
			p[i] = (unsigned char)(rng_normal() * 4.0);
		break;
	}
	fill_random(p + i, n - i);
}

static const enum qv_codec_dtype all_dtypes[] = { QV_CODEC_PLAIN, QV_CODEC_BF16, QV_CODEC_F16,
						  QV_CODEC_F32 };

static int setup(void **state)
{
	(void)state;
	rng_state = seed;
	return 0;
}

struct prep_check {
	unsigned char *base;
	size_t next;  /* bytes prepared so far */
	size_t step;
	int bad;      /* a range out of order, too long, or written before */
};

static void prep_hook(void *arg, void *dst, size_t len)
{
	struct prep_check *pc = arg;
	const unsigned char *p = dst;

	if (p != pc->base + pc->next || len == 0 || len > pc->step)
		pc->bad = 1;
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0xa5)
			pc->bad = 1;
	pc->next += len;
}

/* ---- frames ---- */

static void frame_round_trip(struct qv_codec_ctx *ctx, enum qv_codec_dtype dtype,
			     const unsigned char *src, size_t len, struct qv_codec_frame *f)
{
	size_t scratch_len = qv_codec_scratch_bytes(len);
	unsigned char *stored = malloc(qv_codec_frame_bound(len) + 1);
	unsigned char *back = malloc(len + 1);
	unsigned char *scratch = malloc(scratch_len + 1);

	assert_non_null(stored);
	assert_non_null(back);
	assert_non_null(scratch);
	assert_int_equal(qv_codec_frame_encode(ctx, dtype, 0, src, len, stored,
					       qv_codec_frame_bound(len), scratch, scratch_len, f),
			 0);
	assert_int_equal(f->raw_bytes, len);
	assert_true(f->stored_bytes <= len);
	assert_int_equal(f->xxh3, XXH3_64bits(src, len));
	for (int simd = 1; simd >= 0; simd--) { /* the vector and the portable decoder */
		qv_codec_ctx_set_simd(ctx, simd);
		memset(back, 0xa5, len + 1);
		assert_int_equal(qv_codec_frame_decode(ctx, f, stored, f->stored_bytes, back, len,
						       scratch, scratch_len),
				 0);
		if (len > 0)
			assert_memory_equal(src, back, len);
	}
	qv_codec_ctx_set_simd(ctx, 1);
	/* With a prepare hook: called for the whole frame, in order, before any
	 * byte of each range is written (the sentinel is still there). */
	for (size_t step = 8192; step <= 2 * QV_CODEC_FRAME_MAX; step *= 1024) {
		struct prep_check pc = { back, 0, step, 0 };

		memset(back, 0xa5, len + 1);
		qv_codec_ctx_set_prepare(ctx, prep_hook, &pc, step);
		assert_int_equal(qv_codec_frame_decode(ctx, f, stored, f->stored_bytes, back, len,
						       scratch, scratch_len),
				 0);
		qv_codec_ctx_set_prepare(ctx, NULL, NULL, 0);
		assert_int_equal(pc.bad, 0);
		assert_int_equal(pc.next, len);
		if (len > 0)
			assert_memory_equal(src, back, len);
	}
	free(stored);
	free(back);
	free(scratch);
}

static void test_frame_lengths(void **state)
{
	static const size_t lens[] = { 0, 1, 2, 3, 5, 7, 63, 64, 65, 4095, 4097, 100003,
				       MIB, MIB + 1, QV_CODEC_FRAME_MAX - 1, QV_CODEC_FRAME_MAX };
	struct qv_codec_ctx *ctx;
	unsigned char *src = malloc(QV_CODEC_FRAME_MAX);

	(void)state;
	assert_non_null(src);
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	for (size_t d = 0; d < 4; d++) {
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			struct qv_codec_frame f;

			fill_weights(all_dtypes[d], src, lens[l]);
			frame_round_trip(ctx, all_dtypes[d], src, lens[l], &f);
			if (lens[l] >= 65536) /* small frames may not pay */
				assert_int_not_equal(f.method, QV_CODEC_METHOD_RAW);
			fill_random(src, lens[l]);
			frame_round_trip(ctx, all_dtypes[d], src, lens[l], &f);
			assert_int_equal(f.method, QV_CODEC_METHOD_RAW);
			assert_int_equal(f.stored_bytes, lens[l]);
		}
	}
	qv_codec_ctx_destroy(ctx);
	free(src);
}

/* Every bit pattern survives the plane split and merge (the merge has a
 * vector path and a scalar tail): weights with every 16-bit pattern, or
 * random 32-bit ones, set into every 37th value, at lengths that end the
 * vector loop at each offset. */
static void test_frame_all_patterns(void **state)
{
	const size_t len = 2 * MIB;
	struct qv_codec_ctx *ctx;
	unsigned char *src = malloc(len);

	(void)state;
	assert_non_null(src);
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	for (size_t d = 0; d < 3; d++) {
		enum qv_codec_dtype dt = (enum qv_codec_dtype[]){ QV_CODEC_BF16, QV_CODEC_F16,
								  QV_CODEC_F32 }[d];
		size_t elem = dt == QV_CODEC_F32 ? 4 : 2, n = len / elem;
		uint32_t pattern = 0;

		fill_weights(dt, src, len);
		for (size_t i = 0; i < n; i += 37) {
			if (elem == 2) {
				uint16_t v = (uint16_t)pattern++;
				memcpy(src + 2 * i, &v, 2);
			} else {
				uint32_t v = (uint32_t)(rng_next() >> 32);
				memcpy(src + 4 * i, &v, 4);
			}
		}
		for (size_t cut = 0; cut < 33; cut++) {
			struct qv_codec_frame f;

			frame_round_trip(ctx, dt, src, len - cut * elem - (cut & 1), &f);
			assert_int_not_equal(f.method, QV_CODEC_METHOD_RAW);
			if (dt == QV_CODEC_BF16) /* with escapes: the patterns' exponents */
				assert_int_equal(f.method, QV_CODEC_METHOD_BF16_PAIRS);
		}
	}
	qv_codec_ctx_destroy(ctx);
	free(src);
}

/* A BF16 pairs frame whose head lies (escape count, codes in use, plane
 * lengths) or whose codes name no exponent is refused, never decoded into
 * wrong bytes reported as good. */
static void test_pairs_lies(void **state)
{
	const size_t len = MIB + 1;
	size_t scratch_len = qv_codec_scratch_bytes(len);
	unsigned char *src = malloc(len), *stored = malloc(len), *work = malloc(len),
		      *back = malloc(len), *scratch = malloc(scratch_len);
	struct qv_codec_ctx *ctx;
	struct qv_codec_frame f;
	uint32_t ne;

	(void)state;
	assert_true(src && stored && work && back && scratch);
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	fill_weights(QV_CODEC_BF16, src, len);
	for (size_t i = 0; i + 2 <= len; i += 2 * 97) { /* rare exponents: escapes */
		uint16_t v = (uint16_t)(((i / 194) % 40 + 30) << 7);
		memcpy(src + i, &v, 2);
	}
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_BF16, 0, src, len, stored, len, scratch,
					       scratch_len, &f),
			 0);
	assert_int_equal(f.method, QV_CODEC_METHOD_BF16_PAIRS);
	memcpy(&ne, stored + 12, 4);
	assert_true(ne > 0);
	/* field offset, value: each a lie */
	const struct { size_t at; uint32_t v; } lies[] = {
		{ 12, ne + 1 }, { 12, ne - 1 }, { 12, 0 }, { 12, 0xffffffffu },
		{ 0, 0 }, { 4, 0 }, { 8, 0xffffffffu }, { 0, 0x7fffffffu },
	};
	for (int simd = 1; simd >= 0; simd--) { /* the vector and the portable decoder */
		qv_codec_ctx_set_simd(ctx, simd);
		for (size_t k = 0; k < sizeof(lies) / sizeof(lies[0]); k++) {
			memcpy(work, stored, f.stored_bytes);
			memcpy(work + lies[k].at, &lies[k].v, 4);
			assert_int_not_equal(qv_codec_frame_decode(ctx, &f, work, f.stored_bytes,
								   back, len, scratch, scratch_len),
					     0);
		}
		/* fewer codes in use than the plane's bytes name; more than 15 */
		for (unsigned count = 0; count <= 16; count += 16) {
			memcpy(work, stored, f.stored_bytes);
			work[31] = (unsigned char)count;
			assert_int_not_equal(qv_codec_frame_decode(ctx, &f, work, f.stored_bytes,
								   back, len, scratch, scratch_len),
					     0);
		}
		memcpy(work, stored, f.stored_bytes);
		memset(back, 0, len);
		assert_int_equal(qv_codec_frame_decode(ctx, &f, work, f.stored_bytes, back, len,
						       scratch, scratch_len),
				 0);
		assert_memory_equal(back, src, len);
	}
	qv_codec_ctx_destroy(ctx);
	free(src);
	free(stored);
	free(work);
	free(back);
	free(scratch);
}

/* Merges a pairs frame taken apart, as a decoder elsewhere must (the
 * layout qv_codec_pairs documents); -1 when the escapes run out or are
 * left over. */
static int merge_pairs_ref(const struct qv_codec_pairs *pp, unsigned char *dst)
{
	size_t ei = 0;

	for (size_t i = 0; i < pp->values; i++) {
		unsigned c = (pp->codes[i / 2] >> (4 * (i & 1))) & 15;
		unsigned e;

		if (c == 15) {
			if (ei == pp->escapes)
				return -1;
			e = pp->esc[ei++];
		} else {
			e = pp->table[c];
		}
		uint16_t v = (uint16_t)(e << 7 | (pp->sm[i] & 0x80u) << 8 | (pp->sm[i] & 0x7fu));
		memcpy(dst + 2 * i, &v, 2);
	}
	if (pp->has_tail)
		dst[2 * pp->values] = pp->tail;
	return ei == pp->escapes ? 0 : -1;
}

/* qv_codec_pairs_planes() gives the planes that merge back into the frame:
 * odd and even lengths, with escapes; it refuses other methods, short
 * scratch and a lying header. */
static void test_pairs_planes(void **state)
{
	const size_t lens[] = { MIB + 1, 2 * MIB };
	struct qv_codec_ctx *ctx;

	(void)state;
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	for (size_t li = 0; li < 2; li++) {
		size_t len = lens[li], scratch_len = qv_codec_scratch_bytes(len);
		unsigned char *src = malloc(len), *stored = malloc(len), *back = malloc(len),
			      *scratch = malloc(scratch_len), *work = malloc(len);
		struct qv_codec_frame f;
		struct qv_codec_pairs pp;

		assert_true(src && stored && back && scratch && work);
		fill_weights(QV_CODEC_BF16, src, len);
		for (size_t i = 0; i + 2 <= len; i += 2 * 131) { /* rare exponents: escapes */
			uint16_t v = (uint16_t)((((i / 262) % 50 + 20) << 7) | (i & 0x807f));
			memcpy(src + i, &v, 2);
		}
		assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_BF16, 0, src, len, stored, len,
						       scratch, scratch_len, &f),
				 0);
		assert_int_equal(f.method, QV_CODEC_METHOD_BF16_PAIRS);
		/* scratch of raw_bytes is enough, as the header says */
		memset(&pp, 0, sizeof(pp));
		assert_int_equal(qv_codec_pairs_planes(ctx, &f, stored, f.stored_bytes, scratch, len,
						       &pp),
				 0);
		assert_int_equal(pp.values, len / 2);
		assert_int_equal(pp.has_tail, (int)(len & 1));
		assert_true(pp.escapes > 0);
		/* the code plane compresses into scratch; the mantissas stay where they are */
		assert_ptr_equal(pp.codes, scratch);
		assert_true(pp.sm >= stored && pp.sm < stored + f.stored_bytes);
		memset(back, 0, len);
		assert_int_equal(merge_pairs_ref(&pp, back), 0);
		assert_memory_equal(back, src, len);
		assert_true(XXH3_64bits(back, len) == f.xxh3);

		assert_int_equal(qv_codec_pairs_planes(ctx, &f, stored, f.stored_bytes, scratch,
						       (pp.values + 1) / 2 + pp.values, &pp),
				 -EINVAL);
		assert_int_equal(qv_codec_pairs_planes(ctx, &f, stored, f.stored_bytes - 1, scratch,
						       len, &pp),
				 -EINVAL);
		struct qv_codec_frame g = f;
		g.method = QV_CODEC_METHOD_BF16_PLANES;
		assert_int_equal(qv_codec_pairs_planes(ctx, &g, stored, f.stored_bytes, scratch, len,
						       &pp),
				 -EINVAL);
		/* escape counts the encoder never writes */
		const uint32_t lies[] = { (uint32_t)(len / 2 / 16 + 1), 0xffffffffu };
		for (size_t k = 0; k < 2; k++) {
			memcpy(work, stored, f.stored_bytes);
			memcpy(work + 12, &lies[k], 4);
			assert_int_equal(qv_codec_pairs_planes(ctx, &f, work, f.stored_bytes, scratch,
							       len, &pp),
					 QV_ECORRUPT);
		}
		/* one escape fewer: the planes come apart, the merge runs short */
		uint32_t ne;
		memcpy(&ne, stored + 12, 4);
		ne--;
		memcpy(work, stored, f.stored_bytes);
		memcpy(work + 12, &ne, 4);
		int rc = qv_codec_pairs_planes(ctx, &f, work, f.stored_bytes, scratch, len, &pp);
		assert_true(rc == QV_ECORRUPT || (rc == 0 && merge_pairs_ref(&pp, back) != 0));
		free(src);
		free(stored);
		free(back);
		free(scratch);
		free(work);
	}
	qv_codec_ctx_destroy(ctx);
}

/* Planes must pay: realistic BF16 shrinks well below plain zstd. */
static void test_frame_planes_pay(void **state)
{
	const size_t len = 2 * MIB;
	struct qv_codec_ctx *ctx;
	struct qv_codec_frame planes, plain;
	unsigned char *src = malloc(len);

	(void)state;
	assert_non_null(src);
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	fill_weights(QV_CODEC_BF16, src, len);
	frame_round_trip(ctx, QV_CODEC_BF16, src, len, &planes);
	frame_round_trip(ctx, QV_CODEC_PLAIN, src, len, &plain);
	assert_int_equal(planes.method, QV_CODEC_METHOD_BF16_PAIRS);
	assert_true(planes.stored_bytes < plain.stored_bytes);
	assert_true(planes.stored_bytes < len * 3 / 4);
	/* exponents spread over 64 values: too many escapes for pairs, the
	 * frame keeps the plain planes (the mantissa is what compresses) */
	for (size_t i = 0; i + 2 <= len; i += 2) {
		uint16_t v = (uint16_t)(((rng_next() >> 40) % 64 + 96) << 7 | (rng_next() >> 60));
		memcpy(src + i, &v, 2);
	}
	frame_round_trip(ctx, QV_CODEC_BF16, src, len, &planes);
	assert_int_equal(planes.method, QV_CODEC_METHOD_BF16_PLANES);
	fill_weights(QV_CODEC_F16, src, len);
	frame_round_trip(ctx, QV_CODEC_F16, src, len, &planes);
	assert_int_equal(planes.method, QV_CODEC_METHOD_F16_PLANES);
	assert_true(planes.stored_bytes < len * 9 / 10);
	fill_weights(QV_CODEC_F32, src, len);
	frame_round_trip(ctx, QV_CODEC_F32, src, len, &planes);
	assert_int_equal(planes.method, QV_CODEC_METHOD_F32_PLANES);
	assert_true(planes.stored_bytes < len * 9 / 10);
	qv_codec_ctx_destroy(ctx);
	free(src);
}

static void test_frame_bad_args(void **state)
{
	struct qv_codec_ctx *ctx;
	struct qv_codec_frame f;
	unsigned char src[256], dst[256], back[256], scratch[512];

	(void)state;
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	fill_weights(QV_CODEC_BF16, src, sizeof(src));
	/* dst too small, scratch too small, bad level, bad dtype, too long */
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_BF16, 0, src, 256, dst, 255, scratch,
					       sizeof(scratch), &f), -EINVAL);
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_BF16, 0, src, 256, dst, 256, scratch,
					       100, &f), -EINVAL);
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_BF16, 99, src, 256, dst, 256, scratch,
					       sizeof(scratch), &f), -EINVAL);
	assert_int_equal(qv_codec_frame_encode(ctx, (enum qv_codec_dtype)7, 0, src, 256, dst, 256,
					       scratch, sizeof(scratch), &f), -EINVAL);
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_PLAIN, 0, src,
					       QV_CODEC_FRAME_MAX + 1, dst, SIZE_MAX, scratch,
					       SIZE_MAX, &f), QV_ELIMIT);
	/* a malformed entry is corrupt, a too-small dst is the caller's bug */
	memset(src, 0, sizeof(src));
	assert_int_equal(qv_codec_frame_encode(ctx, QV_CODEC_PLAIN, 0, src, 256, dst, 256, scratch,
					       sizeof(scratch), &f), 0);
	assert_int_equal(qv_codec_frame_decode(ctx, &f, dst, f.stored_bytes, back, 255, scratch,
					       sizeof(scratch)), -EINVAL);
	f.method = 9;
	assert_int_equal(qv_codec_frame_decode(ctx, &f, dst, f.stored_bytes, back, 256, scratch,
					       sizeof(scratch)), QV_ECORRUPT);
	f.method = QV_CODEC_METHOD_RAW; /* stored != raw */
	assert_int_equal(qv_codec_frame_decode(ctx, &f, dst, f.stored_bytes, back, 256, scratch,
					       sizeof(scratch)), QV_ECORRUPT);
	qv_codec_ctx_destroy(ctx);
	qv_codec_ctx_destroy(NULL);
}

static void test_frame_corrupt(void **state)
{
	const size_t len = MIB + 3;
	struct qv_codec_ctx *ctx;
	size_t scratch_len = qv_codec_scratch_bytes(len);
	unsigned char *src = malloc(len), *stored = malloc(len), *back = malloc(len);
	unsigned char *scratch = malloc(scratch_len);

	(void)state;
	assert_int_equal(qv_codec_ctx_create(&ctx), 0);
	for (size_t d = 0; d < 4; d++) {
		for (int random = 0; random < 2; random++) {
			struct qv_codec_frame f;

			if (random)
				fill_random(src, len);
			else
				fill_weights(all_dtypes[d], src, len);
			assert_int_equal(qv_codec_frame_encode(ctx, all_dtypes[d], 0, src, len, stored,
							       len, scratch, scratch_len, &f), 0);
			for (int k = 0; k < 20; k++) {
				size_t at = (size_t)(rng_next() % f.stored_bytes);
				unsigned char bit = (unsigned char)(1u << (rng_next() % 8));

				stored[at] ^= bit;
				assert_int_equal(qv_codec_frame_decode(ctx, &f, stored, f.stored_bytes,
								       back, len, scratch, scratch_len),
						 QV_ECORRUPT);
				stored[at] ^= bit;
			}
			/* a wrong checksum or length in the entry */
			f.xxh3 ^= 1;
			assert_int_equal(qv_codec_frame_decode(ctx, &f, stored, f.stored_bytes, back, len,
							       scratch, scratch_len), QV_ECORRUPT);
			f.xxh3 ^= 1;
			if (f.method != QV_CODEC_METHOD_RAW) {
				f.raw_bytes -= 1;
				assert_int_equal(qv_codec_frame_decode(ctx, &f, stored, f.stored_bytes,
								       back, len, scratch, scratch_len),
						 QV_ECORRUPT);
				f.raw_bytes += 1;
			}
			assert_int_equal(qv_codec_frame_decode(ctx, &f, stored, f.stored_bytes, back, len,
							       scratch, scratch_len), 0);
		}
	}
	qv_codec_ctx_destroy(ctx);
	free(src);
	free(stored);
	free(back);
	free(scratch);
}

/* ---- files ---- */

static int temp_fd(void)
{
	char path[] = "/tmp/qv-codec-test-XXXXXX";
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(unlink(path), 0);
	return fd;
}

static void write_all(int fd, const void *p, size_t n, off_t off)
{
	assert_int_equal(pwrite(fd, p, n, off), (ssize_t)n);
}

static unsigned char *read_all(int fd, size_t n)
{
	unsigned char *p = malloc(n ? n : 1);

	assert_non_null(p);
	assert_int_equal(pread(fd, p, n, 0), (ssize_t)n);
	return p;
}

/* What encode_fd told its progress function: calls, and the last count. */
struct seen {
	uint64_t calls, last;
	int backwards;
};

static void on_progress(void *arg, uint64_t raw_done)
{
	struct seen *s = arg;
	s->backwards |= raw_done <= s->last && s->calls > 0;
	s->calls++;
	s->last = raw_done;
}

/* Encodes len bytes of src into a new temp file; returns its fd. Progress
 * comes once a frame, rising to len. */
static int encode_to_file(enum qv_codec_dtype dtype, const unsigned char *src, size_t len,
			  uint32_t frame_bytes, uint64_t *stored)
{
	int in = temp_fd(), out = temp_fd();
	struct seen seen = { 0 };
	uint32_t fb = frame_bytes ? frame_bytes : QV_CODEC_FRAME_DEFAULT;

	write_all(in, src, len, 0);
	assert_int_equal(qv_codec_encode_fd(in, len, dtype, 0, frame_bytes, out, stored, on_progress,
					    &seen), 0);
	assert_int_equal(seen.calls, (len + fb - 1) / fb);
	assert_int_equal(seen.last, len);
	assert_false(seen.backwards);
	assert_int_equal(*stored % QV_CODEC_ALIGN, 0);
	assert_int_equal((uint64_t)lseek(out, 0, SEEK_END), *stored);
	assert_true(*stored <= qv_codec_file_bound(len, frame_bytes ? frame_bytes :
						    QV_CODEC_FRAME_DEFAULT));
	close(in);
	return out;
}

static void test_file_round_trip(void **state)
{
	static const size_t lens[] = { 0, 1, 3, MIB, MIB + 1, 3 * MIB + 7, 2 * MIB };
	unsigned char *src = malloc(4 * MIB), *back = malloc(4 * MIB);

	(void)state;
	for (size_t d = 0; d < 4; d++) {
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			for (int random = 0; random < 2; random++) {
				uint32_t fb = lens[l] == 2 * MIB ? 0 : MIB;
				struct qv_codec_header *hdr = NULL;
				uint64_t stored;
				int fd;

				if (random)
					fill_random(src, lens[l]);
				else
					fill_weights(all_dtypes[d], src, lens[l]);
				fd = encode_to_file(all_dtypes[d], src, lens[l], fb, &stored);
				assert_int_equal(qv_codec_header_read(fd, stored, &hdr), 0);
				assert_int_equal(hdr->dtype, all_dtypes[d]);
				assert_int_equal(hdr->frame_bytes, fb ? fb : QV_CODEC_FRAME_DEFAULT);
				assert_int_equal(hdr->level, QV_CODEC_LEVEL_DEFAULT);
				assert_int_equal(hdr->file_size, stored);
				for (uint32_t i = 0; i < hdr->frame_count; i++) {
					assert_int_equal(hdr->frames[i].offset % QV_CODEC_ALIGN, 0);
					if (random)
						assert_int_equal(hdr->frames[i].method,
								 QV_CODEC_METHOD_RAW);
				}
				memset(back, 0xa5, lens[l]);
				assert_int_equal(qv_codec_decode_fd(fd, hdr, back, lens[l]), 0);
				if (lens[l] > 0)
					assert_memory_equal(src, back, lens[l]);
				/* a short destination is refused */
				if (lens[l] > 0)
					assert_int_equal(qv_codec_decode_fd(fd, hdr, back, lens[l] - 1),
							 -EINVAL);
				qv_codec_header_destroy(hdr);
				close(fd);
			}
		}
	}
	free(src);
	free(back);
}

/* qv_codec_decode_each: every frame goes to any_order once (on a decoding
 * thread) and then to in_order, in order; a callback's error, or a damaged
 * frame, stops it and in_order sees no frame from there on. */
#define EACH_FRAMES 10
struct each_seen {
	const unsigned char *src;
	int any[EACH_FRAMES];  /* any_order's calls per frame (atomic) */
	uint32_t next;         /* in_order's next frame */
	uint32_t fail_any, fail_in; /* the frame whose callback fails, or ~0 */
	int bad;               /* a check that failed */
};

static int each_any(void *arg, uint64_t raw_off, const void *raw, size_t len)
{
	struct each_seen *e = arg;
	uint32_t f = (uint32_t)(raw_off / MIB);
	if (raw_off % MIB || f >= EACH_FRAMES || memcmp(raw, e->src + raw_off, len) != 0)
		__atomic_store_n(&e->bad, 1, __ATOMIC_RELAXED);
	else
		__atomic_add_fetch(&e->any[f], 1, __ATOMIC_RELAXED);
	return f == e->fail_any ? -EIO : 0;
}

static int each_in(void *arg, uint64_t raw_off, const void *raw, size_t len)
{
	struct each_seen *e = arg;
	uint32_t f = e->next++;
	if (raw_off != (uint64_t)f * MIB || __atomic_load_n(&e->any[f], __ATOMIC_RELAXED) != 1 ||
	    memcmp(raw, e->src + raw_off, len) != 0)
		e->bad = 1;
	return f == e->fail_in ? 77 : 0;
}

static void test_decode_each(void **state)
{
	const size_t len = (EACH_FRAMES - 1) * MIB + 5;
	unsigned char *src = malloc(len);
	struct qv_codec_header *hdr = NULL;
	uint64_t stored;

	(void)state;
	assert_non_null(src);
	fill_weights(QV_CODEC_BF16, src, len);
	int fd = encode_to_file(QV_CODEC_BF16, src, len, MIB, &stored);
	assert_int_equal(qv_codec_header_read(fd, stored, &hdr), 0);
	assert_int_equal(hdr->frame_count, EACH_FRAMES);
	assert_int_equal(qv_codec_decode_each(fd, hdr, NULL, NULL, NULL), 0);
	assert_int_equal(qv_codec_decode_each(-1, hdr, each_any, each_in, NULL), -EINVAL);

	/* all frames; then in_order failing at 4; then any_order at 6 */
	static const struct { uint32_t fail_any, fail_in; int rc; uint32_t seen; } cases[] = {
		{~0u, ~0u, 0, EACH_FRAMES}, {~0u, 4, 77, 5}, {6, ~0u, -EIO, 6},
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct each_seen e = {.src = src, .fail_any = cases[c].fail_any,
				      .fail_in = cases[c].fail_in};
		assert_int_equal(qv_codec_decode_each(fd, hdr, each_any, each_in, &e), cases[c].rc);
		assert_int_equal(e.bad, 0);
		assert_int_equal(e.next, cases[c].seen);
		if (cases[c].rc == 0)
			for (uint32_t f = 0; f < EACH_FRAMES; f++)
				assert_int_equal(e.any[f], 1);
	}

	/* a damaged frame 3: frames 0-2 only, then QV_ECORRUPT */
	const struct qv_codec_frame *f3 = &hdr->frames[3];
	off_t at = (off_t)(f3->offset + f3->stored_bytes / 2);
	unsigned char b, flipped;
	assert_int_equal(pread(fd, &b, 1, at), 1);
	flipped = (unsigned char)(b ^ 0x10);
	write_all(fd, &flipped, 1, at);
	struct each_seen e = {.src = src, .fail_any = ~0u, .fail_in = ~0u};
	assert_int_equal(qv_codec_decode_each(fd, hdr, each_any, each_in, &e), QV_ECORRUPT);
	assert_int_equal(e.bad, 0);
	assert_int_equal(e.next, 3);
	assert_int_equal(e.any[3], 0);

	qv_codec_header_destroy(hdr);
	close(fd);
	free(src);
}

/* A pack of mixed dtypes (QV_CODEC_MIXED): each frame keeps the smaller of
 * the float planes and plain zstd, so the file is no larger than with
 * either alone, and it decodes to the same bytes. */
static void test_file_mixed(void **state)
{
	size_t len = 4 * MIB;
	unsigned char *src = malloc(len), *back = malloc(len);
	uint64_t s_f32, s_plain, s_mixed;
	struct qv_codec_header *hdr = NULL;

	(void)state;
	assert_non_null(src);
	assert_non_null(back);
	/* frame 1: F32 weights; frame 2: small I32 counts (text-like, where
	 * plain zstd's matches win); frames 3-4: F32 weights again */
	fill_weights(QV_CODEC_F32, src, len);
	for (size_t i = 0; i < MIB / 4; i++) {
		uint32_t v = (uint32_t)(i % 97) * 3u;
		memcpy(src + MIB + 4 * i, &v, 4);
	}
	close(encode_to_file(QV_CODEC_F32, src, len, MIB, &s_f32));
	close(encode_to_file(QV_CODEC_PLAIN, src, len, MIB, &s_plain));
	int fd = encode_to_file(QV_CODEC_F32 | QV_CODEC_MIXED, src, len, MIB, &s_mixed);
	assert_true(s_mixed <= s_f32);
	assert_true(s_mixed <= s_plain);
	assert_true(s_mixed < s_f32 || s_mixed < s_plain);
	assert_int_equal(qv_codec_header_read(fd, s_mixed, &hdr), 0);
	assert_int_equal(hdr->dtype, QV_CODEC_F32); /* the flag is not stored */
	assert_int_equal(qv_codec_decode_fd(fd, hdr, back, len), 0);
	assert_memory_equal(back, src, len);
	qv_codec_header_destroy(hdr);
	close(fd);
	free(src);
	free(back);
}

static void test_file_bad_args(void **state)
{
	unsigned char buf[16] = { 0 };
	int in = temp_fd(), out = temp_fd();
	uint64_t stored;

	(void)state;
	write_all(in, buf, sizeof(buf), 0);
	assert_int_equal(qv_codec_encode_fd(in, 16, QV_CODEC_F32, 0, MIB - 4096, out, &stored, NULL, NULL), -EINVAL);
	assert_int_equal(qv_codec_encode_fd(in, 16, QV_CODEC_F32, 0, MIB + 1, out, &stored, NULL, NULL), -EINVAL);
	assert_int_equal(qv_codec_encode_fd(in, 16, QV_CODEC_F32, 0, 8 * MIB, out, &stored, NULL, NULL), -EINVAL);
	assert_int_equal(qv_codec_encode_fd(in, 16, QV_CODEC_F32, 42, 0, out, &stored, NULL, NULL), -EINVAL);
	/* the input is shorter than it claims */
	assert_int_equal(qv_codec_encode_fd(in, 17, QV_CODEC_F32, 0, 0, out, &stored, NULL, NULL), QV_ECHANGED);
	assert_int_equal(qv_codec_encode_fd(in, UINT64_MAX, QV_CODEC_F32, 0, 0, out, &stored, NULL, NULL),
			 QV_ELIMIT);
	assert_int_equal(qv_codec_encode_fd(-1, 16, QV_CODEC_F32, 0, 0, out, &stored, NULL, NULL), -EINVAL);
	assert_int_equal(qv_codec_file_bound(1, 5), 0);
	close(in);
	close(out);
}

static void test_file_corrupt_frame(void **state)
{
	const size_t len = 3 * MIB + 5;
	unsigned char *src = malloc(len), *back = malloc(len);

	(void)state;
	for (size_t d = 0; d < 4; d++) {
		for (int random = 0; random < 2; random++) {
			struct qv_codec_header *hdr = NULL;
			uint64_t stored;
			int fd;

			if (random)
				fill_random(src, len);
			else
				fill_weights(all_dtypes[d], src, len);
			fd = encode_to_file(all_dtypes[d], src, len, MIB, &stored);
			assert_int_equal(qv_codec_header_read(fd, stored, &hdr), 0);
			for (uint32_t i = 0; i < hdr->frame_count; i++) {
				const struct qv_codec_frame *f = &hdr->frames[i];
				uint64_t at = f->offset + rng_next() % f->stored_bytes;
				unsigned char b, flipped;

				assert_int_equal(pread(fd, &b, 1, (off_t)at), 1);
				flipped = (unsigned char)(b ^ 0x10);
				write_all(fd, &flipped, 1, (off_t)at);
				assert_int_equal(qv_codec_decode_fd(fd, hdr, back, len), QV_ECORRUPT);
				write_all(fd, &b, 1, (off_t)at);
			}
			/* padding is not covered by any checksum and not read */
			assert_int_equal(qv_codec_decode_fd(fd, hdr, back, len), 0);
			assert_memory_equal(src, back, len);
			qv_codec_header_destroy(hdr);
			close(fd);
		}
	}
	free(src);
	free(back);
}

/* Rewrites the header checksum of the file image so that a lie in a field
 * reaches the field checks. */
static void reseal(unsigned char *img, uint32_t count)
{
	uint64_t h = XXH3_64bits(img + 16, QV_CODEC_HEADER_BYTES + (size_t)count * 32 - 16);
	memcpy(img + 8, &h, 8);
}

static void put32(unsigned char *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(unsigned char *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* Writes img (n bytes) to a fresh file, parses it with file size fsize and,
 * if that succeeds, decodes it: the result of the first step that fails. */
static int parse_image(const unsigned char *img, size_t n, uint64_t fsize)
{
	struct qv_codec_header *hdr = NULL;
	int fd = temp_fd(), rc;

	if (n > 0)
		write_all(fd, img, n, 0);
	rc = qv_codec_header_read(fd, fsize, &hdr);
	if (rc == 0) {
		/* whatever parsed must decode safely */
		unsigned char *dst = malloc(hdr->raw_size ? hdr->raw_size : 1);
		assert_non_null(dst);
		rc = qv_codec_decode_fd(fd, hdr, dst, hdr->raw_size);
		assert_true(rc == 0 || rc == QV_ECORRUPT);
		free(dst);
		qv_codec_header_destroy(hdr);
	} else {
		assert_null(hdr);
	}
	close(fd);
	return rc;
}

static void test_header_lies(void **state)
{
	const size_t len = 3 * MIB + 5;
	unsigned char *src = malloc(len), *img, *work;
	uint64_t stored;
	uint32_t count = 4;
	int fd;

	(void)state;
	fill_weights(QV_CODEC_BF16, src, len);
	fd = encode_to_file(QV_CODEC_BF16, src, len, MIB, &stored);
	img = read_all(fd, stored);
	work = malloc(stored);
	close(fd);
	assert_int_equal(parse_image(img, stored, stored), 0);

	/* truncated anywhere, or a wrong size claimed */
	for (uint64_t cut = 0; cut < stored; cut += cut < 4096 ? 7 : 65536)
		assert_int_not_equal(parse_image(img, cut, cut), 0);
	assert_int_equal(parse_image(img, stored - 1, stored - 1), QV_ECORRUPT);
	assert_int_equal(parse_image(img, stored, stored + 4096), QV_ECORRUPT);
	assert_int_equal(parse_image(img, stored, stored - 4096), QV_ECORRUPT);
	/* the file is shorter than the size the caller claims: the header
	 * parses, the missing frame fails to decode */
	assert_int_equal(parse_image(img, stored - 4096, stored), QV_ECORRUPT);

	/* magic, version */
	memcpy(work, img, stored);
	work[0] = 'X';
	assert_int_equal(parse_image(work, stored, stored), QV_EFORMAT);
	memcpy(work, img, stored);
	put32(work + 16, 2);
	reseal(work, count);
	assert_int_equal(parse_image(work, stored, stored), QV_EFORMAT);

	/* any flipped bit of header or table, unsealed: checksum */
	for (size_t at = 8; at < QV_CODEC_HEADER_BYTES + count * 32; at++) {
		memcpy(work, img, stored);
		work[at] ^= 0x04;
		assert_int_not_equal(parse_image(work, stored, stored), 0);
	}

	/* sealed lies: every field of the header and of each entry */
	struct { size_t at; int width; uint64_t value; } lies[] = {
		{ 20, 4, 4 },                       /* dtype */
		{ 20, 4, QV_CODEC_F32 },            /* dtype that does not match the methods */
		{ 24, 8, UINT64_MAX },              /* raw size */
		{ 24, 8, (uint64_t)1 << 62 },
		{ 24, 8, 3 * MIB + 4 },
		{ 24, 8, 0 },
		{ 32, 4, 0 },                       /* frame bytes */
		{ 32, 4, 8 * MIB },
		{ 32, 4, MIB + 1 },
		{ 36, 4, UINT32_MAX },              /* frame count */
		{ 36, 4, 5 },
		{ 36, 4, 0 },
		{ 48, 4, 1 },                       /* reserved */
		{ 64, 8, 0 },                       /* offset */
		{ 64, 8, 8192 },
		{ 64, 8, UINT64_MAX - 4095 },
		{ 64 + 32, 8, UINT64_MAX },
		{ 64 + 32 * 3, 8, stored },
		{ 72, 4, 0 },                       /* stored length */
		{ 72, 4, MIB + 1 },
		{ 72, 4, UINT32_MAX },
		{ 72 + 32 * 3, 4, 4096 * 1000 },
		{ 76, 4, MIB - 1 },                 /* raw length */
		{ 76, 4, UINT32_MAX },
		{ 80, 4, QV_CODEC_METHOD_RAW },     /* method */
		{ 80, 4, QV_CODEC_METHOD_F32_PLANES },
		{ 80, 4, 77 },
		{ 84, 4, 1 },                       /* reserved */
	};
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		memcpy(work, img, stored);
		if (lies[i].width == 4)
			put32(work + lies[i].at, (uint32_t)lies[i].value);
		else
			put64(work + lies[i].at, lies[i].value);
		reseal(work, count);
		assert_int_equal(parse_image(work, stored, stored), QV_ECORRUPT);
	}
	/* the frame checksum lies: parses, fails to decode */
	{
		struct qv_codec_header *hdr = NULL;
		unsigned char *dst = malloc(len);

		memcpy(work, img, stored);
		work[64 + 24] ^= 1;
		reseal(work, count);
		fd = temp_fd();
		write_all(fd, work, stored, 0);
		assert_int_equal(qv_codec_header_read(fd, stored, &hdr), 0);
		assert_int_equal(qv_codec_decode_fd(fd, hdr, dst, len), QV_ECORRUPT);
		qv_codec_header_destroy(hdr);
		close(fd);
		free(dst);
	}

	/* random sealed damage to header and table: never crashes */
	for (int k = 0; k < 2000; k++) {
		memcpy(work, img, stored);
		int flips = 1 + (int)(rng_next() % 4);
		for (int j = 0; j < flips; j++) {
			size_t at = 16 + (size_t)(rng_next() % (QV_CODEC_HEADER_BYTES + count * 32 - 16));
			work[at] = (unsigned char)rng_next();
		}
		reseal(work, count);
		(void)parse_image(work, stored, stored);
	}
	free(src);
	free(img);
	free(work);
}

/* A huge frame count is refused before anything is allocated for it. */
static void test_header_huge_count(void **state)
{
	unsigned char img[4096] = { 0 };
	const unsigned char magic[8] = { 'Q', 'V', 'C', 'O', 'L', 'D', '\r', '\n' };
	uint32_t counts[] = { 1u << 22, (1u << 22) + 1, UINT32_MAX };

	(void)state;
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		memcpy(img, magic, 8);
		put32(img + 16, QV_CODEC_VERSION);
		put32(img + 20, QV_CODEC_F32);
		put64(img + 24, (uint64_t)counts[i] * MIB);
		put32(img + 32, MIB);
		put32(img + 36, counts[i]);
		/* checksum over what is there; the table lies past the file */
		assert_int_equal(parse_image(img, sizeof(img), sizeof(img)), QV_ECORRUPT);
		if (counts[i] > (1u << 22)) /* else: a 128 MiB table to read */
			assert_int_equal(parse_image(img, sizeof(img), UINT64_MAX), QV_ECORRUPT);
	}
	assert_int_equal(parse_image(img, 10, 10), QV_EFORMAT);
	assert_int_equal(parse_image(img, 0, 0), QV_EFORMAT);
}

static void test_determinism(void **state)
{
	const size_t len = 5 * MIB + 11;
	unsigned char *src = malloc(len);

	(void)state;
	for (size_t d = 0; d < 4; d++) {
		uint64_t s1, s2;
		int a, b;
		unsigned char *pa, *pb;

		fill_weights(all_dtypes[d], src, len);
		a = encode_to_file(all_dtypes[d], src, len, 0, &s1);
		b = encode_to_file(all_dtypes[d], src, len, 0, &s2);
		assert_int_equal(s1, s2);
		pa = read_all(a, s1);
		pb = read_all(b, s2);
		assert_memory_equal(pa, pb, s1);
		free(pa);
		free(pb);
		close(a);
		close(b);
	}
	free(src);
}

static void test_dtype_names(void **state)
{
	(void)state;
	assert_int_equal(qv_codec_dtype_from_name("BF16"), QV_CODEC_BF16);
	assert_int_equal(qv_codec_dtype_from_name("F16"), QV_CODEC_F16);
	assert_int_equal(qv_codec_dtype_from_name("F32"), QV_CODEC_F32);
	assert_int_equal(qv_codec_dtype_from_name("F64"), QV_CODEC_PLAIN);
	assert_int_equal(qv_codec_dtype_from_name("bf16"), QV_CODEC_PLAIN);
	assert_int_equal(qv_codec_dtype_from_name("I32"), QV_CODEC_PLAIN);
	assert_int_equal(qv_codec_dtype_from_name(""), QV_CODEC_PLAIN);
	assert_int_equal(qv_codec_dtype_from_name(NULL), QV_CODEC_PLAIN);
}

int main(void)
{
	const char *env = getenv("QV_TEST_SEED");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_dtype_names, setup),
		cmocka_unit_test_setup(test_frame_lengths, setup),
		cmocka_unit_test_setup(test_frame_planes_pay, setup),
		cmocka_unit_test_setup(test_frame_all_patterns, setup),
		cmocka_unit_test_setup(test_pairs_lies, setup),
		cmocka_unit_test_setup(test_pairs_planes, setup),
		cmocka_unit_test_setup(test_frame_bad_args, setup),
		cmocka_unit_test_setup(test_frame_corrupt, setup),
		cmocka_unit_test_setup(test_file_round_trip, setup),
		cmocka_unit_test_setup(test_file_mixed, setup),
		cmocka_unit_test_setup(test_decode_each, setup),
		cmocka_unit_test_setup(test_file_bad_args, setup),
		cmocka_unit_test_setup(test_file_corrupt_frame, setup),
		cmocka_unit_test_setup(test_header_lies, setup),
		cmocka_unit_test_setup(test_header_huge_count, setup),
		cmocka_unit_test_setup(test_determinism, setup),
	};
	int failed;

	seed = env ? strtoull(env, NULL, 0) : 0x5eed0c0dec;
	if (seed == 0)
		seed = 1;
	failed = cmocka_run_group_tests(tests, NULL, NULL);
	if (failed)
		fprintf(stderr, "test_codec: failed with QV_TEST_SEED=%#llx\n",
			(unsigned long long)seed);
	return failed;
}
