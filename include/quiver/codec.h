/* Quiver cold-tier codec: shards stored on the HDD tier as independent,
 * checksummed zstd frames, with float data split into byte planes first.
 *
 * A cold shard file is
 *
 *   header (64 bytes) | frame table (32 bytes per frame) | pad to 4 KiB
 *   frame 0 | pad to 4 KiB | frame 1 | pad to 4 KiB | ... | last frame | pad to 4 KiB
 *
 * All integers are little-endian. Every frame holds `frame_bytes` raw bytes
 * (the last one the remainder) and starts at a 4 KiB aligned offset, so the
 * loader can read any frame with O_DIRECT (offset, qv_codec_align(stored))
 * and decode frames on many threads at once. Each frame carries the XXH3-64
 * of its raw bytes, checked on decode; the header and table carry an XXH3-64
 * of their own, checked by qv_codec_header_read().
 *
 * Header (offsets in bytes):
 *    0  magic "QVCOLD\r\n"
 *    8  u64 XXH3-64 of bytes [16, 64 + 32 * frame_count)
 *   16  u32 format version (QV_CODEC_VERSION)
 *   20  u32 dtype class (enum qv_codec_dtype)
 *   24  u64 raw size of the shard
 *   32  u32 frame raw size (frame_bytes)
 *   36  u32 frame count = ceil(raw size / frame_bytes)
 *   40  i32 zstd level used to encode (informational)
 *   44  20 reserved bytes, zero
 * Frame table entry:
 *    0  u64 offset of the frame in the file
 *    8  u32 stored length
 *   12  u32 raw length
 *   16  u32 method (enum qv_codec_method)
 *   20  u32 reserved, zero
 *   24  u64 XXH3-64 of the raw bytes
 *
 * Plane split (methods *_PLANES): BF16 values become an exponent plane (one
 * byte per value) then a sign+mantissa plane (one byte per value: sign in bit
 * 7, mantissa in bits 0-6); F16 values an exponent plane (one byte per value)
 * then their 11-bit sign+mantissa values (sign in bit 10, mantissa in bits
 * 0-9) as a plane of low bytes and a plane of high bytes (as interleaved u16
 * they compress worse than plain zstd: see tiering/codec.c); F32 values
 * four byte planes (byte 0 of every value, then byte 1, 2, 3). Bytes past
 * the last whole value (a raw length that is not a multiple of the element
 * size) follow the planes unchanged. A planes
 * frame's stored bytes are one u32 LE stored length per plane, then each
 * plane: raw when its stored length equals the value count, else one zstd
 * frame (a plane is compressed only if that saves 1/64 of it), then the
 * tail bytes. Method ZSTD frames are one zstd frame of the raw bytes.
 *
 * BF16 pairs (method BF16_PAIRS): each exponent becomes a 4-bit code: 0-14
 * name the frame's 15 most frequent exponents, 15 an escape. Stored bytes:
 * u32 stored length of the code plane, of the sign+mantissa plane and of the
 * escape plane; u32 escape count; 16 bytes: the exponents of codes 0-14 and
 * the number of codes in use (a code at or past it is invalid); then the
 * code plane (ceil(values / 2) bytes, value 2i in the low nibble of byte i,
 * value 2i+1 in the high one, a last high nibble 0), the sign+mantissa plane
 * (as above), the escape plane (the exponents coded 15, in order; escape
 * count bytes), each raw when its stored length is its raw length, else one
 * zstd frame; then the tail byte.
 *
 * Thread safety: no function keeps global state. A struct qv_codec_ctx is
 * used by one thread at a time; make one per thread. */
#ifndef QUIVER_CODEC_H
#define QUIVER_CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QV_CODEC_VERSION 1u
#define QV_CODEC_ALIGN 4096u                 /* frame offsets and file size */
#define QV_CODEC_HEADER_BYTES 64u
#define QV_CODEC_ENTRY_BYTES 32u
#define QV_CODEC_FRAME_MIN (1u << 20)        /* bounds on frame_bytes for a shard */
#define QV_CODEC_FRAME_MAX (4u << 20)        /* also the bound on any frame's raw length */
#define QV_CODEC_FRAME_DEFAULT (2u << 20)
#define QV_CODEC_LEVEL_DEFAULT 1             /* best ratio and speed: docs/BENCHMARKS.md */
#define QV_CODEC_LEVEL_MIN 1                 /* zstd's negative levels skip entropy coding */
#define QV_CODEC_LEVEL_MAX 19

