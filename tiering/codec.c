/* The cold-tier codec: a shard becomes independent zstd frames of a few MiB,
 * each with the XXH3 of its raw bytes, laid out at 4 KiB aligned offsets
 * behind a checksummed header and frame table (format in quiver/codec.h).
 *
 * The one idea: float weights compress badly as bytes because the exponent
 * (low entropy) and the mantissa (near-random) are interleaved; split into
 * planes first, zstd's entropy coder finds the exponent's redundancy and
 * stores the mantissa blocks almost verbatim. Frame encode/decode touch only
 * their arguments and a per-thread context, so the loader can decode frames
 * on many threads; the header parser treats the file as untrusted. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CODEC_AVX2 1 /* compiled for any x86-64, used where the CPU has it */
#endif

#include "quiver/codec.h"
#include "quiver/error.h"
#include "tier_int.h"
#include "xxh_avx2.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the cold codec assumes a little-endian host"
#endif

static const unsigned char codec_magic[8] = { 'Q', 'V', 'C', 'O', 'L', 'D', '\r', '\n' };

/* Compression must save at least raw/64 or the frame is stored raw: a frame
 * that barely shrinks costs a full zstd decode for nothing. */
#define CODEC_MIN_SAVING_SHIFT 6

/* The table of a shard is bounded by the file it lives in (checked on read)
 * and, for writers, by this: 2^22 frames of 4 MiB = 16 TiB. */
#define CODEC_FRAMES_MAX (1u << 22)

/* Values merged and hashed at a time: 32 KiB of BF16, 64 KiB of F32. */
#define MERGE_PIECE_VALUES (16u << 10)

struct qv_codec_ctx {
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	XXH3_state_t *xxh;
	unsigned char *ebuf;   /* MERGE_PIECE_VALUES exponents of a BF16 pairs frame */
	int avx2;              /* decode BF16 with AVX2 (qv_codec_ctx_set_simd) */
	qv_codec_prepare_fn prepare; /* called before dst is first written (set_prepare) */
	void *prepare_arg;
	size_t prepare_step;
};

enum qv_codec_dtype qv_codec_dtype_from_name(const char *name)
{
	if (name == NULL)
		return QV_CODEC_PLAIN;
	if (strcmp(name, "BF16") == 0)
		return QV_CODEC_BF16;
	if (strcmp(name, "F16") == 0)
		return QV_CODEC_F16;
	if (strcmp(name, "F32") == 0)
		return QV_CODEC_F32;
	return QV_CODEC_PLAIN;
}

int qv_codec_ctx_create(struct qv_codec_ctx **out)
{
	struct qv_codec_ctx *ctx = NULL;
	int rc = -ENOMEM;

	assert(out != NULL);
	*out = NULL;
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL)
		goto out;
	ctx->cctx = ZSTD_createCCtx();
	ctx->dctx = ZSTD_createDCtx();
	ctx->xxh = XXH3_createState();
	ctx->ebuf = malloc(MERGE_PIECE_VALUES);
	if (ctx->cctx == NULL || ctx->dctx == NULL || ctx->xxh == NULL || ctx->ebuf == NULL)
		goto out;
	/* A frame's window never exceeds its raw length: refuse frames that
	 * claim more, whatever the file says. */
	if (ZSTD_isError(ZSTD_DCtx_setParameter(ctx->dctx, ZSTD_d_windowLogMax, 22)))
		goto out;
	qv_codec_ctx_set_simd(ctx, 1);
	*out = ctx;
	ctx = NULL;
	rc = 0;
out:
	qv_codec_ctx_destroy(ctx);
	return rc;
}

void qv_codec_ctx_set_simd(struct qv_codec_ctx *ctx, int on)
{
#ifdef CODEC_AVX2
	ctx->avx2 = on && __builtin_cpu_supports("avx2");
#else
	(void)on;
	ctx->avx2 = 0;
#endif
}

void qv_codec_ctx_set_prepare(struct qv_codec_ctx *ctx, qv_codec_prepare_fn fn, void *arg,
			      size_t step)
{
	ctx->prepare = fn;
	ctx->prepare_arg = arg;
	ctx->prepare_step = step ? step : QV_CODEC_FRAME_MAX;
}

/* Calls the prepare hook for dst[*ready, upto) in steps: the range the
 * decoder is about to write first. */
static void prepare_upto(struct qv_codec_ctx *ctx, unsigned char *dst, size_t *ready, size_t upto,
			 size_t end)
{
	while (ctx->prepare && *ready < upto) {
		size_t n = end - *ready < ctx->prepare_step ? end - *ready : ctx->prepare_step;

		ctx->prepare(ctx->prepare_arg, dst + *ready, n);
		*ready += n;
	}
}

void qv_codec_ctx_destroy(struct qv_codec_ctx *ctx)
{
	if (ctx == NULL)
		return;
	ZSTD_freeCCtx(ctx->cctx);
	ZSTD_freeDCtx(ctx->dctx);
	XXH3_freeState(ctx->xxh);
	free(ctx->ebuf);
	free(ctx);
}

size_t qv_codec_frame_bound(size_t raw_len)
{
	return raw_len;
}

/* The largest planed form: F16's 3 bytes per 2-byte value, plus a tail. */
size_t qv_codec_scratch_bytes(size_t raw_len)
{
	return raw_len + raw_len / 2 + 1;
}

/* Adds n bytes at p to st: xxHash's AVX2 build if avx2 (only where the CPU
 * has it), else the SSE2 one; the same hash either way. */
static void xxh3_update(XXH3_state_t *st, const void *p, size_t n, int avx2)
{
#ifdef CODEC_AVX2
	if (avx2) {
		qv__xxh3_update_avx2(st, p, n);
		return;
	}
#endif
	(void)avx2;
	(void)XXH3_64bits_update(st, p, n);
}

/* Adds n bytes at p to the frame's running hash (the path set_simd chose). */
static void hash_update(struct qv_codec_ctx *ctx, const void *p, size_t n)
{
	xxh3_update(ctx->xxh, p, n, ctx->avx2);
}

void qv__xxh3_update(XXH3_state_t *st, const void *p, size_t n)
{
#ifdef CODEC_AVX2
	xxh3_update(st, p, n, __builtin_cpu_supports("avx2"));
#else
	xxh3_update(st, p, n, 0);
#endif
}

/* ---- little-endian fields ---- */

static void put32(unsigned char *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(unsigned char *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

/* ---- plane split and merge ----
 *
 * A frame of raw_len bytes of an element size e holds n = raw_len / e whole
 * values and raw_len % e tail bytes. split writes the planes back to back
 * into one buffer (n bytes each); merge reads them through pointers, since
 * a plane stored raw is merged straight from the stored frame. */

#define PLANES_MAX 4

static void split_bf16(const unsigned char *restrict src, size_t n, unsigned char *restrict dst)
{
	unsigned char *exp = dst, *sm = dst + n;

	for (size_t i = 0; i < n; i++) {
		uint16_t v;
		memcpy(&v, src + 2 * i, 2);
		exp[i] = (unsigned char)(v >> 7);
		sm[i] = (unsigned char)(((v >> 8) & 0x80) | (v & 0x7f));
	}
}

#ifdef CODEC_AVX2
/* 16 BF16 values from 16 exponents and 16 sign+mantissa bytes: widened to
 * 16 bits, v = exp << 7 | (sm & 0x80) << 8 | (sm & 0x7f). */
__attribute__((target("avx2"))) static inline void merge16_avx2(__m128i exp, __m128i sm,
								unsigned char *dst)
{
	const __m256i m_sign = _mm256_set1_epi16(0x80), m_man = _mm256_set1_epi16(0x7f);
	__m256i x = _mm256_cvtepu8_epi16(exp), y = _mm256_cvtepu8_epi16(sm);
	__m256i v = _mm256_or_si256(
		_mm256_slli_epi16(x, 7),
		_mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(y, m_sign), 8),
				_mm256_and_si256(y, m_man)));
	_mm256_storeu_si256((__m256i *)dst, v);
}

/* merge_bf16's vector loop: returns the values done (a multiple of 16). */
__attribute__((target("avx2"))) static size_t merge_bf16_avx2(const unsigned char *exp,
							      const unsigned char *sm, size_t n,
							      unsigned char *dst)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		merge16_avx2(_mm_loadu_si128((const __m128i *)(exp + i)),
			     _mm_loadu_si128((const __m128i *)(sm + i)), dst + 2 * i);
	return i;
}
#endif

