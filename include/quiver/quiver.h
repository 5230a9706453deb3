/* Quiver: the public C API. Include this one header. */
#ifndef QUIVER_QUIVER_H
#define QUIVER_QUIVER_H
#include "quiver/error.h"
#include "quiver/store.h"
#include "quiver/load.h"
#include "quiver/gpu.h"
#include "quiver/tier.h"
#include "quiver/client.h"

/* The version of libquiver.so in use, such as "0.1.0" (the project's
 * version, as `quiver --version` prints it). */
const char *qv_version_string(void);
#endif
