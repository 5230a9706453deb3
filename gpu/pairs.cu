/* BF16 pairs frames merged and checked on the GPU (the CUDA sink's
 * put_pairs, cuda.c).
 *
 * A cold BF16 frame is a plane of 4-bit exponent codes (zstd's Huffman
 * coding, decoded on the CPU), a plane of sign+mantissa bytes and a few
 * escaped exponents (tiering/codec.c, include/quiver/codec.h). The CPU's
 * share of a cold load into GPU memory was the Huffman decode, the merge of
 * the planes into BF16 words and the XXH3 of the result; on 2 cores the
 * merge and the hash were a third of it. Here the planes are copied up as
 * they are and three kernels do the rest:
 *  - count: the escapes in each segment of SEG_VALUES values;
 *  - merge: each segment's block takes its first escape index from the
 *    counts before it, scans its tiles and writes the BF16 words;
 *  - check: XXH3-64 of the merged bytes (the long-input algorithm of
 *    xxHash 0.8, default secret, seed 0), compared with the frame table's.
 * Any inconsistency sets a bit in the frame's status word, which the host
 * reads back before the frame counts as loaded. */
#include <stdint.h>

#include <cuda_runtime.h>

#include "gpu_int.h"
#include "quiver/codec.h"

#define SEG_VALUES (64u << 10)  /* values a merge block writes */
#define MERGE_THREADS 256u
#define PER_THREAD 8u           /* values a thread merges at a time */
#define TILE (MERGE_THREADS * PER_THREAD)
#define COUNT_THREADS 256u

static_assert(QV__PAIRS_SEGMENTS_MAX * SEG_VALUES >= QV_CODEC_FRAME_MAX / 2,
              "a frame's segments fit the counts array");

/* The 4-bit codes of values [v, v + m) (m <= 8; v even), low nibble first. */
__device__ static uint32_t codes_at(const unsigned char *codes, uint64_t v, unsigned m)
{
	const unsigned char *p = codes + v / 2;
	if (m == PER_THREAD && ((uintptr_t)p & 3) == 0)
		return *(const uint32_t *)p;
	uint32_t w = 0;
	for (unsigned k = 0; k < (m + 1) / 2; k++)
		w |= (uint32_t)p[k] << (8 * k);
	return m == PER_THREAD ? w : w & ((1u << (4 * m)) - 1u); /* m < 8: no code past the end */
}

__device__ static unsigned escapes_in(uint32_t w, unsigned m)
{
	unsigned n = 0;
	for (unsigned k = 0; k < m; k++)
		n += ((w >> (4 * k)) & 15u) == 15u;
	return n;
}

/* One block per segment: counts[g] = escapes among its values. */
__global__ void __launch_bounds__(COUNT_THREADS) pairs_count(struct qv__pairs_job j)
{
	__shared__ unsigned part[COUNT_THREADS / 32];
	const uint64_t seg = (uint64_t)blockIdx.x * SEG_VALUES;
	const uint64_t end = seg + SEG_VALUES < j.values ? seg + SEG_VALUES : j.values;
	unsigned n = 0;
	for (uint64_t v = seg + (uint64_t)threadIdx.x * PER_THREAD; v < end;
	     v += COUNT_THREADS * PER_THREAD) {
		unsigned m = end - v < PER_THREAD ? (unsigned)(end - v) : PER_THREAD;
		n += escapes_in(codes_at(j.codes, v, m), m);
	}
	for (unsigned o = 16; o > 0; o >>= 1)
		n += __shfl_down_sync(0xffffffffu, n, o);
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x / 32] = n;
	__syncthreads();
	if (threadIdx.x == 0) {
		unsigned s = 0;
		for (unsigned w = 0; w < COUNT_THREADS / 32; w++)
			s += part[w];
		j.counts[blockIdx.x] = s;
	}
}