static void merge_bf16(const unsigned char *const *pl, size_t n, unsigned char *restrict dst,
		       int avx2)
{
	const unsigned char *restrict exp = pl[0], *restrict sm = pl[1];
	size_t i = 0;

#ifdef CODEC_AVX2
	if (avx2)
		i = merge_bf16_avx2(exp, sm, n, dst);
#else
	(void)avx2;
#endif

#ifdef __SSE2__
	/* w = exp << 8 | sm; v = (w >> 1 & 0x7f80) | (w << 8 & 0x8000) | (w & 0x7f) */
	const __m128i m_exp = _mm_set1_epi16(0x7f80), m_sign = _mm_set1_epi16((short)0x8000),
		      m_man = _mm_set1_epi16(0x007f);
	for (; i + 16 <= n; i += 16) {
		__m128i e = _mm_loadu_si128((const __m128i *)(exp + i));
		__m128i m = _mm_loadu_si128((const __m128i *)(sm + i));
		__m128i w[2] = { _mm_unpacklo_epi8(m, e), _mm_unpackhi_epi8(m, e) };
		for (int k = 0; k < 2; k++) {
			__m128i v = _mm_or_si128(
				_mm_or_si128(_mm_and_si128(_mm_srli_epi16(w[k], 1), m_exp),
					     _mm_and_si128(_mm_slli_epi16(w[k], 8), m_sign)),
				_mm_and_si128(w[k], m_man));
			_mm_storeu_si128((__m128i *)(dst + 2 * i + 16 * k), v);
		}
	}
#endif
	for (; i < n; i++) {
		uint16_t v = (uint16_t)(((unsigned)exp[i] << 7) | (((unsigned)sm[i] & 0x80) << 8) |
					(sm[i] & 0x7f));
		memcpy(dst + 2 * i, &v, 2);
	}
}

/* F16: the 11-bit sign+mantissa values are stored as a plane of their low
 * bytes then a plane of their high bytes (sign in bit 2, mantissa bits 8-9):
 * interleaved as 16-bit values, zstd's order-0 entropy coder sees a mix of
 * random and 3-bit bytes and the frame ends up larger than plain zstd
 * (measured 0.98 vs 0.92 of raw on N(0, 0.02) weights; split: 0.87). */
static void split_f16(const unsigned char *restrict src, size_t n, unsigned char *restrict dst)
{
	unsigned char *exp = dst, *lo = dst + n, *hi = dst + 2 * n;

	for (size_t i = 0; i < n; i++) {
		uint16_t v;
		memcpy(&v, src + 2 * i, 2);
		exp[i] = (unsigned char)((v >> 10) & 0x1f);
		lo[i] = (unsigned char)v;
		hi[i] = (unsigned char)(((v >> 13) & 0x04) | ((v >> 8) & 0x03));
	}
}

/* Bits a well-formed plane never sets are dropped; a corrupt plane is
 * caught by the checksum. */
static void merge_f16(const unsigned char *const *pl, size_t n, unsigned char *restrict dst)
{
	const unsigned char *restrict exp = pl[0], *restrict lo = pl[1], *restrict hi = pl[2];
	size_t i = 0;

#ifdef __SSE2__
	/* a = hi << 8 | lo, b = exp << 8;
	 * v = (a & 0x3ff) | (a << 5 & 0x8000) | (b << 2 & 0x7c00) */
	const __m128i m_man = _mm_set1_epi16(0x03ff), m_sign = _mm_set1_epi16((short)0x8000),
		      m_exp = _mm_set1_epi16(0x7c00), zero = _mm_setzero_si128();
	for (; i + 16 <= n; i += 16) {
		__m128i e = _mm_loadu_si128((const __m128i *)(exp + i));
		__m128i l = _mm_loadu_si128((const __m128i *)(lo + i));
		__m128i h = _mm_loadu_si128((const __m128i *)(hi + i));
		__m128i a[2] = { _mm_unpacklo_epi8(l, h), _mm_unpackhi_epi8(l, h) };
		__m128i b[2] = { _mm_unpacklo_epi8(zero, e), _mm_unpackhi_epi8(zero, e) };
		for (int k = 0; k < 2; k++) {
			__m128i v = _mm_or_si128(
				_mm_or_si128(_mm_and_si128(a[k], m_man),
					     _mm_and_si128(_mm_slli_epi16(a[k], 5), m_sign)),
				_mm_and_si128(_mm_slli_epi16(b[k], 2), m_exp));
			_mm_storeu_si128((__m128i *)(dst + 2 * i + 16 * k), v);
		}
	}
#endif
	for (; i < n; i++) {
		uint16_t v = (uint16_t)((((unsigned)hi[i] & 0x04) << 13) |
					(((unsigned)exp[i] & 0x1f) << 10) |
					(((unsigned)hi[i] & 0x03) << 8) | lo[i]);
		memcpy(dst + 2 * i, &v, 2);
	}
}

static void split_f32(const unsigned char *restrict src, size_t n, unsigned char *restrict dst)
{
	unsigned char *p0 = dst, *p1 = dst + n, *p2 = dst + 2 * n, *p3 = dst + 3 * n;

	for (size_t i = 0; i < n; i++) {
		uint32_t v;
		memcpy(&v, src + 4 * i, 4);
		p0[i] = (unsigned char)v;
		p1[i] = (unsigned char)(v >> 8);
		p2[i] = (unsigned char)(v >> 16);
		p3[i] = (unsigned char)(v >> 24);
	}
}

static void merge_f32(const unsigned char *const *pl, size_t n, unsigned char *restrict dst)
{
	const unsigned char *restrict p0 = pl[0], *restrict p1 = pl[1], *restrict p2 = pl[2],
			    *restrict p3 = pl[3];
	size_t i = 0;

#ifdef __SSE2__
	for (; i + 16 <= n; i += 16) {
		__m128i b0 = _mm_loadu_si128((const __m128i *)(p0 + i));
		__m128i b1 = _mm_loadu_si128((const __m128i *)(p1 + i));
		__m128i b2 = _mm_loadu_si128((const __m128i *)(p2 + i));
		__m128i b3 = _mm_loadu_si128((const __m128i *)(p3 + i));
		__m128i lo[2] = { _mm_unpacklo_epi8(b0, b1), _mm_unpackhi_epi8(b0, b1) };
		__m128i hi[2] = { _mm_unpacklo_epi8(b2, b3), _mm_unpackhi_epi8(b2, b3) };
		for (int k = 0; k < 2; k++) {
			_mm_storeu_si128((__m128i *)(dst + 4 * i + 32 * k),
					 _mm_unpacklo_epi16(lo[k], hi[k]));
			_mm_storeu_si128((__m128i *)(dst + 4 * i + 32 * k + 16),
					 _mm_unpackhi_epi16(lo[k], hi[k]));
		}
	}
#endif
	for (; i < n; i++) {
		uint32_t v = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 |
			     (uint32_t)p3[i] << 24;
		memcpy(dst + 4 * i, &v, 4);
	}
}

/* The shape of a planes method: element size and plane count (0, 0 for
 * the others). */
static void plane_shape(uint32_t method, size_t *elem, size_t *planes)
{
	switch (method) {
	case QV_CODEC_METHOD_BF16_PLANES: *elem = 2; *planes = 2; break;
	case QV_CODEC_METHOD_F16_PLANES: *elem = 2; *planes = 3; break;
	case QV_CODEC_METHOD_F32_PLANES: *elem = 4; *planes = 4; break;
	default: *elem = 0; *planes = 0; break;
	}
}

/* ---- one frame ----
 *
 * A planes frame is: one u32 LE stored length per plane, then each plane
 * (stored raw when its length is n, else as one zstd frame), then the tail
 * bytes raw. A plane is compressed only if that saves 1/2^PLANE_SAVING_SHIFT
 * of it: the low mantissa planes of real weights are close to noise, a
 * raw plane is merged straight from the stored bytes, and Huffman-coding a
 * plane that saves ~1% costs decode time for nothing (codec_bench, 15
 * unquantized models: 1/16, 1/32 and 1/64 give the same BF16 ratio, 1/256
 * gains 0.0005 and loses 5% of decode speed). */

#define PLANE_SAVING_SHIFT 6

/* A plane is compressed as one zstd frame whose blocks end every
 * PLANE_BLOCK_BYTES (ZSTD_e_flush), each with its own Huffman table where
 * that pays, and with matches of 7 bytes or more only. Weights change
 * scale from tensor to tensor, and the exponent distribution with it, so
 * tables that follow it every 16 KiB code the exponent in fewer bits; short
 * matches on such data mostly replace cheap literals with costlier
 * sequences. Measured on the 15 unquantized human-models as BF16, level 1,
 * exponent plane bits per value: one block per 128 KiB 3.18 (zstd's
 * default), 16 KiB with minMatch 7 3.10, 16 KiB with the default minMatch
 * 3.11, 4 KiB 3.13 (tables cost more than they gain). The frames stay plain
 * zstd frames: the decoder is unchanged. */
#define PLANE_BLOCK_BYTES (16u << 10)
#define PLANE_MIN_MATCH 7

/* Compresses src into dst if the result is shorter than cap; returns 0
 * with *n set, 1 if it is not, or a negative code. */
