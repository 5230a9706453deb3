/* XXH3 on the widest vector path the CPU has. Callers include xxhash.h
 * with XXH_INLINE_ALL first, as codec.c and xxh_avx2.c do: every file then
 * has the same state type and layout. */
#ifndef QV_XXH_AVX2_H
#define QV_XXH_AVX2_H

#include <stddef.h>

/* The AVX2 build (xxh_avx2.c): call only where the CPU has AVX2. */
void qv__xxh3_update_avx2(XXH3_state_t *st, const void *p, size_t n);
/* The AVX2 build where the CPU has it, else SSE2 (codec.c): the same hash. */
void qv__xxh3_update(XXH3_state_t *st, const void *p, size_t n);

#endif
