/* libFuzzer target over the cold codec (tiering/codec.c). The first input
 * byte picks one of three checks; the rest is that check's input:
 *
 * 0  round trip: byte 1 the dtype class (mod 4), then raw bytes. Encodes
 *    them as one frame, decodes it with the vector path and the portable
 *    one, and aborts unless both give the input back.
 * 1  damaged frame: byte 1 the dtype class, byte 2 a count k (mod 16), then
 *    k edits (u32 LE position, xor byte), then raw bytes. Encodes, applies
 *    the edits to the stored bytes (and, for position 0xffffffff, to the
 *    method), decodes. The decoder must refuse with QV_ECORRUPT or give the
 *    input back: never other bytes, never another error, never a read or
 *    write out of bounds (ASan).
 * 2  cold file: the rest is a whole cold file. When it is long enough to
 *    hold the table its header announces, its checksum field is set to the
 *    right value first, so the table's own checks are reached. Reads the
 *    header; if it is accepted and the shard is at most 64 MiB, decodes the
 *    file. Only 0 and the documented errors may come back.
 *
 * Built with -fsanitize=fuzzer when the compiler is clang (fuzz_codec);
 * fuzz_codec_replay feeds every file of corpus/ to the same function under
 * any compiler, and CTest runs it on the seeds fuzz_codec_seeds writes. */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "quiver/codec.h"
#include "quiver/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct qv_codec_ctx *ctx;

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Encodes raw[0..n) as dtype into a new buffer *stored; 0 or abort. */
static void encode(enum qv_codec_dtype dtype, const uint8_t *raw, size_t n, uint8_t **stored,
		   struct qv_codec_frame *f)
{
	size_t cap = qv_codec_frame_bound(n), sl = qv_codec_scratch_bytes(n);
	uint8_t *dst = malloc(cap ? cap : 1), *scratch = malloc(sl);

	if (!dst || !scratch || qv_codec_frame_encode(ctx, dtype, 0, raw, n, dst, cap, scratch, sl, f))
		abort();
	if (f->raw_bytes != n || f->stored_bytes > n || f->xxh3 != XXH3_64bits(raw, n))
		abort();
	free(scratch);
	*stored = dst;
}

/* Decodes f's stored bytes with the vector path on or off into an
 * exact-size buffer; returns the decoder's result, *out the bytes. */
static int decode(const struct qv_codec_frame *f, const uint8_t *stored, int simd, uint8_t **out)
{
	size_t n = f->raw_bytes, sl = qv_codec_scratch_bytes(n);
	uint8_t *dst = malloc(n ? n : 1), *scratch = malloc(sl), *src = malloc(f->stored_bytes ? f->stored_bytes : 1);

	if (!dst || !scratch || !src)
		abort();
	memcpy(src, stored, f->stored_bytes); /* exact size: reads past it are caught */
	qv_codec_ctx_set_simd(ctx, simd);
	int rc = qv_codec_frame_decode(ctx, f, src, f->stored_bytes, dst, n, scratch, sl);
	qv_codec_ctx_set_simd(ctx, 1);
	free(src);
	free(scratch);
	*out = dst;
	return rc;
}

static void round_trip(const uint8_t *p, size_t n)
{
	if (n < 1)
		return;
	enum qv_codec_dtype dtype = (enum qv_codec_dtype)(p[0] % 4);
	const uint8_t *raw = p + 1;
	size_t len = n - 1;
	struct qv_codec_frame f;
	uint8_t *stored, *out;

	encode(dtype, raw, len, &stored, &f);
	for (int simd = 0; simd <= 1; simd++) {
		if (decode(&f, stored, simd, &out) != 0 || memcmp(out, raw, len) != 0)
			abort();
		free(out);
	}
	free(stored);
}

static void damaged(const uint8_t *p, size_t n)
{
	if (n < 2)
		return;
	enum qv_codec_dtype dtype = (enum qv_codec_dtype)(p[0] % 4);
	size_t k = p[1] % 16, at = 2 + 5 * k;
	if (n < at)
		return;
	const uint8_t *raw = p + at;
	size_t len = n - at;
	struct qv_codec_frame f;
	uint8_t *stored, *out;

	encode(dtype, raw, len, &stored, &f);
	for (size_t i = 0; i < k; i++) {
		uint32_t pos = le32(p + 2 + 5 * i);
		uint8_t x = p[2 + 5 * i + 4];

		if (pos == UINT32_MAX)
			f.method ^= x;
		else if (f.stored_bytes > 0)
			stored[pos % f.stored_bytes] ^= x;
	}
	for (int simd = 0; simd <= 1; simd++) {
		int rc = decode(&f, stored, simd, &out);

		if (rc != 0 && rc != QV_ECORRUPT)
			abort();
		if (rc == 0 && (f.raw_bytes != len || memcmp(out, raw, len) != 0))
			abort();
		free(out);
	}
	free(stored);
}

static void cold_file(const uint8_t *p, size_t n)
{
	uint8_t *buf = malloc(n ? n : 1);

	if (!buf)
		abort();
	memcpy(buf, p, n);
	/* the checksum covers [16, 64 + 32 * count): set it when that fits */
	if (n >= QV_CODEC_HEADER_BYTES) {
		uint64_t count = le32(buf + 36), end = QV_CODEC_HEADER_BYTES + 32 * count;

		if (end <= n) {
			uint64_t h = XXH3_64bits(buf + 16, (size_t)end - 16);

			for (int i = 0; i < 8; i++)
				buf[8 + i] = (uint8_t)(h >> (8 * i));
		}
	}
	int fd = memfd_create("fuzz_codec", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	for (size_t off = 0; off < n;) {
		ssize_t w = write(fd, buf + off, n - off);

		if (w <= 0)
			abort();
		off += (size_t)w;
	}
	free(buf);

	struct qv_codec_header *hdr = NULL;
	int rc = qv_codec_header_read(fd, n, &hdr);

	if (rc != 0) {
		if ((rc != QV_EFORMAT && rc != QV_ECORRUPT) || hdr != NULL)
			abort();
	} else if (hdr->file_size != n) {
		abort();
	} else if (hdr->raw_size <= (64u << 20)) {
		uint8_t *dst = malloc(hdr->raw_size ? hdr->raw_size : 1);

		if (!dst)
			abort();
		rc = qv_codec_decode_fd(fd, hdr, dst, hdr->raw_size);
		if (rc != 0 && rc != QV_ECORRUPT)
			abort();
		free(dst);
	}
	qv_codec_header_destroy(hdr);
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > QV_CODEC_FRAME_MAX)
		return 0;
	if (!ctx && qv_codec_ctx_create(&ctx) != 0)
		abort();
	switch (data[0] % 3) {
	case 0: round_trip(data + 1, size - 1); break;
	case 1: damaged(data + 1, size - 1); break;
	default: cold_file(data + 1, size - 1); break;
	}
	return 0;
}