static int zstd_into(struct qv_codec_ctx *ctx, int level, const void *src, size_t len, void *dst,
		     size_t cap, size_t *n)
{
	size_t r;

	if (cap == 0)
		return 1;
	r = ZSTD_compressCCtx(ctx->cctx, dst, cap, src, len, level);
	if (ZSTD_isError(r)) {
		if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
			return 1;
		return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EINVAL;
	}
	*n = r;
	return 0;
}

/* Compresses a plane into dst, a zstd block every `block` bytes: 0 with *n
 * set, 1 if it does not fit in cap, or a negative code. */
static int zstd_plane_into(struct qv_codec_ctx *ctx, int level, const unsigned char *src,
			   size_t len, size_t block, void *dst, size_t cap, size_t *n)
{
	ZSTD_CCtx *c = ctx->cctx;
	ZSTD_outBuffer ob = { dst, cap, 0 };
	size_t r;

	if (cap == 0)
		return 1;
	r = ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(c, ZSTD_c_minMatch, PLANE_MIN_MATCH);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setPledgedSrcSize(c, len);
	for (size_t off = 0; !ZSTD_isError(r) && off < len; off += block) {
		size_t m = len - off < block ? len - off : block;
		ZSTD_inBuffer ib = { src + off, m, 0 };
		ZSTD_EndDirective end = off + m == len ? ZSTD_e_end : ZSTD_e_flush;

		do {
			r = ZSTD_compressStream2(c, &ob, &ib, end);
		} while (!ZSTD_isError(r) && r != 0 && ob.pos < ob.size);
		if (!ZSTD_isError(r) && r != 0)
			return 1; /* dst is full: it does not pay */
	}
	if (ZSTD_isError(r))
		return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EINVAL;
	*n = ob.pos;
	return 0;
}

/* Stores one plane of len bytes at dst (room bytes free): compressed if
 * that saves 1/2^PLANE_SAVING_SHIFT of it, else raw. block: bytes per zstd
 * block, or 0 for one plain zstd frame. Returns 0 with *stored set, 1 if it
 * does not fit, or a negative code. */
static int store_plane(struct qv_codec_ctx *ctx, int level, const unsigned char *plane,
		       size_t len, size_t block, unsigned char *dst, size_t room, size_t *stored)
{
	size_t want = len - (len >> PLANE_SAVING_SHIFT);
	int rc;

	if (want > 0)
		want--;
	if (want > room)
		want = room;
	rc = block ? zstd_plane_into(ctx, level, plane, len, block, dst, want, stored)
		   : zstd_into(ctx, level, plane, len, dst, want, stored);
	if (rc != 1)
		return rc;
	if (len > room)
		return 1;
	if (len > 0)
		memcpy(dst, plane, len); /* does not pay: raw */
	*stored = len;
	return 0;
}

/* Encodes the planes (n bytes each, back to back at planed) and the tail
 * into dst, within cap bytes: 0 with *stored, 1 if it does not fit, or a
 * negative code. */
static int encode_planes(struct qv_codec_ctx *ctx, int level, const unsigned char *planed,
			 size_t n, size_t planes, const unsigned char *tail, size_t tail_len,
			 unsigned char *dst, size_t cap, size_t *stored)
{
	size_t pos = 4 * planes;
	int rc;

	if (pos + tail_len > cap)
		return 1;
	for (size_t p = 0; p < planes; p++) {
		size_t len = 0;

		rc = store_plane(ctx, level, planed + p * n, n, PLANE_BLOCK_BYTES, dst + pos,
				 cap - pos - tail_len, &len);
		if (rc != 0)
			return rc;
		put32(dst + 4 * p, (uint32_t)len);
		pos += len;
	}
	memcpy(dst + pos, tail, tail_len);
	*stored = pos + tail_len;
	return 0;
}

/* ---- BF16 pairs ----
 *
 * Within a frame a BF16 exponent takes few values: the 15 most frequent
 * get the 4-bit codes 0-14 (in order of frequency), any other value the
 * code 15 and a byte in an escape plane, in order. Two codes share a byte
 * (the even value's in the low nibble), and zstd's Huffman coder then works
 * on pairs: half the symbols to decode, and a code's fractional bit length
 * is spread over two values. 15 unquantized human-models as BF16, 8 KiB
 * blocks: exponent 3.10 -> 2.89 bits per value (escapes included, 1.1% of
 * values), and the zstd part of decoding twice as fast (743 Mvalues/s ->
 * 1525). A frame where more than 1 value in 2^ESCAPES_MAX_SHIFT escapes
 * keeps the plain planes (method 2).
 *
 * Frame: u32 stored length of the code plane, of the sign+mantissa plane,
 * of the escape plane; u32 escape count; 16 bytes: the exponents of codes
 * 0-14 and the number of codes in use; the three planes (each raw when its
 * stored length is its raw length); the tail byte if raw_len is odd. */

#define PAIRS_HEAD 32u
#define PAIRS_CODES 15u
#define PAIRS_ESCAPE 15u
/* zstd block of the code plane: 64K values per Huffman table. 15 models,
 * ratio / decode MB/s: 8 KiB 0.6860 / 1101-1141, 16 KiB 0.6872 / 1193-1380,
 * 32 KiB 0.6890 / 1338-1413. */
#define PAIRS_BLOCK_BYTES (32u << 10)
#define ESCAPES_MAX_SHIFT 4

/* Ranks the exponents (n values): table[0..count) are the most frequent,
 * ties to the lower value (encoding is deterministic). */
static void rank_exponents(const unsigned char *exp, size_t n, unsigned char table[16],
			   unsigned char code_of[256], size_t *escapes)
{
	size_t cnt[256] = { 0 }, covered = 0;
	unsigned count = 0;

	for (size_t i = 0; i < n; i++)
		cnt[exp[i]]++;
	memset(code_of, PAIRS_ESCAPE, 256);
	memset(table, 0, 16);
	while (count < PAIRS_CODES) {
		size_t best_n = 0;
		unsigned best = 0;

		for (unsigned v = 0; v < 256; v++)
			if (code_of[v] == PAIRS_ESCAPE && cnt[v] > best_n) {
				best_n = cnt[v];
				best = v;
			}
		if (best_n == 0)
			break;
		code_of[best] = (unsigned char)count;
		table[count++] = (unsigned char)best;
		covered += best_n;
	}
	table[15] = (unsigned char)count;
	*escapes = n - covered;
}

/* Encodes a BF16 frame (n values split into planes at planed, tail after)
 * as pairs; 1 if it does not fit or escapes are too many. work: room for
 * (n + 1) / 2 + (n >> ESCAPES_MAX_SHIFT) bytes. */
static int encode_bf16_pairs(struct qv_codec_ctx *ctx, int level, const unsigned char *planed,
			     size_t n, const unsigned char *tail, size_t tail_len, unsigned char *work,
			     unsigned char *dst, size_t cap, size_t *stored)
{
	const unsigned char *exp = planed, *sm = planed + n;
	unsigned char table[16], code_of[256];
	size_t escapes, n_pk = (n + 1) / 2, ne = 0, pos = PAIRS_HEAD, len[3];
	unsigned char *pk = work, *esc = work + n_pk;
	int rc;

	rank_exponents(exp, n, table, code_of, &escapes);
	if (escapes > n >> ESCAPES_MAX_SHIFT)
		return 1;
	for (size_t i = 0; i < n; i += 2) {
		unsigned a = code_of[exp[i]], b = i + 1 < n ? code_of[exp[i + 1]] : 0;

		if (a == PAIRS_ESCAPE)
			esc[ne++] = exp[i];
		if (i + 1 < n && b == PAIRS_ESCAPE)
			esc[ne++] = exp[i + 1];
		pk[i / 2] = (unsigned char)(a | b << 4);
	}
	if (pos + tail_len > cap)
		return 1;
	const unsigned char *plane[3] = { pk, sm, esc };
	const size_t plen[3] = { n_pk, n, ne }, block[3] = { PAIRS_BLOCK_BYTES, PLANE_BLOCK_BYTES, 0 };
	for (int p = 0; p < 3; p++) {
		rc = store_plane(ctx, level, plane[p], plen[p], block[p], dst + pos,
				 cap - pos - tail_len, &len[p]);
		if (rc != 0)
			return rc;
		put32(dst + 4 * p, (uint32_t)len[p]);
		pos += len[p];
	}
	put32(dst + 12, (uint32_t)ne);
	memcpy(dst + 16, table, 16);
	memcpy(dst + pos, tail, tail_len);
	*stored = pos + tail_len;
	return 0;
}

