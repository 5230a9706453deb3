/* An LD_PRELOAD shim for tier_race.sh: holds one file system call of a
 * quiver command at a known point, so that the test can run a second
 * command into that instant, every time.
 *
 *   QV_RACE_HOLD   rename, unlink or open: the call to hold
 *   QV_RACE_MATCH  a substring of the path (for rename, the source path)
 *   QV_RACE_MARK   a file the shim creates once it holds the call
 *   QV_RACE_GO     a file whose appearance releases it (polled every 10 ms;
 *                  the shim gives up waiting after 60 s)
 *
 * Only the first matching call of the process is held; every call then goes
 * on to the real function.
 *
 * It also plays a file system that takes O_DIRECT at open but refuses the
 * writes (EINVAL), as some do for some requests:
 *
 *   QV_SHIM_REFUSE_DIRECT  K: from the K-th pwrite to a file opened with
 *                          O_DIRECT on, every such pwrite fails with EINVAL
 *   QV_SHIM_REFUSED        a file that gets one line per refused write
 *
 * Not part of quiver: a test tool. */
#undef _FILE_OFFSET_BITS /* open and open64 are two functions to wrap here */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int held;

/* ---- refused direct writes ---------------------------------------------------------------- */
static atomic_long direct_writes;
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_open_fn)(const char *, int, ...);

__attribute__((constructor)) static void resolve(void)
{
	real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
	real_pwrite64 = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
	real_open_fn = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
}

/* 1 if this pwrite to fd is to be refused (and then noted in
 * QV_SHIM_REFUSED). The file's own flags say whether it is O_DIRECT,
 * however it was opened. */
static int refuse_write(int fd)
{
	const char *from = getenv("QV_SHIM_REFUSE_DIRECT"), *log = getenv("QV_SHIM_REFUSED");
	int fl;
	if (!from || (fl = fcntl(fd, F_GETFL)) < 0 || !(fl & O_DIRECT))
		return 0;
	if (atomic_fetch_add(&direct_writes, 1) + 1 < atol(from))
		return 0;
	int lfd = log && real_open_fn ? real_open_fn(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)
	                              : -1;
	if (lfd >= 0) {
		(void)!write(lfd, "refused\n", 8);
		close(lfd);
	}
	return 1;
}

#define PWRITE_SHIM(name, real)                                                          \
	ssize_t name(int fd, const void *buf, size_t n, off_t off)                           \
	{                                                                                    \
		if (refuse_write(fd)) {                                                          \
			errno = EINVAL;                                                              \
			return -1;                                                                   \
		}                                                                                \
		return real(fd, buf, n, off);                                                    \
	}
PWRITE_SHIM(pwrite, real_pwrite)
PWRITE_SHIM(pwrite64, real_pwrite64)

/* ---- held calls ------------------------------------------------------------------------------ */

static void maybe_hold(const char *call, const char *path)
{
	const char *want = getenv("QV_RACE_HOLD"), *match = getenv("QV_RACE_MATCH");
	const char *mark = getenv("QV_RACE_MARK"), *go = getenv("QV_RACE_GO");
	if (held || !want || !match || !mark || !go || strcmp(want, call) != 0 || !path ||
	    !strstr(path, match))
		return;
	held = 1;
	int (*real_open)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
	int fd = real_open ? real_open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
	if (fd >= 0)
		close(fd);
	struct stat st;
	const struct timespec tick = {0, 10 * 1000 * 1000};
	for (int i = 0; i < 6000 && stat(go, &st) != 0; i++)
		nanosleep(&tick, NULL);
}

int rename(const char *from, const char *to)
{
	static int (*real)(const char *, const char *);
	if (!real)
		real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
	maybe_hold("rename", from);
	return real(from, to);
}

int unlink(const char *path)
{
	static int (*real)(const char *);
	if (!real)
		real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
	maybe_hold("unlink", path);
	return real(path);
}

/* open with the mode argument passed on only when the flags say there is one */
#define OPEN_SHIM(name)                                                                  \
	int name(const char *path, int flags, ...)                                           \
	{                                                                                    \
		static int (*real)(const char *, int, ...);                                      \
		if (!real)                                                                       \
			real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name);             \
		maybe_hold("open", path);                                                        \
		if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {                     \
			va_list ap;                                                                  \
			va_start(ap, flags);                                                         \
			mode_t mode = (mode_t)va_arg(ap, int);                                       \
			va_end(ap);                                                                  \
			return real(path, flags, mode);                                              \
		}                                                                                \
		return real(path, flags);                                                        \
	}
OPEN_SHIM(open)
OPEN_SHIM(open64)