/* What a shard holds, which decides the plane split. */
enum qv_codec_dtype {
	QV_CODEC_PLAIN = 0, /* anything else: plain zstd */
	QV_CODEC_BF16 = 1,
	QV_CODEC_F16 = 2,
	QV_CODEC_F32 = 3,
};

/* OR'ed into the dtype given to qv_codec_encode_fd(): the shard packs
 * tensors of several dtypes and dtype is the one with the most bytes; each
 * frame is also encoded with plain zstd and the smaller kept (the file's
 * header records dtype alone). */
#define QV_CODEC_MIXED 0x100

/* How one frame is stored. */
enum qv_codec_method {
	QV_CODEC_METHOD_RAW = 0,         /* raw bytes (compression did not pay) */
	QV_CODEC_METHOD_ZSTD = 1,        /* zstd of the raw bytes */
	QV_CODEC_METHOD_BF16_PLANES = 2, /* zstd of the BF16 planes */
	QV_CODEC_METHOD_F16_PLANES = 3,  /* zstd of the F16 planes */
	QV_CODEC_METHOD_F32_PLANES = 4,  /* zstd of the F32 byte planes */
	QV_CODEC_METHOD_BF16_PAIRS = 5,  /* BF16 with exponents as ranked 4-bit codes, paired */
};

/* One frame table entry. */
struct qv_codec_frame {
	uint64_t offset;       /* in the file; a multiple of QV_CODEC_ALIGN */
	uint32_t stored_bytes; /* <= raw_bytes */
	uint32_t raw_bytes;    /* <= QV_CODEC_FRAME_MAX */
	uint32_t method;       /* enum qv_codec_method */
	uint64_t xxh3;         /* XXH3-64 of the raw bytes */
};

/* A parsed and validated header + frame table (qv_codec_header_read()). */
struct qv_codec_header {
	uint32_t version;
	enum qv_codec_dtype dtype;
	int level;
	uint32_t frame_bytes;
	uint32_t frame_count;
	uint64_t raw_size;
	uint64_t file_size;   /* the exact size of a valid file */
	struct qv_codec_frame frames[]; /* frame_count entries */
};

/* Per-thread compression and decompression state (zstd contexts). */
struct qv_codec_ctx;

/* The dtype class of a safetensors dtype name: "BF16", "F16", "F32";
 * anything else (including NULL) is QV_CODEC_PLAIN. */
enum qv_codec_dtype qv_codec_dtype_from_name(const char *name);

/* n rounded up to a multiple of QV_CODEC_ALIGN. */
static inline uint64_t qv_codec_align(uint64_t n)
{
	return (n + QV_CODEC_ALIGN - 1) & ~(uint64_t)(QV_CODEC_ALIGN - 1);
}

/* Creates a context in *out (set to NULL on failure). Free it with
 * qv_codec_ctx_destroy(). Returns 0 or -ENOMEM. */
int qv_codec_ctx_create(struct qv_codec_ctx **out);

/* Frees ctx; NULL is a no-op. */
void qv_codec_ctx_destroy(struct qv_codec_ctx *ctx);

/* Whether ctx decodes BF16 frames with the CPU's vector unit (AVX2) where
 * the CPU has one: on by default; off forces the portable path. Both give
 * the same bytes and refuse the same frames (the tests run both). */
void qv_codec_ctx_set_simd(struct qv_codec_ctx *ctx, int on);

/* A hook qv_codec_frame_decode() calls on ctx before it first writes each
 * range of its destination, in order, `step` bytes at a time (the last one
 * shorter): a loader faults fresh memory in there, so the kernel's zeroing
 * is still in cache when the decoder writes. NULL: none (the default). */
typedef void (*qv_codec_prepare_fn)(void *arg, void *dst, size_t len);
void qv_codec_ctx_set_prepare(struct qv_codec_ctx *ctx, qv_codec_prepare_fn fn, void *arg,
			      size_t step);