int qv_codec_frame_encode(struct qv_codec_ctx *ctx, enum qv_codec_dtype dtype, int level,
			  const void *src, size_t raw_len, void *dst, size_t dst_cap,
			  void *scratch, size_t scratch_len, struct qv_codec_frame *out)
{
	size_t cap, n = 0, elem, planes;
	uint32_t method;
	int rc = -EINVAL;

	if (ctx == NULL || out == NULL || (raw_len > 0 && (src == NULL || dst == NULL)))
		goto out;
	memset(out, 0, sizeof(*out));
	if (raw_len > QV_CODEC_FRAME_MAX) {
		rc = QV_ELIMIT;
		goto out;
	}
	if (level == 0)
		level = QV_CODEC_LEVEL_DEFAULT;
	if (level < QV_CODEC_LEVEL_MIN || level > QV_CODEC_LEVEL_MAX)
		goto out;
	if (dst_cap < qv_codec_frame_bound(raw_len))
		goto out;
	switch (dtype) {
	case QV_CODEC_PLAIN: method = QV_CODEC_METHOD_ZSTD; break;
	case QV_CODEC_BF16: method = QV_CODEC_METHOD_BF16_PLANES; break;
	case QV_CODEC_F16: method = QV_CODEC_METHOD_F16_PLANES; break;
	case QV_CODEC_F32: method = QV_CODEC_METHOD_F32_PLANES; break;
	default: goto out;
	}
	plane_shape(method, &elem, &planes);
	if (planes > 0 && (scratch == NULL || scratch_len < qv_codec_scratch_bytes(raw_len)))
		goto out;

	out->raw_bytes = (uint32_t)raw_len;
	out->xxh3 = XXH3_64bits(src, raw_len);
	cap = raw_len - (raw_len >> CODEC_MIN_SAVING_SHIFT);
	if (raw_len < 64) /* not worth a zstd frame header */
		goto store_raw;
	if (planes == 0) {
		rc = zstd_into(ctx, level, src, raw_len, dst, cap - 1, &n);
	} else {
		size_t vals = raw_len / elem;
		const unsigned char *tail = (const unsigned char *)src + vals * elem;

		switch (method) {
		case QV_CODEC_METHOD_BF16_PLANES: split_bf16(src, vals, scratch); break;
		case QV_CODEC_METHOD_F16_PLANES: split_f16(src, vals, scratch); break;
		default: split_f32(src, vals, scratch); break;
		}
		rc = 1;
		if (method == QV_CODEC_METHOD_BF16_PLANES) {
			rc = encode_bf16_pairs(ctx, level, scratch, vals, tail, raw_len - vals * elem,
					       (unsigned char *)scratch + 2 * vals, dst, cap - 1, &n);
			if (rc == 0)
				method = QV_CODEC_METHOD_BF16_PAIRS;
		}
		if (rc == 1)
			rc = encode_planes(ctx, level, scratch, vals, planes, tail,
					   raw_len - vals * elem, dst, cap - 1, &n);
	}
	if (rc == 1)
		goto store_raw;
	if (rc != 0)
		goto out;
	out->stored_bytes = (uint32_t)n;
	out->method = method;
	goto out;

store_raw:
	if (raw_len > 0)
		memcpy(dst, src, raw_len);
	out->stored_bytes = (uint32_t)raw_len;
	out->method = QV_CODEC_METHOD_RAW;
	rc = 0;
out:
	return rc;
}

static int method_valid(uint32_t method)
{
	return method <= QV_CODEC_METHOD_BF16_PAIRS;
}

/* A planes method is only valid for its dtype. */
static int method_fits(uint32_t method, uint32_t dtype)
{
	switch (method) {
	case QV_CODEC_METHOD_BF16_PLANES:
	case QV_CODEC_METHOD_BF16_PAIRS: return dtype == QV_CODEC_BF16;
	case QV_CODEC_METHOD_F16_PLANES: return dtype == QV_CODEC_F16;
	case QV_CODEC_METHOD_F32_PLANES: return dtype == QV_CODEC_F32;
	default: return 1;
	}
}

/* Decompresses a stored plane of plen bytes into want bytes at out, or
 * points at it when it is raw (plen == want): 0 or QV_ECORRUPT. */
static int load_plane(struct qv_codec_ctx *ctx, const unsigned char *src, size_t plen,
		      size_t want, unsigned char *out, const unsigned char **plane)
{
	if (plen == want) {
		*plane = src;
		return 0;
	}
	if (plen > want)
		return QV_ECORRUPT;
	size_t r = ZSTD_decompressDCtx(ctx->dctx, out, want, src, plen);
	if (ZSTD_isError(r) || r != want)
		return QV_ECORRUPT;
	*plane = out;
	return 0;
}

/* Copies the tail bytes after the values to dst, adds them to the running
 * hash and sets *digest. */
static void finish_digest(struct qv_codec_ctx *ctx, const unsigned char *tail, size_t tail_len,
			  unsigned char *dst, uint64_t *digest)
{
	memcpy(dst, tail, tail_len);
	hash_update(ctx, dst, tail_len);
	*digest = XXH3_64bits_digest(ctx->xxh);
}

/* Decodes a planes frame (stored bytes src[0..len)) into dst and sets
 * *digest to the XXH3 of dst: QV_ECORRUPT on any inconsistency. */
static int decode_planes(struct qv_codec_ctx *ctx, uint32_t method, const unsigned char *src,
			 size_t len, unsigned char *dst, size_t raw_len, unsigned char *scratch,
			 uint64_t *digest)
{
	const unsigned char *pl[PLANES_MAX];
	size_t elem, planes, n, pos;

	plane_shape(method, &elem, &planes);
	n = raw_len / elem;
	pos = 4 * planes;
	if (len < pos)
		return QV_ECORRUPT;
	for (size_t p = 0; p < planes; p++) {
		size_t plen = get32(src + 4 * p);

		if (plen > len - pos || load_plane(ctx, src + pos, plen, n, scratch + p * n, &pl[p]))
			return QV_ECORRUPT;
		pos += plen;
	}
	if (len - pos != raw_len - n * elem)
		return QV_ECORRUPT;
	/* Merge a piece, hash it while it is in cache: one pass over dst
	 * instead of two (XXH3's streaming form gives the one-shot digest). */
	if (XXH3_64bits_reset(ctx->xxh) != XXH_OK)
		return -EINVAL;
	size_t ready = 0;
	for (size_t i = 0; i < n; i += MERGE_PIECE_VALUES) {
		size_t m = n - i < MERGE_PIECE_VALUES ? n - i : MERGE_PIECE_VALUES;
		const unsigned char *at[PLANES_MAX];

		prepare_upto(ctx, dst, &ready, (i + m) * elem, raw_len);

		for (size_t p = 0; p < planes; p++)
			at[p] = pl[p] + i;
		switch (method) {
		case QV_CODEC_METHOD_BF16_PLANES: merge_bf16(at, m, dst + i * elem, ctx->avx2); break;
		case QV_CODEC_METHOD_F16_PLANES: merge_f16(at, m, dst + i * elem); break;
		default: merge_f32(at, m, dst + i * elem); break;
		}
		hash_update(ctx, dst + i * elem, m * elem);
	}
	prepare_upto(ctx, dst, &ready, raw_len, raw_len); /* the tail */
	finish_digest(ctx, src + pos, len - pos, dst + n * elem, digest);
	return 0;
}

#ifdef CODEC_AVX2
/* The vector form of a pairs piece of m values: codes (two a byte, low
 * nibble first, at pk) become exponents by a byte shuffle through tab, and
 * are merged with sm into BF16 values at dst. Escapes (code 15) are patched
 * in value order from esc[*ei..ne). Returns the values done, a multiple of
 * 32, or SIZE_MAX when the escapes run out. */
__attribute__((target("avx2"))) static size_t pairs_piece_avx2(const unsigned char *pk,
							       const unsigned char *sm, size_t m,
							       const unsigned char tab[16],
							       const unsigned char *esc, size_t ne,
							       size_t *ei, unsigned char *dst)
{
	const __m128i t = _mm_loadu_si128((const __m128i *)tab), nib = _mm_set1_epi8(0x0f),
		      escape = _mm_set1_epi8(PAIRS_ESCAPE);
	size_t k = 0;

	for (; k + 32 <= m; k += 32) {
		__m128i b = _mm_loadu_si128((const __m128i *)(pk + k / 2));
		__m128i lo = _mm_and_si128(b, nib), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
		__m128i c0 = _mm_unpacklo_epi8(lo, hi), c1 = _mm_unpackhi_epi8(lo, hi);
		__m128i e0 = _mm_shuffle_epi8(t, c0), e1 = _mm_shuffle_epi8(t, c1);
		uint32_t esc_at = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(c0, escape)) |
				  (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(c1, escape)) << 16;

		if (esc_at != 0) {
			unsigned char e[32];

			_mm_storeu_si128((__m128i *)e, e0);
			_mm_storeu_si128((__m128i *)(e + 16), e1);
			for (; esc_at != 0; esc_at &= esc_at - 1) {
				if (*ei == ne)
					return SIZE_MAX;
				e[__builtin_ctz(esc_at)] = esc[(*ei)++];
			}
			e0 = _mm_loadu_si128((const __m128i *)e);
			e1 = _mm_loadu_si128((const __m128i *)(e + 16));
		}
		merge16_avx2(e0, _mm_loadu_si128((const __m128i *)(sm + k)), dst + 2 * k);
		merge16_avx2(e1, _mm_loadu_si128((const __m128i *)(sm + k + 16)), dst + 2 * k + 32);
	}
	return k;
}
#endif

