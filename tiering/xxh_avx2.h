/* XXH3 built for AVX2 (xxh_avx2.c): call only where the CPU has AVX2. The
 * state is the caller's (XXH_INLINE_ALL gives each file the same layout). */
#ifndef QV_XXH_AVX2_H
#define QV_XXH_AVX2_H

#include <stddef.h>

void qv__xxh3_update_avx2(XXH3_state_t *st, const void *p, size_t n);

#endif
