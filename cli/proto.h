/* The daemon protocol (see proto.c for the frame layout). */
#ifndef QV_PROTO_H
#define QV_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "quiver/error.h"

#define QV_PROTO_MAGIC 0x31445651u /* "QVD1" */
#define QV_PROTO_VERSION 1
#define QV_PROTO_HEADER 16
#define QV_PROTO_REQUEST_MAX (1u << 20)
#define QV_PROTO_RESPONSE_MAX (256u << 20)

/* Parses a frame header of n bytes: 0, QV_EFORMAT (bad magic, flags or
 * reserved bits, short), QV_ESCHEMA (other version) or QV_ELIMIT (over max). */
int qv__proto_header_parse(const uint8_t *h, size_t n, size_t max, uint32_t *len, int *has_fd);

/* Parses a request payload: a JSON object with a string "op" (NULL and a
 * message in err otherwise). The caller owns the result. */
json_t *qv__proto_request_parse(const char *buf, size_t len, char *err, size_t errlen);

/* Sends one frame (pass_fd >= 0: with that descriptor). */
int qv__proto_send(int fd, const char *json, size_t len, int pass_fd);

/* Receives one frame of at most max payload bytes: *json is malloc'd and
 * NUL-terminated; *fd_out a passed descriptor or -1 (closed if fd_out NULL). */
int qv__proto_recv(int fd, size_t max, char **json, size_t *len, int *fd_out);

#endif