/* Parses a BF16 pairs frame of raw_len bytes (stored: src[0, len)) into
 * *out, decoding compressed planes into scratch (codes, then sign+mantissa,
 * then escapes; room for scratch_len bytes). QV_ECORRUPT on any
 * inconsistency, -EINVAL if scratch is short. */
static int pairs_parse(struct qv_codec_ctx *ctx, const unsigned char *src, size_t len,
		       size_t raw_len, unsigned char *scratch, size_t scratch_len,
		       struct qv_codec_pairs *out)
{
	size_t n = raw_len / 2, n_pk = (n + 1) / 2, pos = PAIRS_HEAD, ne;
	int rc;

	if (len < PAIRS_HEAD)
		return QV_ECORRUPT;
	size_t plen[3] = { get32(src), get32(src + 4), get32(src + 8) };
	ne = get32(src + 12);
	unsigned count = src[16 + 15];
	/* the encoder keeps the plain planes past n >> ESCAPES_MAX_SHIFT escapes */
	if (count > PAIRS_CODES || ne > n >> ESCAPES_MAX_SHIFT || plen[0] > len - pos ||
	    plen[1] > len - pos - plen[0] || plen[2] > len - pos - plen[0] - plen[1] ||
	    len - pos - plen[0] - plen[1] - plen[2] != raw_len - 2 * n)
		return QV_ECORRUPT;
	if (scratch_len < n_pk + n + ne)
		return -EINVAL;
	rc = load_plane(ctx, src + pos, plen[0], n_pk, scratch, &out->codes);
	if (rc == 0)
		rc = load_plane(ctx, src + pos + plen[0], plen[1], n, scratch + n_pk, &out->sm);
	if (rc == 0)
		rc = load_plane(ctx, src + pos + plen[0] + plen[1], plen[2], ne, scratch + n_pk + n,
				&out->esc);
	if (rc != 0)
		return rc;
	pos += plen[0] + plen[1] + plen[2];
	out->values = n;
	out->escapes = ne;
	/* Codes past `count` are not written by the encoder: they decode to 0
	 * and the frame's checksum refuses the result. */
	memset(out->table, 0, sizeof(out->table));
	memcpy(out->table, src + 16, count);
	out->has_tail = pos < len;
	out->tail = out->has_tail ? src[pos] : 0;
	return 0;
}

int qv_codec_pairs_planes(struct qv_codec_ctx *ctx, const struct qv_codec_frame *f,
			  const void *src, size_t src_len, void *scratch, size_t scratch_len,
			  struct qv_codec_pairs *out)
{
	if (ctx == NULL || f == NULL || out == NULL || f->method != QV_CODEC_METHOD_BF16_PAIRS ||
	    src == NULL || src_len < f->stored_bytes || scratch == NULL)
		return -EINVAL;
	if (f->raw_bytes > QV_CODEC_FRAME_MAX || f->stored_bytes > f->raw_bytes)
		return QV_ECORRUPT;
	return pairs_parse(ctx, src, f->stored_bytes, f->raw_bytes, scratch, scratch_len, out);
}

/* Decodes a BF16 pairs frame into dst and sets *digest: QV_ECORRUPT on any
 * inconsistency (a code with no exponent, escapes short or left over). */
static int decode_bf16_pairs(struct qv_codec_ctx *ctx, const unsigned char *src, size_t len,
			     unsigned char *dst, size_t raw_len, unsigned char *scratch,
			     uint64_t *digest)
{
	struct qv_codec_pairs pp;
	uint16_t lut[256];
	size_t ei = 0;
	int rc = pairs_parse(ctx, src, len, raw_len, scratch, qv_codec_scratch_bytes(raw_len), &pp);

	if (rc != 0)
		return rc;
	const size_t n = pp.values, ne = pp.escapes;
	const unsigned char *pk = pp.codes, *sm = pp.sm, *esc = pp.esc, *tab = pp.table;
	/* a byte -> its two exponents; a byte with an escape (nibble 15) takes
	 * the slow path */
	for (unsigned b = 0; b < 256; b++)
		lut[b] = (uint16_t)(tab[b & 15] | tab[b >> 4] << 8);
	if (XXH3_64bits_reset(ctx->xxh) != XXH_OK)
		return -EINVAL;
	size_t ready = 0;
	for (size_t i = 0; i < n; i += MERGE_PIECE_VALUES) {
		size_t m = n - i < MERGE_PIECE_VALUES ? n - i : MERGE_PIECE_VALUES, k = 0, k0;
		const unsigned char *p = pk + i / 2;
		unsigned char *e = ctx->ebuf;

		prepare_upto(ctx, dst, &ready, 2 * (i + m), raw_len);

#ifdef CODEC_AVX2
		if (ctx->avx2) {
			k = pairs_piece_avx2(p, sm + i, m, tab, esc, ne, &ei, dst + 2 * i);
			if (k == SIZE_MAX)
				return QV_ECORRUPT;
		}
#endif
		k0 = k; /* the rest: exponents into e, then merged */
		for (; k + 16 <= m; k += 16) {
			uint64_t w;

			memcpy(&w, p + k / 2, 8);
			if ((w & w >> 1 & w >> 2 & w >> 3 & 0x1111111111111111ull) == 0) {
				for (unsigned j = 0; j < 8; j++) /* no escape among the 16 */
					memcpy(e + k + 2 * j, &lut[(w >> (8 * j)) & 0xff], 2);
				continue;
			}
			for (unsigned j = 0; j < 8; j++) {
				unsigned b = (unsigned)(w >> (8 * j)) & 0xff;

				memcpy(e + k + 2 * j, &lut[b], 2);
				if ((b & 0x0f) == PAIRS_ESCAPE) {
					if (ei == ne)
						return QV_ECORRUPT;
					e[k + 2 * j] = esc[ei++];
				}
				if (b >> 4 == PAIRS_ESCAPE) {
					if (ei == ne)
						return QV_ECORRUPT;
					e[k + 2 * j + 1] = esc[ei++];
				}
			}
		}
		for (; k < m; k++) {
			unsigned c = (p[k / 2] >> (4 * (k & 1))) & 15;

			if (c != PAIRS_ESCAPE)
				e[k] = tab[c];
			else if (ei < ne)
				e[k] = esc[ei++];
			else
				return QV_ECORRUPT;
		}
		const unsigned char *at[2] = { e + k0, sm + i + k0 };
		merge_bf16(at, m - k0, dst + 2 * (i + k0), ctx->avx2);
		hash_update(ctx, dst + 2 * i, 2 * m);
	}
	if (ei != ne)
		return QV_ECORRUPT;
	prepare_upto(ctx, dst, &ready, raw_len, raw_len); /* the tail byte */
	finish_digest(ctx, &pp.tail, pp.has_tail ? 1 : 0, dst + 2 * n, digest);
	return 0;
}

int qv_codec_frame_decode(struct qv_codec_ctx *ctx, const struct qv_codec_frame *f,
			  const void *src, size_t src_len, void *dst, size_t dst_len,
			  void *scratch, size_t scratch_len)
{
	size_t raw_len, n;
	uint64_t digest = 0;
	int rc = -EINVAL;

	if (ctx == NULL || f == NULL)
		goto out;
	raw_len = f->raw_bytes;
	if (src_len < f->stored_bytes || dst_len < raw_len ||
	    (f->stored_bytes > 0 && src == NULL) || (raw_len > 0 && dst == NULL))
		goto out;
	if (f->method >= QV_CODEC_METHOD_BF16_PLANES && f->method <= QV_CODEC_METHOD_BF16_PAIRS &&
	    (scratch == NULL || scratch_len < qv_codec_scratch_bytes(raw_len)))
		goto out;
	rc = QV_ECORRUPT;
	if (raw_len > QV_CODEC_FRAME_MAX || f->stored_bytes > raw_len || !method_valid(f->method))
		goto out;
	if (f->method == QV_CODEC_METHOD_RAW || f->method == QV_CODEC_METHOD_ZSTD) {
		size_t ready = 0; /* the planes methods call it piece by piece */

		prepare_upto(ctx, dst, &ready, raw_len, raw_len);
	}
	switch (f->method) {
	case QV_CODEC_METHOD_RAW:
		if (f->stored_bytes != raw_len)
			goto out;
		if (raw_len > 0)
			memcpy(dst, src, raw_len);
		digest = XXH3_64bits(dst, raw_len);
		break;
	case QV_CODEC_METHOD_ZSTD:
		n = ZSTD_decompressDCtx(ctx->dctx, dst, raw_len, src, f->stored_bytes);
		if (ZSTD_isError(n) || n != raw_len)
			goto out;
		digest = XXH3_64bits(dst, raw_len);
		break;
	case QV_CODEC_METHOD_BF16_PAIRS:
		rc = decode_bf16_pairs(ctx, src, f->stored_bytes, dst, raw_len, scratch, &digest);
		if (rc != 0)
			goto out;
		break;
	default:
		rc = decode_planes(ctx, f->method, src, f->stored_bytes, dst, raw_len, scratch,
				   &digest);
		if (rc != 0)
			goto out;
		break;
	}
	rc = QV_ECORRUPT;
	if (digest != f->xxh3)
		goto out;
	rc = 0;
out:
	return rc;
}

