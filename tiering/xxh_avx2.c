/* XXH3 streaming updates built for AVX2: the same hash as codec.c's inline
 * SSE2 build (xxHash's vector paths give identical results), twice the width.
 * This file alone is compiled with -mavx2; codec.c calls it only where the
 * CPU has AVX2 (qv_codec_ctx_set_simd). */
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) /* as CODEC_AVX2 in codec.c */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "xxh_avx2.h"

void qv__xxh3_update_avx2(XXH3_state_t *st, const void *p, size_t n)
{
	(void)XXH3_64bits_update(st, p, n); /* XXH_ERROR only for a NULL state */
}
#else
typedef int qv__xxh_avx2_unused; /* no AVX2 on this architecture */
#endif