/* The capacity a frame's stored bytes need: raw_len (a frame that would not
 * shrink is stored raw, so stored <= raw always). */
size_t qv_codec_frame_bound(size_t raw_len);

/* The scratch bytes qv_codec_frame_encode() and qv_codec_frame_decode()
 * need for a frame of raw_len bytes, any dtype and method: 1.5 * raw_len + 1
 * (F16 planes take 3 bytes per 2-byte value). */
size_t qv_codec_scratch_bytes(size_t raw_len);

/* Encodes raw_len (0..QV_CODEC_FRAME_MAX) bytes at src as one frame of the
 * given dtype class at zstd `level` (QV_CODEC_LEVEL_MIN..MAX, 0 = default)
 * into dst (dst_cap >= qv_codec_frame_bound(raw_len)), using scratch
 * (scratch_len >= qv_codec_scratch_bytes(raw_len)). Fills out's
 * stored_bytes, raw_bytes, method and xxh3; sets out->offset to 0. The frame
 * is stored raw (method RAW, a copy of src) unless compression saves at
 * least 1/64 of it. src, dst and scratch must not overlap.
 * Returns 0, -EINVAL (bad argument), QV_ELIMIT (raw_len too large) or
 * -ENOMEM (zstd could not allocate its tables, first use only). */
int qv_codec_frame_encode(struct qv_codec_ctx *ctx, enum qv_codec_dtype dtype, int level,
			  const void *src, size_t raw_len, void *dst, size_t dst_cap,
			  void *scratch, size_t scratch_len, struct qv_codec_frame *out);

/* Decodes the frame described by f, whose stored bytes are the first
 * f->stored_bytes of src (src_len >= f->stored_bytes), into dst (dst_len >=
 * f->raw_bytes), using scratch (scratch_len >= qv_codec_scratch_bytes(
 * f->raw_bytes)), and checks the XXH3 of the result. f->offset is ignored.
 * Returns 0, -EINVAL (bad argument: buffers too small), or QV_ECORRUPT (the
 * entry is malformed, zstd rejects the bytes, the size or checksum is wrong);
 * dst's contents are unspecified after a failure. */
int qv_codec_frame_decode(struct qv_codec_ctx *ctx, const struct qv_codec_frame *f,
			  const void *src, size_t src_len, void *dst, size_t dst_len,
			  void *scratch, size_t scratch_len);

/* A BF16 pairs frame (QV_CODEC_METHOD_BF16_PAIRS) taken apart, for a
 * decoder elsewhere (the CUDA sink merges it on the GPU). Value i is the
 * little-endian 16-bit word exp << 7 | (sm[i] & 0x80) << 8 | (sm[i] & 0x7f),
 * where exp is table[c] for its 4-bit code c < 15 and, for c == 15, the next
 * byte of esc (escapes are taken in value order). */
struct qv_codec_pairs {
	size_t values;              /* n = raw_bytes / 2 */
	const unsigned char *codes; /* (n + 1) / 2 bytes: value 2k's code in byte k's low nibble,
	                               value 2k + 1's in its high nibble */
	const unsigned char *sm;    /* n bytes: sign (bit 7) and mantissa (bits 0-6) */
	const unsigned char *esc;   /* `escapes` exponents */
	size_t escapes;
	unsigned char table[16];    /* exponents of codes 0-14 (0 past the frame's code count) */
	unsigned char tail;         /* the last raw byte, when raw_bytes is odd */
	int has_tail;
};

/* Takes the BF16 pairs frame f apart into *out without merging it: planes
 * stored compressed are decoded into scratch (scratch_len >= f->raw_bytes
 * suffices), planes stored raw point into src. Checks the frame's layout
 * but not its checksum: whoever merges the planes must hash the result and
 * compare it with f->xxh3. Returns 0, -EINVAL (f is not a pairs frame, or a
 * buffer is short) or QV_ECORRUPT (the frame is malformed). */
int qv_codec_pairs_planes(struct qv_codec_ctx *ctx, const struct qv_codec_frame *f,
			  const void *src, size_t src_len, void *scratch, size_t scratch_len,
			  struct qv_codec_pairs *out);

/* The size of a complete cold file for raw_size bytes in frames of
 * frame_bytes, if no frame shrinks (an upper bound on stored_size below).
 * Returns 0 if frame_bytes is out of bounds or the result would overflow. */