/* ---- the file ---- */

/* Frames a shard of raw_size bytes has in frames of frame_bytes. */
static uint64_t frame_count_of(uint64_t raw_size, uint32_t frame_bytes)
{
	return raw_size / frame_bytes + (raw_size % frame_bytes != 0);
}

static int frame_bytes_valid(uint32_t frame_bytes)
{
	return frame_bytes >= QV_CODEC_FRAME_MIN && frame_bytes <= QV_CODEC_FRAME_MAX &&
	       frame_bytes % QV_CODEC_ALIGN == 0;
}

/* Where the first frame starts: after the header and table, aligned. */
static uint64_t data_offset_of(uint64_t frame_count)
{
	return qv_codec_align(QV_CODEC_HEADER_BYTES + frame_count * QV_CODEC_ENTRY_BYTES);
}

uint64_t qv_codec_file_bound(uint64_t raw_size, uint32_t frame_bytes)
{
	uint64_t count;

	if (!frame_bytes_valid(frame_bytes))
		return 0;
	count = frame_count_of(raw_size, frame_bytes);
	if (count > CODEC_FRAMES_MAX)
		return 0;
	/* every frame padded to QV_CODEC_ALIGN; frame_bytes is a multiple */
	return data_offset_of(count) + count * (uint64_t)frame_bytes;
}

/* Whole-buffer I/O: pread/pwrite until done. A read that hits EOF returns
 * the bytes it got in *got. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
	size_t done = 0;
	int rc = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
out:
	*got = done;
	return rc;
}

int qv__tier_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	int rc = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out;
		}
		if (n == 0) {
			rc = -EIO;
			goto out;
		}
		done += (size_t)n;
	}
out:
	return rc;
}

/* Serializes the header and table into buf (data_offset_of(count) bytes,
 * zero-filled past the table). */
static void header_pack(unsigned char *buf, enum qv_codec_dtype dtype, int level,
			uint64_t raw_size, uint32_t frame_bytes, uint32_t count,
			const struct qv_codec_frame *frames)
{
	size_t table_end = QV_CODEC_HEADER_BYTES + (size_t)count * QV_CODEC_ENTRY_BYTES;

	memset(buf, 0, (size_t)data_offset_of(count));
	memcpy(buf, codec_magic, 8);
	put32(buf + 16, QV_CODEC_VERSION);
	put32(buf + 20, (uint32_t)dtype);
	put64(buf + 24, raw_size);
	put32(buf + 32, frame_bytes);
	put32(buf + 36, count);
	put32(buf + 40, (uint32_t)level);
	for (uint32_t i = 0; i < count; i++) {
		unsigned char *e = buf + QV_CODEC_HEADER_BYTES + (size_t)i * QV_CODEC_ENTRY_BYTES;
		put64(e, frames[i].offset);
		put32(e + 8, frames[i].stored_bytes);
		put32(e + 12, frames[i].raw_bytes);
		put32(e + 16, frames[i].method);
		put64(e + 24, frames[i].xxh3);
	}
	put64(buf + 8, XXH3_64bits(buf + 16, table_end - 16));
}

/* ---- frames on several threads ----
 *
 * Frames are independent. A round of up to CODEC_THREADS_MAX frames is read
 * and encoded (or decoded) at once, a thread a frame, while the caller
 * writes (or hands on) the round before it in order: two sets of buffers
 * take turns. The encoder's caller alone writes the output and reports
 * progress; the decoder hands each frame to an any-order callback on its
 * thread first. A thread per frame costs tens of microseconds against
 * milliseconds of work. */
#define CODEC_THREADS_MAX 4u

struct par_slot {
	int (*run)(void *job);
	void *job;
	int rc;
	pthread_t th;
	int started;
};

/* One round: k jobs, each on a thread of its own where one starts (else on
 * the caller's, at the join). */
struct par_round {
	struct par_slot s[CODEC_THREADS_MAX];
	unsigned k;
};

static void *par_thread(void *arg)
{
	struct par_slot *x = arg;
	x->rc = x->run(x->job);
	return NULL;
}

static void par_join(struct par_round *r)
{
	for (unsigned j = 0; j < r->k; j++) {
		struct par_slot *x = &r->s[j];
		if (x->started)
			pthread_join(x->th, NULL);
		else
			x->rc = x->run(x->job);
		x->started = 0;
	}
}

/* Threads to work with: the cores this process may run on, at most
 * CODEC_THREADS_MAX, at most one a frame. */
static unsigned par_threads(uint64_t frames)
{
	cpu_set_t set;
	long cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set)
								   : sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t n = cores < 1 ? 1 : (uint64_t)cores;
	if (n > CODEC_THREADS_MAX)
		n = CODEC_THREADS_MAX;
	if (n > frames)
		n = frames;
	return n < 1 ? 1u : (unsigned)n;
}

/* Gets up to `want` workers ready in each of two sets (worker i and
 * CODEC_THREADS_MAX + i alike), fewer if memory is short: init(ctx, k)
 * readies worker k, fini(ctx, k) frees it (also one init failed on).
 * Returns how many a set has (at least 1), or init's error. */
static int par_workers(unsigned want, int (*init)(void *ctx, unsigned k),
		       void (*fini)(void *ctx, unsigned k), void *ctx)
{
	unsigned n = 0;

	for (; n < want; n++) {
		int a = init(ctx, n);
		int b = a == 0 ? init(ctx, CODEC_THREADS_MAX + n) : a;
		if (a != 0 || b != 0) {
			fini(ctx, n);
			if (a == 0)
				fini(ctx, CODEC_THREADS_MAX + n);
			if (n == 0)
				return a ? a : b;
			break; /* fewer threads, then */
		}
	}
	return (int)n;
}

/* Frees the workers par_workers() got ready (n in each set). */
static void par_workers_free(int n, void (*fini)(void *ctx, unsigned k), void *ctx)
{
	for (int j = 0; j < n; j++) {
		fini(ctx, (unsigned)j);
		fini(ctx, CODEC_THREADS_MAX + (unsigned)j);
	}
}

typedef void (*par_setup_fn)(void *ctx, unsigned set, unsigned j, uint64_t job,
			     struct par_slot *slot);

/* Starts jobs first.. (at most nw, none past count) as a round on worker
 * set `set`; returns how many. */
static unsigned par_round_start(struct par_round *r, unsigned set, uint64_t first, uint64_t count,
				unsigned nw, par_setup_fn setup, void *ctx)
{
	unsigned k = count - first < nw ? (unsigned)(count - first) : nw;
	r->k = k;
	for (unsigned j = 0; j < k; j++) {
		struct par_slot *x = &r->s[j];
		setup(ctx, set, j, first + j, x);
		x->rc = 0;
		x->started = pthread_create(&x->th, NULL, par_thread, x) == 0;
	}
	return k;
}

/* Runs jobs 0..count-1 in rounds of nw, on two sets of workers that take
 * turns: while one round runs, take() hands on the round before it, in
 * order, on the calling thread. setup(ctx, set, j, job, slot) readies slot
 * j of a round on worker set `set` for job `job` (slot->run, slot->job);
 * take(ctx, set, j, rc) gets the job's result (rc, what it returned) and
 * returns nonzero to stop. Returns 0 or what take returned (once the round
 * still running has ended). */
static int par_pipeline(uint64_t count, unsigned nw, par_setup_fn setup,
			int (*take)(void *ctx, unsigned set, unsigned j, int rc), void *ctx)
{
	struct par_round round[2];
	unsigned set = 0; /* the round to hand on next */
	uint64_t first;
	int rc = 0;

	if (count == 0)
		return 0;
	first = par_round_start(&round[0], 0, 0, count, nw, setup, ctx);
	for (;;) {
		struct par_round *r = &round[set];
		int next = -1;

		par_join(r);
		if (first < count) {
			next = (int)(set ^ 1u);
			first += par_round_start(&round[next], (unsigned)next, first, count, nw,
						 setup, ctx);
		}
		for (unsigned j = 0; j < r->k && rc == 0; j++)
			rc = take(ctx, set, j, r->s[j].rc);
		if (rc != 0 || next < 0) {
			if (next >= 0)
				par_join(&round[next]);
			return rc;
		}
		set = (unsigned)next;
	}
}

