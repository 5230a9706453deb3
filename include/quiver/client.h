/* Quiver client: talking to quiverd, the node daemon.
 *
 * One daemon serves one store root on a Unix socket ROOT/quiverd.sock. A
 * request and its response are JSON objects in length-prefixed frames
 * (protocol version 1, see docs/DAEMON.md); a response may carry one file
 * descriptor (SCM_RIGHTS), e.g. the memfd of a host load.
 *
 * Requests ({"op": ..., ...}):
 *   ping                                  -> {version, pid, root, protocol}
 *   cli      argv: [...]                  -> {exit, stdout, stderr}   a quiver command run by the daemon
 *   warm     model, ref                   -> {seconds}
 *   cool     model, ref                   -> {seconds}
 *   dram                                  -> {capacity, used, entries: [...]}
 *   load_host  model, ref                 -> {model, version, bytes, tensors: [...], source,
 *                                         seconds} + memfd (map it private or read-only: from
 *                                         the DRAM tier it is the daemon's own sealed copy)
 *   size     model, ref                   -> {model, version, bytes}: what a load needs
 *   load_cuda  model, ref, device, ipc_handle (128 hex digits), bytes
 *                                         -> {model, version, bytes, tensors: [...], source,
 *                                         seconds, open_seconds, copy_seconds}; the
 *                                         allocation's size comes from the driver, and a
 *                                         version that does not fit is refused. The daemon
 *                                         keeps the allocation mapped for later loads over
 *                                         the same connection (swaps) until
 *   release_cuda  ipc_handle              -> {closed}: send it before freeing the allocation
 *                                         (closing the connection releases every mapping it
 *                                         made; a mapping keeps freed device memory alive)
 * Every response has "ok" (bool); a failure has "error" (one line) and
 * "code" (a quiver error code). Tensors: {name, dtype, shape, offset, bytes}. */
#ifndef QUIVER_CLIENT_H
#define QUIVER_CLIENT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_client qv_client;

/* Connects to the daemon of root (NULL: $QUIVER_ROOT, else the default).
 * Returns 0, -ENOENT or -ECONNREFUSED when no daemon serves root, or another
 * -errno. */
int qv_client_connect(const char *root, qv_client **out);

/* Sends request (a JSON object) and waits for the response, returned in
 * *response (malloc'd, NUL-terminated; free with qv_client_free). If the
 * response carries a descriptor and fd_out is not NULL, *fd_out receives it
 * (else it is closed); *fd_out is -1 when none came. Returns 0 when a
 * response arrived (check its "ok"), or -errno / QV_EFORMAT. */
int qv_client_call(qv_client *c, const char *request, char **response, int *fd_out);

void qv_client_free(void *p);

/* NULL is a no-op. */
void qv_client_close(qv_client *c);

#ifdef __cplusplus
}
#endif
#endif
