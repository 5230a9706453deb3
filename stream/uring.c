/* The io_uring read backend.
 *
 * The ring's slots are registered once as fixed buffers (READ_FIXED skips the
 * per-read page pinning) and the shard files as fixed files when the process
 * may hold them all. A slot number travels as the SQE's user_data, so a
 * completion names the slot it filled. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>

#include <liburing.h>

#include "stream_int.h"

#define FIXED_FILES_MAX 32768u

struct uring_be {
	struct qv__backend base;
	struct io_uring ring;
	unsigned pending;      /* prepared, not yet submitted */
	int files_registered;
};

static int u_submit(struct qv__backend *b, unsigned slot, const struct qv__target *t, void *buf,
                    size_t len, uint64_t off)
{
	struct uring_be *u = (struct uring_be *)b;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		int rc = io_uring_submit(&u->ring);
		if (rc < 0)
			return rc;
		u->pending = 0;
		sqe = io_uring_get_sqe(&u->ring);
		if (!sqe)
			return -EBUSY;
	}
	int fd = u->files_registered && t->fixed >= 0 ? t->fixed : t->fd;
	io_uring_prep_read_fixed(sqe, fd, buf, (unsigned)len, off, (int)slot);
	if (fd == t->fixed)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, slot);
	u->pending++;
	return 0;
}

static int u_flush(struct qv__backend *b)
{
	struct uring_be *u = (struct uring_be *)b;
	while (u->pending) {
		int rc = io_uring_submit(&u->ring);
		if (rc < 0) {
			if (rc == -EINTR || rc == -EAGAIN)
				continue;
			return rc;
		}
		u->pending -= (unsigned)rc < u->pending ? (unsigned)rc : u->pending;
		if (rc == 0)
			break;
	}
	return 0;
}

static int u_reap(struct qv__backend *b, unsigned *slot, int64_t *res)
{
	struct uring_be *u = (struct uring_be *)b;
	struct io_uring_cqe *cqe;
	int rc;
	do
		rc = io_uring_wait_cqe(&u->ring, &cqe);
	while (rc == -EINTR);
	if (rc < 0)
		return rc;
	*slot = (unsigned)io_uring_cqe_get_data64(cqe);
	*res = cqe->res;
	io_uring_cqe_seen(&u->ring, cqe);
	return 0;
}

static void u_destroy(struct qv__backend *b)
{
	struct uring_be *u = (struct uring_be *)b;
	if (!u)
		return;
	io_uring_queue_exit(&u->ring); /* also drops registered buffers and files */
	free(u);
}

int qv__uring_create(unsigned qd, void *ring, size_t chunk_bytes, struct qv__target *t, size_t n,
                     struct qv__backend **out, char *err, size_t errlen)
{
	struct uring_be *u = calloc(1, sizeof(*u));
	struct iovec *iov = NULL;
	int *fds = NULL;
	int rc;
	*out = NULL;
	if (!u)
		return -ENOMEM;
	u->base = (struct qv__backend){"io_uring", u_submit, u_flush, u_reap, u_destroy};
	rc = io_uring_queue_init(qd, &u->ring, 0);
	if (rc < 0) {
		snprintf(err, errlen, "io_uring_queue_init: %s", strerror(-rc));
		free(u);
		return rc;
	}
	iov = calloc(qd, sizeof(*iov));
	if (!iov) {
		rc = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < qd; i++) {
		iov[i].iov_base = (char *)ring + (size_t)i * chunk_bytes;
		iov[i].iov_len = chunk_bytes;
	}
	rc = io_uring_register_buffers(&u->ring, iov, qd);
	if (rc < 0) {
		snprintf(err, errlen, "io_uring_register_buffers: %s", strerror(-rc));
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		t[i].fixed = -1;
	if (n > 0 && n <= FIXED_FILES_MAX) {
		fds = malloc(n * sizeof(int));
		if (!fds) {
			rc = -ENOMEM;
			goto fail;
		}
		for (size_t i = 0; i < n; i++)
			fds[i] = t[i].fd;
		/* Registration failing (e.g. a low RLIMIT_NOFILE) only costs speed. */
		if (io_uring_register_files(&u->ring, fds, (unsigned)n) == 0) {
			u->files_registered = 1;
			for (size_t i = 0; i < n; i++)
				t[i].fixed = (int)i;
		}
	}
	free(fds);
	free(iov);
	*out = &u->base;
	return 0;
fail:
	free(fds);
	free(iov);
	u_destroy(&u->base);
	return rc;
}