/* ---- encoding a file ----
 *
 * Buffers: about 3.5 frames a thread and set, 4.5 for mixed dtypes (2 MiB
 * frames, 4 threads: about 56 MiB), and a zstd context each. */

struct enc_common {
	int in_fd;
	uint64_t raw_size;
	uint32_t frame_bytes;
	enum qv_codec_dtype dtype;
	int level, mixed;
	size_t scratch_len;
};

struct enc_worker {
	const struct enc_common *c;
	struct qv_codec_ctx *ctx;
	unsigned char *in, *outb, *alt, *scratch;
	uint64_t frame;                /* the job: this frame ... */
	size_t len;
	struct qv_codec_frame f;       /* ... and what came of it: f, in *result */
	unsigned char *result;
};

static void enc_worker_free(struct enc_worker *w)
{
	qv_codec_ctx_destroy(w->ctx);
	free(w->in);
	free(w->outb);
	free(w->alt);
	free(w->scratch);
}

static int enc_worker_init(struct enc_worker *w, const struct enc_common *c)
{
	memset(w, 0, sizeof(*w));
	w->c = c;
	w->in = malloc(c->frame_bytes);
	w->scratch = malloc(c->scratch_len);
	if (w->in == NULL || w->scratch == NULL ||
	    posix_memalign((void **)&w->outb, QV_CODEC_ALIGN, c->frame_bytes) != 0 ||
	    (c->mixed && posix_memalign((void **)&w->alt, QV_CODEC_ALIGN, c->frame_bytes) != 0))
		return -ENOMEM;
	return qv_codec_ctx_create(&w->ctx);
}

/* Reads and encodes frame w->frame into w->f and *w->result. */
static int enc_frame(void *job)
{
	struct enc_worker *w = job;
	const struct enc_common *c = w->c;
	size_t got;
	int rc = pread_full(c->in_fd, w->in, w->len, w->frame * c->frame_bytes, &got);

	if (rc != 0)
		return rc;
	if (got != w->len)
		return QV_ECHANGED;
	rc = qv_codec_frame_encode(w->ctx, c->dtype, c->level, w->in, w->len, w->outb,
				   c->frame_bytes, w->scratch, c->scratch_len, &w->f);
	if (rc != 0)
		return rc;
	w->result = w->outb;
	if (c->mixed) {
		/* tensors of other dtypes share the frame: plain zstd may do
		 * better than the planes of the dtype that dominates */
		struct qv_codec_frame z;
		rc = qv_codec_frame_encode(w->ctx, QV_CODEC_PLAIN, c->level, w->in, w->len, w->alt,
					   c->frame_bytes, w->scratch, c->scratch_len, &z);
		if (rc != 0)
			return rc;
		if (z.stored_bytes < w->f.stored_bytes) {
			w->f = z;
			w->result = w->alt;
		}
	}
	return 0;
}

/* An encoding: its workers, and where the frames it has written stand. */
struct enc_run {
	const struct enc_common *c;
	struct enc_worker w[2 * CODEC_THREADS_MAX];
	struct qv_codec_frame *frames;
	uint64_t pos; /* where the next frame goes in the file */
	int out_fd;
	qv_codec_progress_fn progress;
	void *progress_arg;
};

static int enc_init(void *ctx, unsigned k)
{
	struct enc_run *e = ctx;
	return enc_worker_init(&e->w[k], e->c);
}

static void enc_fini(void *ctx, unsigned k)
{
	struct enc_run *e = ctx;
	enc_worker_free(&e->w[k]);
}

static void enc_setup(void *ctx, unsigned set, unsigned j, uint64_t frame, struct par_slot *slot)
{
	struct enc_run *e = ctx;
	struct enc_worker *w = &e->w[set * CODEC_THREADS_MAX + j];
	uint64_t raw_off = frame * e->c->frame_bytes;

	w->frame = frame;
	w->len = e->c->raw_size - raw_off < e->c->frame_bytes ? (size_t)(e->c->raw_size - raw_off)
							      : e->c->frame_bytes;
	slot->run = enc_frame;
	slot->job = w;
}

/* Writes an encoded frame, padded, after the one before it. */
static int enc_take(void *ctx, unsigned set, unsigned j, int rc)
{
	struct enc_run *e = ctx;
	struct enc_worker *x = &e->w[set * CODEC_THREADS_MAX + j];
	size_t padded;

	if (rc != 0)
		return rc;
	e->frames[x->frame] = x->f;
	e->frames[x->frame].offset = e->pos;
	padded = (size_t)qv_codec_align(x->f.stored_bytes);
	memset(x->result + x->f.stored_bytes, 0, padded - x->f.stored_bytes);
	rc = qv__tier_pwrite_full(e->out_fd, x->result, padded, e->pos);
	if (rc != 0)
		return rc;
	e->pos += padded;
	if (e->progress)
		e->progress(e->progress_arg, x->frame * e->c->frame_bytes + x->len);
	return 0;
}

int qv_codec_encode_fd(int in_fd, uint64_t raw_size, int dtype_flags, int level,
		       uint32_t frame_bytes, int out_fd, uint64_t *stored_size,
		       qv_codec_progress_fn progress, void *progress_arg)
{
	struct enc_run e = {.out_fd = out_fd, .progress = progress, .progress_arg = progress_arg};
	unsigned char *head = NULL;
	int nw = 0;
	uint64_t count;
	int rc = -EINVAL;
	int mixed = (dtype_flags & QV_CODEC_MIXED) != 0;
	enum qv_codec_dtype dtype = (enum qv_codec_dtype)(dtype_flags & ~QV_CODEC_MIXED);

	if (stored_size == NULL || in_fd < 0 || out_fd < 0)
		goto out;
	mixed &= dtype != QV_CODEC_PLAIN; /* plain zstd is what it would try */
	*stored_size = 0;
	if (frame_bytes == 0)
		frame_bytes = QV_CODEC_FRAME_DEFAULT;
	if (level == 0)
		level = QV_CODEC_LEVEL_DEFAULT;
	if (!frame_bytes_valid(frame_bytes) || (unsigned)dtype > QV_CODEC_F32 ||
	    level < QV_CODEC_LEVEL_MIN || level > QV_CODEC_LEVEL_MAX)
		goto out;
	count = frame_count_of(raw_size, frame_bytes);
	if (count > CODEC_FRAMES_MAX) {
		rc = QV_ELIMIT;
		goto out;
	}

	const struct enc_common c = {in_fd, raw_size, frame_bytes, dtype, level, mixed,
				     qv_codec_scratch_bytes(frame_bytes)};
	e.c = &c;
	rc = -ENOMEM;
	e.frames = calloc(count > 0 ? count : 1, sizeof(*e.frames));
	head = malloc(data_offset_of(count));
	if (e.frames == NULL || head == NULL)
		goto out;
	rc = nw = par_workers(par_threads(count), enc_init, enc_fini, &e);
	if (rc < 0) {
		nw = 0;
		goto out;
	}
	e.pos = data_offset_of(count);
	rc = par_pipeline(count, (unsigned)nw, enc_setup, enc_take, &e);
	if (rc != 0)
		goto out;
	header_pack(head, dtype, level, raw_size, frame_bytes, (uint32_t)count, e.frames);
	rc = qv__tier_pwrite_full(out_fd, head, (size_t)data_offset_of(count), 0);
	if (rc != 0)
		goto out;
	if (ftruncate(out_fd, (off_t)e.pos) != 0) {
		rc = -errno;
		goto out;
	}
	*stored_size = e.pos;
	rc = 0;
out:
	par_workers_free(nw, enc_fini, &e);
	free(e.frames);
	free(head);
	return rc;
}

