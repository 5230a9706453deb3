/* The daemon protocol: length-prefixed JSON frames over a Unix socket.
 *
 * A frame is a 16-byte header then the payload:
 *   0  u32 magic "QVD1" (little-endian 0x31445651)
 *   4  u16 protocol version (1)
 *   6  u16 flags (bit 0: a file descriptor travels with the frame)
 *   8  u32 payload length (bounded by the receiver: 1 MiB for requests,
 *      256 MiB for responses)
 *  12  u32 reserved, zero
 * The payload is one JSON object. Parsing is bounded and total: every field
 * is checked before anything is allocated, so malformed, truncated and
 * oversized frames get an error, never a crash (tests/daemon has a libFuzzer
 * target over qv__proto_header_parse and qv__proto_request_parse). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto.h"

int qv__proto_header_parse(const uint8_t *h, size_t n, size_t max, uint32_t *len, int *has_fd)
{
	if (n < QV_PROTO_HEADER)
		return QV_EFORMAT;
	uint32_t magic = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
	                 (uint32_t)h[3] << 24;
	uint16_t version = (uint16_t)(h[4] | h[5] << 8), flags = (uint16_t)(h[6] | h[7] << 8);
	uint32_t l = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 |
	             (uint32_t)h[11] << 24;
	uint32_t rsv = (uint32_t)h[12] | (uint32_t)h[13] << 8 | (uint32_t)h[14] << 16 |
	               (uint32_t)h[15] << 24;
	if (magic != QV_PROTO_MAGIC || rsv != 0 || (flags & ~1u))
		return QV_EFORMAT;
	if (version != QV_PROTO_VERSION)
		return QV_ESCHEMA;
	if (l > max)
		return QV_ELIMIT;
	*len = l;
	*has_fd = flags & 1;
	return 0;
}

json_t *qv__proto_request_parse(const char *buf, size_t len, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		snprintf(err, errlen, "request is not valid JSON: %s", jerr.text);
		return NULL;
	}
	json_t *op = json_object_get(j, "op");
	if (!json_is_object(j) || !json_is_string(op) || json_string_length(op) > 32) {
		snprintf(err, errlen, "request must be a JSON object with a string \"op\"");
		json_decref(j);
		return NULL;
	}
	return j;
}

static int write_all(int fd, const void *buf, size_t n, int pass_fd)
{
	const char *p = buf;
	int first = 1;
	while (n) {
		struct iovec iov = {(void *)p, n};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		char cbuf[CMSG_SPACE(sizeof(int))];
		if (first && pass_fd >= 0) {
			memset(cbuf, 0, sizeof(cbuf));
			msg.msg_control = cbuf;
			msg.msg_controllen = sizeof(cbuf);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
		}
		ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		first = 0;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int qv__proto_send(int fd, const char *json, size_t len, int pass_fd)
{
	uint8_t h[QV_PROTO_HEADER] = {0};
	uint32_t magic = QV_PROTO_MAGIC, l = (uint32_t)len;
	for (int i = 0; i < 4; i++) {
		h[i] = (uint8_t)(magic >> (8 * i));
		h[8 + i] = (uint8_t)(l >> (8 * i));
	}
	h[4] = QV_PROTO_VERSION;
	h[6] = pass_fd >= 0 ? 1 : 0;
	char *frame = malloc(QV_PROTO_HEADER + len);
	if (!frame)
		return -ENOMEM;
	memcpy(frame, h, QV_PROTO_HEADER);
	memcpy(frame + QV_PROTO_HEADER, json, len);
	int rc = write_all(fd, frame, QV_PROTO_HEADER + len, pass_fd);
	free(frame);
	return rc;
}

/* Descriptors one recvmsg takes in: a frame carries at most one, and a peer
 * that sends more has every one of them closed here, none left open. */
#define RECV_FDS_MAX 16

/* Reads exactly n bytes, collecting a passed descriptor if one comes (the
 * first; any others are closed). QV_EFORMAT if the kernel had to drop
 * descriptors that did not fit (MSG_CTRUNC). */
static int read_all(int fd, void *buf, size_t n, int *got_fd)
{
	char *p = buf;
	while (n) {
		struct iovec iov = {p, n};
		union {
			char buf[CMSG_SPACE(RECV_FDS_MAX * sizeof(int))];
			struct cmsghdr align;
		} cbuf;
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
		                     .msg_controllen = sizeof(cbuf.buf)};
		ssize_t r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int f;
				memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (*got_fd >= 0)
					close(f); /* one descriptor per frame */
				else
					*got_fd = f;
			}
		}
		if (msg.msg_flags & MSG_CTRUNC)
			return QV_EFORMAT;
		if (r == 0)
			return -ECONNRESET;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int qv__proto_recv(int fd, size_t max, char **json, size_t *len, int *fd_out)
{
	uint8_t h[QV_PROTO_HEADER];
	int got_fd = -1, has_fd = 0;
	uint32_t l = 0;
	char *buf = NULL;
	*json = NULL;
	int rc = read_all(fd, h, sizeof(h), &got_fd);
	if (rc == 0)
		rc = qv__proto_header_parse(h, sizeof(h), max, &l, &has_fd);
	if (rc == 0) {
		buf = malloc((size_t)l + 1);
		rc = buf ? read_all(fd, buf, l, &got_fd) : -ENOMEM;
	}
	if (rc == 0 && has_fd && got_fd < 0)
		rc = QV_EFORMAT; /* a descriptor was announced and did not come */
	if (rc) {
		free(buf);
		if (got_fd >= 0)
			close(got_fd);
		return rc;
	}
	buf[l] = 0;
	*json = buf;
	*len = l;
	if (fd_out)
		*fd_out = got_fd;
	else if (got_fd >= 0)
		close(got_fd);
	return 0;
}
