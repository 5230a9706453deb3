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
 * on to the real function. Not part of quiver: a test tool. */
#undef _FILE_OFFSET_BITS /* open and open64 are two functions to wrap here */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int held;

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