/* One block per segment: merges its values into BF16 words at j.dst. */
__global__ void __launch_bounds__(MERGE_THREADS) pairs_merge(struct qv__pairs_job j)
{
	__shared__ unsigned warp_incl[MERGE_THREADS / 32];
	__shared__ unsigned char table[16];
	const unsigned t = threadIdx.x, lane = t & 31, warp = t / 32;
	const uint64_t seg = (uint64_t)blockIdx.x * SEG_VALUES;
	const uint64_t end = seg + SEG_VALUES < j.values ? seg + SEG_VALUES : j.values;
	uint64_t base = 0; /* escapes before this tile */

	if (t < 16)
		table[t] = j.table[t];
	for (unsigned g = 0; g < blockIdx.x; g++)
		base += j.counts[g];
	if (t == 0 && blockIdx.x == 0) {
		uint64_t total = 0;
		for (unsigned g = 0; g < gridDim.x; g++)
			total += j.counts[g];
		if (total != j.escapes)
			atomicOr(j.status, QV__PAIRS_BAD_ESCAPES);
		if (j.has_tail)
			j.dst[2 * j.values] = j.tail;
	}
	__syncthreads();
	const int aligned = ((uintptr_t)j.dst & 15) == 0;
	for (uint64_t tile = seg; tile < end; tile += TILE) {
		const uint64_t v0 = tile + (uint64_t)t * PER_THREAD;
		const unsigned m = v0 >= end ? 0 : end - v0 < PER_THREAD ? (unsigned)(end - v0) : PER_THREAD;
		const uint32_t w = m ? codes_at(j.codes, v0, m) : 0;
		const unsigned cnt = escapes_in(w, m);
		unsigned incl = cnt;
		for (unsigned o = 1; o < 32; o <<= 1) {
			unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
			if (lane >= o)
				incl += y;
		}
		if (lane == 31)
			warp_incl[warp] = incl;
		__syncthreads();
		if (warp == 0) {
			unsigned x = lane < MERGE_THREADS / 32 ? warp_incl[lane] : 0;
			for (unsigned o = 1; o < MERGE_THREADS / 32; o <<= 1) {
				unsigned y = __shfl_up_sync(0xffffffffu, x, o);
				if (lane >= o)
					x += y;
			}
			if (lane < MERGE_THREADS / 32)
				warp_incl[lane] = x;
		}
		__syncthreads();
		uint64_t ei = base + (incl - cnt) + (warp ? warp_incl[warp - 1] : 0);
		const unsigned tile_escapes = warp_incl[MERGE_THREADS / 32 - 1];
		__syncthreads(); /* warp_incl is rewritten by the next tile */
		base += tile_escapes;
		if (m == 0)
			continue;
		uint16_t out[PER_THREAD];
		uint64_t sm8 = 0;
		if (m == PER_THREAD && ((uintptr_t)(j.sm + v0) & 7) == 0)
			sm8 = *(const uint64_t *)(j.sm + v0);
		else
			for (unsigned k = 0; k < m; k++)
				sm8 |= (uint64_t)j.sm[v0 + k] << (8 * k);
		for (unsigned k = 0; k < m; k++) {
			unsigned c = (w >> (4 * k)) & 15u, e;
			if (c == 15u) {
				if (ei < j.escapes) {
					e = j.esc[ei];
				} else {
					e = 0;
					atomicOr(j.status, QV__PAIRS_BAD_ESCAPES);
				}
				ei++;
			} else {
				e = table[c];
			}
			unsigned s = (unsigned)(sm8 >> (8 * k)) & 0xffu;
			out[k] = (uint16_t)(e << 7 | (s & 0x80u) << 8 | (s & 0x7fu));
		}
		unsigned char *d = j.dst + 2 * v0;
		if (m == PER_THREAD && aligned) {
			uint4 q;
			q.x = out[0] | (uint32_t)out[1] << 16;
			q.y = out[2] | (uint32_t)out[3] << 16;
			q.z = out[4] | (uint32_t)out[5] << 16;
			q.w = out[6] | (uint32_t)out[7] << 16;
			*(uint4 *)d = q;
		} else {
			for (unsigned k = 0; k < m; k++) {
				d[2 * k] = (unsigned char)out[k];
				d[2 * k + 1] = (unsigned char)(out[k] >> 8);
			}
		}
	}
}

/* ---- XXH3-64, long input ---- */

#define P32_1 0x9E3779B1u
#define P32_2 0x85EBCA77u
#define P32_3 0xC2B2AE3Du
#define P64_1 0x9E3779B185EBCA87ull
#define P64_2 0xC2B2AE3D27D4EB4Full
#define P64_3 0x165667B19E3779F9ull
#define P64_4 0x85EBCA77C2B2AE63ull
#define P64_5 0x27D4EB2F165667C5ull
#define STRIPE 64u
#define STRIPES_PER_BLOCK 16u   /* (secret 192 - 64) / 8 */
#define BLOCK_LEN (STRIPE * STRIPES_PER_BLOCK)

struct secret {
	unsigned char b[QV__XXH3_SECRET_BYTES];
};

__device__ static uint64_t rd64(const unsigned char *p)
{
	uint64_t v = 0;
	for (unsigned k = 0; k < 8; k++)
		v |= (uint64_t)p[k] << (8 * k);
	return v;
}

__device__ static uint64_t ld64(const unsigned char *p, int aligned)
{
	return aligned ? *(const uint64_t *)p : rd64(p);
}

/* One lane of XXH3_accumulate_512: lane i adds its product, and the data of
 * lane i ^ 1 (the scalar round's acc[i ^ 1] += data[i]). */
__device__ static uint64_t round_lane(uint64_t acc, uint64_t v, uint64_t key)
{
	uint64_t k = v ^ key;
	acc += __shfl_xor_sync(0xffu, v, 1);
	return acc + (uint64_t)(uint32_t)k * (k >> 32);
}

__device__ static uint64_t fold64(uint64_t a, uint64_t b)
{
	return a * b ^ __umul64hi(a, b);
}

