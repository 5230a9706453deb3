/* Quiver error codes.
 *
 * Every function of the Quiver API returns int: 0 on success, -errno for an
 * operating-system failure (-ENOENT, -ENOSPC, ...), or one of the project codes
 * below, which live in a reserved negative range so they never collide with
 * errno values. qv_strerror() names both kinds. */
#ifndef QUIVER_ERROR_H
#define QUIVER_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
	QV_ECORRUPT = -1000,  /* stored bytes do not match their digest, or the index is damaged */
	QV_ENOTFOUND = -1001, /* no such model, version, alias or shard */
	QV_EEXIST = -1002,    /* the version label or alias already exists */
	QV_EFORMAT = -1003,   /* the input is not a valid safetensors file or model directory */
	QV_EAMBIGUOUS = -1004,/* a digest prefix matches more than one version */
	QV_ENAME = -1005,     /* a model, label or alias name breaks the naming rules */
	QV_EINUSE = -1006,    /* the version is current or aliased (rm without force) */
	QV_ECHANGED = -1007,  /* an input file changed while it was being published */
	QV_ESCHEMA = -1008,   /* the store was written by an incompatible version of Quiver */
	QV_ELMDB = -1009,     /* an LMDB failure with no errno equivalent */
	QV_ELIMIT = -1010,    /* an input exceeds one of Quiver's bounds */
};

/* A static, human-readable description of err (a QV_E* code or -errno).
 * Never returns NULL. */
const char *qv_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