int qv_codec_header_read(int fd, uint64_t file_size, struct qv_codec_header **out)
{
	unsigned char fixed[QV_CODEC_HEADER_BYTES];
	unsigned char *table = NULL;
	struct qv_codec_header *hdr = NULL;
	uint64_t raw_size, count, table_len, pos, left;
	uint32_t frame_bytes, dtype;
	size_t got;
	int rc = -EINVAL;

	if (out == NULL || fd < 0)
		goto out;
	*out = NULL;
	rc = QV_EFORMAT;
	if (file_size < QV_CODEC_HEADER_BYTES)
		goto out;
	rc = pread_full(fd, fixed, sizeof(fixed), 0, &got);
	if (rc != 0)
		goto out;
	rc = QV_EFORMAT;
	if (got != sizeof(fixed) || memcmp(fixed, codec_magic, 8) != 0 ||
	    get32(fixed + 16) != QV_CODEC_VERSION)
		goto out;

	/* Every field is checked against the layout and file size before it
	 * sizes anything: the table is allocated only once its length is
	 * known to fit in the file. */
	rc = QV_ECORRUPT;
	dtype = get32(fixed + 20);
	raw_size = get64(fixed + 24);
	frame_bytes = get32(fixed + 32);
	count = get32(fixed + 36);
	for (size_t i = 44; i < QV_CODEC_HEADER_BYTES; i++)
		if (fixed[i] != 0)
			goto out;
	if (dtype > QV_CODEC_F32 || !frame_bytes_valid(frame_bytes) ||
	    count != frame_count_of(raw_size, frame_bytes) || count > CODEC_FRAMES_MAX)
		goto out;
	table_len = QV_CODEC_HEADER_BYTES + count * QV_CODEC_ENTRY_BYTES;
	if (data_offset_of(count) > file_size)
		goto out;

	rc = -ENOMEM;
	table = malloc((size_t)table_len);
	hdr = malloc(sizeof(*hdr) + (size_t)count * sizeof(hdr->frames[0]));
	if (table == NULL || hdr == NULL)
		goto out;
	memcpy(table, fixed, sizeof(fixed));
	rc = pread_full(fd, table + sizeof(fixed), (size_t)table_len - sizeof(fixed),
			sizeof(fixed), &got);
	if (rc != 0)
		goto out;
	rc = QV_ECORRUPT;
	if (got != table_len - sizeof(fixed) ||
	    XXH3_64bits(table + 16, (size_t)table_len - 16) != get64(table + 8))
		goto out;

	hdr->version = QV_CODEC_VERSION;
	hdr->dtype = (enum qv_codec_dtype)dtype;
	hdr->level = (int)(int32_t)get32(fixed + 40);
	hdr->frame_bytes = frame_bytes;
	hdr->frame_count = (uint32_t)count;
	hdr->raw_size = raw_size;
	pos = data_offset_of(count);
	left = raw_size;
	for (uint64_t i = 0; i < count; i++) {
		const unsigned char *e = table + QV_CODEC_HEADER_BYTES + i * QV_CODEC_ENTRY_BYTES;
		struct qv_codec_frame *f = &hdr->frames[i];
		uint32_t want_raw = left < frame_bytes ? (uint32_t)left : frame_bytes;
		uint32_t m;

		f->offset = get64(e);
		f->stored_bytes = get32(e + 8);
		f->raw_bytes = get32(e + 12);
		f->method = get32(e + 16);
		f->xxh3 = get64(e + 24);
		m = f->method;
		/* canonical layout only: each frame right after the previous
		 * one's aligned end, and nothing past the file */
		if (f->offset != pos || f->raw_bytes != want_raw || get32(e + 20) != 0 ||
		    f->stored_bytes == 0 || f->stored_bytes > f->raw_bytes || !method_valid(m) ||
		    (m == QV_CODEC_METHOD_RAW) != (f->stored_bytes == f->raw_bytes) ||
		    (m >= QV_CODEC_METHOD_BF16_PLANES && !method_fits(m, dtype)) ||
		    f->stored_bytes > file_size - pos)
			goto out;
		pos += qv_codec_align(f->stored_bytes);
		left -= want_raw;
	}
	if (pos != file_size)
		goto out;
	hdr->file_size = file_size;
	*out = hdr;
	hdr = NULL;
	rc = 0;
out:
	free(table);
	free(hdr);
	return rc;
}

void qv_codec_header_destroy(struct qv_codec_header *hdr)
{
	free(hdr);
}

/* ---- decoding a file ----
 *
 * Buffers: about 3.5 frames a thread and set (2 MiB frames, 4 threads: about
 * 56 MiB), and a zstd context each. */

struct dec_common {
	int fd;
	const struct qv_codec_header *hdr;
	qv_codec_frame_fn any_order;
	void *arg;
};

struct dec_worker {
	const struct dec_common *c;
	struct qv_codec_ctx *ctx;
	unsigned char *in, *raw, *scratch;
	size_t scratch_len;
	uint32_t frame; /* the job */
};

static void dec_worker_free(struct dec_worker *w)
{
	qv_codec_ctx_destroy(w->ctx);
	free(w->in);
	free(w->raw);
	free(w->scratch);
}

static int dec_worker_init(struct dec_worker *w, const struct dec_common *c)
{
	memset(w, 0, sizeof(*w));
	w->c = c;
	w->scratch_len = qv_codec_scratch_bytes(c->hdr->frame_bytes);
	w->in = malloc(c->hdr->frame_bytes);
	w->scratch = malloc(w->scratch_len);
	if (w->in == NULL || w->scratch == NULL ||
	    posix_memalign((void **)&w->raw, QV_CODEC_ALIGN, c->hdr->frame_bytes) != 0)
		return -ENOMEM;
	return qv_codec_ctx_create(&w->ctx);
}

/* Reads and decodes frame w->frame into w->raw, and hands it to any_order. */
static int dec_frame(void *job)
{
	struct dec_worker *w = job;
	const struct qv_codec_header *hdr = w->c->hdr;
	const struct qv_codec_frame *f = &hdr->frames[w->frame];
	uint64_t raw_off = (uint64_t)w->frame * hdr->frame_bytes;
	size_t got;
	int rc;

	if (f->stored_bytes > hdr->frame_bytes || f->raw_bytes > hdr->frame_bytes ||
	    raw_off + f->raw_bytes > hdr->raw_size)
		return QV_ECORRUPT;
	rc = pread_full(w->c->fd, w->in, f->stored_bytes, f->offset, &got);
	if (rc != 0)
		return rc;
	if (got != f->stored_bytes)
		return QV_ECORRUPT;
	rc = qv_codec_frame_decode(w->ctx, f, w->in, got, w->raw, hdr->frame_bytes, w->scratch,
				   w->scratch_len);
	if (rc == 0 && w->c->any_order)
		rc = w->c->any_order(w->c->arg, raw_off, w->raw, f->raw_bytes);
	return rc;
}

/* A decoding: its workers, and where its frames go in order. */
struct dec_run {
	const struct dec_common *c;
	struct dec_worker w[2 * CODEC_THREADS_MAX];
	qv_codec_frame_fn in_order;
};

static int dec_init(void *ctx, unsigned k)
{
	struct dec_run *e = ctx;
	return dec_worker_init(&e->w[k], e->c);
}

static void dec_fini(void *ctx, unsigned k)
{
	struct dec_run *e = ctx;
	dec_worker_free(&e->w[k]);
}

static void dec_setup(void *ctx, unsigned set, unsigned j, uint64_t frame, struct par_slot *slot)
{
	struct dec_run *e = ctx;
	struct dec_worker *w = &e->w[set * CODEC_THREADS_MAX + j];

	w->frame = (uint32_t)frame;
	slot->run = dec_frame;
	slot->job = w;
}

static int dec_take(void *ctx, unsigned set, unsigned j, int rc)
{
	struct dec_run *e = ctx;
	const struct dec_worker *x = &e->w[set * CODEC_THREADS_MAX + j];
	const struct qv_codec_header *hdr = e->c->hdr;

	if (rc == 0 && e->in_order)
		rc = e->in_order(e->c->arg, (uint64_t)x->frame * hdr->frame_bytes, x->raw,
				 hdr->frames[x->frame].raw_bytes);
	return rc;
}

int qv_codec_decode_each(int fd, const struct qv_codec_header *hdr, qv_codec_frame_fn any_order,
			 qv_codec_frame_fn in_order, void *arg)
{
	const struct dec_common c = {fd, hdr, any_order, arg};
	struct dec_run e = {.c = &c, .in_order = in_order};
	int nw, rc;

	if (fd < 0 || hdr == NULL)
		return -EINVAL;
	if (hdr->frame_count == 0)
		return 0;
	nw = par_workers(par_threads(hdr->frame_count), dec_init, dec_fini, &e);
	if (nw < 0)
		return nw;
	rc = par_pipeline(hdr->frame_count, (unsigned)nw, dec_setup, dec_take, &e);
	par_workers_free(nw, dec_fini, &e);
	return rc;
}

struct into_buffer {
	unsigned char *dst;
};

static int copy_frame(void *arg, uint64_t raw_off, const void *raw, size_t len)
{
	struct into_buffer *b = arg;
	memcpy(b->dst + raw_off, raw, len);
	return 0;
}

int qv_codec_decode_fd(int fd, const struct qv_codec_header *hdr, void *dst, size_t dst_len)
{
	struct into_buffer b = {dst};

	if (fd < 0 || hdr == NULL || dst_len < hdr->raw_size || (hdr->raw_size > 0 && dst == NULL))
		return -EINVAL;
	return qv_codec_decode_each(fd, hdr, copy_frame, NULL, &b);
}
