/* The client side of the daemon protocol (used by the CLI and, through the
 * shared library, by the Python client). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"
#include "quiver/client.h"
#include "quiver/store.h"

struct qv_client {
	int fd;
};

static int socket_path(const char *root, char *buf, size_t len)
{
	char def[PATH_MAX];
	if (!root) {
		int rc = qv_store_default_root(def, sizeof(def));
		if (rc)
			return rc;
		root = def;
	}
	int n = snprintf(buf, len, "%s/quiverd.sock", root);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int qv_client_connect(const char *root, qv_client **out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	*out = NULL;
	int rc = socket_path(root, sa.sun_path, sizeof(sa.sun_path));
	if (rc)
		return rc;
	if (access(sa.sun_path, F_OK) != 0)
		return -ENOENT;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	qv_client *c = malloc(sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->fd = fd;
	*out = c;
	return 0;
}

int qv_client_call(qv_client *c, const char *request, char **response, int *fd_out)
{
	size_t len;
	*response = NULL;
	if (fd_out)
		*fd_out = -1;
	int rc = qv__proto_send(c->fd, request, strlen(request), -1);
	/* a daemon that refuses the connection (too many clients) writes why
	 * and closes at once; the reason may be waiting though the send failed */
	if (rc == 0 || rc == -EPIPE || rc == -ECONNRESET) {
		int rrc = qv__proto_recv(c->fd, QV_PROTO_RESPONSE_MAX, response, &len, fd_out);
		rc = rc == 0 || rrc == 0 ? rrc : rc;
	}
	return rc;
}

void qv_client_free(void *p)
{
	free(p);
}

void qv_client_close(qv_client *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c);
}