/* Eight threads, one per accumulator lane. */
__global__ void __launch_bounds__(8) pairs_check(struct qv__pairs_job j, struct secret sec)
{
	const unsigned i = threadIdx.x;
	const uint64_t init[8] = {P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1};
	const unsigned char *p = j.dst;
	const uint64_t len = 2 * j.values + (j.has_tail ? 1 : 0);
	const int aligned = ((uintptr_t)p & 7) == 0;
	uint64_t acc = init[i], key[STRIPES_PER_BLOCK];

#pragma unroll
	for (unsigned s = 0; s < STRIPES_PER_BLOCK; s++)
		key[s] = rd64(sec.b + 8 * (s + i));
	const uint64_t skey = rd64(sec.b + QV__XXH3_SECRET_BYTES - STRIPE + 8 * i);
	const uint64_t nb_blocks = (len - 1) / BLOCK_LEN;
	uint64_t v[STRIPES_PER_BLOCK], nv[STRIPES_PER_BLOCK];

	/* The next block's loads go out before this block's rounds. nv starts
	 * as a copy of the first block, so the last block's copy moves defined
	 * values (never used). Measured (bench/sink_merge, 2 MiB frames): this
	 * form 0.73 ms a frame; loading the last block again instead of
	 * skipping it, or peeling the last block off, 1.0-1.1 ms. */
	if (nb_blocks > 0)
#pragma unroll
		for (unsigned s = 0; s < STRIPES_PER_BLOCK; s++)
			nv[s] = v[s] = ld64(p + STRIPE * s + 8 * i, aligned);
	for (uint64_t b = 0; b < nb_blocks; b++) {
		if (b + 1 < nb_blocks)
#pragma unroll
			for (unsigned s = 0; s < STRIPES_PER_BLOCK; s++)
				nv[s] = ld64(p + (b + 1) * BLOCK_LEN + STRIPE * s + 8 * i, aligned);
#pragma unroll
		for (unsigned s = 0; s < STRIPES_PER_BLOCK; s++)
			acc = round_lane(acc, v[s], key[s]);
		acc ^= acc >> 47;
		acc ^= skey;
		acc *= P32_1;
#pragma unroll
		for (unsigned s = 0; s < STRIPES_PER_BLOCK; s++)
			v[s] = nv[s];
	}
	const unsigned char *last = p + nb_blocks * BLOCK_LEN;
	const uint64_t stripes = ((len - 1) - BLOCK_LEN * nb_blocks) / STRIPE;
	for (uint64_t s = 0; s < stripes; s++)
		acc = round_lane(acc, ld64(last + STRIPE * s + 8 * i, aligned), rd64(sec.b + 8 * (s + i)));
	acc = round_lane(acc, rd64(p + len - STRIPE + 8 * i),
	                 rd64(sec.b + QV__XXH3_SECRET_BYTES - STRIPE - 7 + 8 * i));
	uint64_t a[8];
	for (unsigned k = 0; k < 8; k++)
		a[k] = __shfl_sync(0xffu, acc, k);
	if (i == 0) {
		uint64_t r = len * P64_1;
		for (unsigned k = 0; k < 4; k++)
			r += fold64(a[2 * k] ^ rd64(sec.b + 11 + 16 * k), a[2 * k + 1] ^ rd64(sec.b + 19 + 16 * k));
		r ^= r >> 37;
		r *= 0x165667919E3779F9ull;
		r ^= r >> 32;
		if (r != j.xxh3)
			atomicOr(j.status, QV__PAIRS_BAD_CHECKSUM);
	}
}

extern "C" int qv__cuda_pairs_usable(void)
{
	struct cudaFuncAttributes a;
	cudaError_t e = cudaFuncGetAttributes(&a, pairs_count);
	if (e == cudaSuccess)
		e = cudaFuncGetAttributes(&a, pairs_merge);
	if (e == cudaSuccess)
		e = cudaFuncGetAttributes(&a, pairs_check);
	return (int)e;
}

extern "C" int qv__cuda_pairs_queue(const struct qv__pairs_job *job, const unsigned char *secret,
                                    void *stream)
{
	cudaStream_t st = (cudaStream_t)stream;
	unsigned segs = (unsigned)((job->values + SEG_VALUES - 1) / SEG_VALUES);
	struct secret sec;

	if (job->values == 0 || segs > QV__PAIRS_SEGMENTS_MAX ||
	    2 * job->values + (job->has_tail ? 1 : 0) <= 240)
		return (int)cudaErrorInvalidValue; /* the callers send long frames only */
	for (unsigned k = 0; k < QV__XXH3_SECRET_BYTES; k++)
		sec.b[k] = secret[k];
	pairs_count<<<segs, COUNT_THREADS, 0, st>>>(*job);
	pairs_merge<<<segs, MERGE_THREADS, 0, st>>>(*job);
	pairs_check<<<1, 8, 0, st>>>(*job, sec);
	return (int)cudaGetLastError();
}