uint64_t qv_codec_file_bound(uint64_t raw_size, uint32_t frame_bytes);

/* Told the raw bytes encoded so far, after each frame (from the calling
 * thread). */
typedef void (*qv_codec_progress_fn)(void *arg, uint64_t raw_done);

/* Reads raw_size bytes from in_fd (from offset 0, with pread) and writes the
 * complete cold file to out_fd (from offset 0, with pwrite; the file is
 * truncated to its final size, *stored_size, a multiple of QV_CODEC_ALIGN).
 * frame_bytes: QV_CODEC_FRAME_MIN..MAX, a multiple of QV_CODEC_ALIGN (0 =
 * default); level as for qv_codec_frame_encode(); dtype an enum
 * qv_codec_dtype, optionally with QV_CODEC_MIXED. Does not fsync: durability
 * is the caller's (write to a temp file, fsync, rename). Encodes on up to
 * 4 threads (the cores the process may use), each frame on one; writes,
 * in order, and reports progress on the calling thread. Allocates its
 * buffers once (about 7 * frame_bytes a thread, 9 with QV_CODEC_MIXED, plus
 * zstd's contexts and the table).
 * Returns 0, -EINVAL, QV_ELIMIT (too many frames), QV_ECHANGED (in_fd
 * ended before raw_size bytes), -ENOMEM, or -errno from pread/pwrite/
 * ftruncate. After a failure out_fd holds garbage the caller discards.
 * progress (may be NULL) is told of each frame done. */
int qv_codec_encode_fd(int in_fd, uint64_t raw_size, int dtype, int level,
		       uint32_t frame_bytes, int out_fd, uint64_t *stored_size,
		       qv_codec_progress_fn progress, void *progress_arg);

/* Reads and validates the header and frame table of the cold file open on
 * fd, whose size is file_size (untrusted bytes: every field, offset and
 * length is checked against the file size and the layout above). On success
 * *out is a new struct the caller frees with qv_codec_header_destroy().
 * Returns 0, QV_EFORMAT (not a cold file: bad magic or unknown version),
 * QV_ECORRUPT (checksum mismatch, inconsistent or out-of-bounds fields,
 * wrong file size), -ENOMEM, or -errno from pread. */
int qv_codec_header_read(int fd, uint64_t file_size, struct qv_codec_header **out);

/* Frees a header from qv_codec_header_read(); NULL is a no-op. */
void qv_codec_header_destroy(struct qv_codec_header *hdr);

/* Told a decoded frame: its offset in the shard's raw bytes, and its raw
 * bytes (valid until the call returns; their XXH3 has been checked).
 * Nonzero stops the decoding and is returned. */
typedef int (*qv_codec_frame_fn)(void *arg, uint64_t raw_off, const void *raw, size_t len);

/* Decodes the whole shard (hdr from qv_codec_header_read() on the same
 * file). Reads (pread) and decodes on up to 4 threads (the cores the
 * process may use), each frame on one. Each frame goes to any_order on the
 * thread that decoded it (the calling thread where no thread could be
 * started), as soon as it is decoded (so from several threads at once),
 * then to in_order on the calling thread, in the frames' order, while the
 * next frames decode. Either may be NULL. Allocates its
 * buffers once (about 7 * hdr->frame_bytes a thread, plus zstd's
 * contexts). Returns 0, what a callback returned, -EINVAL, QV_ECORRUPT (a
 * frame fails to decode or its checksum, or the file is shorter than its
 * table), -ENOMEM, or -errno from pread. After a frame fails (or its
 * any_order does), in_order is told of no frame from it on; any_order may
 * have been told of frames after it. */
int qv_codec_decode_each(int fd, const struct qv_codec_header *hdr, qv_codec_frame_fn any_order,
			 qv_codec_frame_fn in_order, void *arg);

/* Decodes the whole shard into dst (dst_len >= hdr->raw_size), through
 * qv_codec_decode_each(). Returns as it does, or -EINVAL. */
int qv_codec_decode_fd(int fd, const struct qv_codec_header *hdr, void *dst, size_t dst_len);

#ifdef __cplusplus
}
#endif
#endif
