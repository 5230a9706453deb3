/* libquiver.so: carries the whole public C API (include/quiver/quiver.h);
 * the static module libraries are linked in whole. This file only adds the
 * library's version query. */
#include "quiver/quiver.h"

const char *qv_version_string(void)
{
	return QUIVER_VERSION;
}
