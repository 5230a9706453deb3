/* Output helpers of the quiver command: errors, sizes, times, the progress
 * bar and JSON. Errors are one line on stderr; results go to stdout. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "daemon.h" /* cli_in_daemon */

/* Writes s with control characters escaped, so an error stays one line and
 * a name cannot drive the terminal. */
static void put_escaped(const char *s, FILE *f)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
}

static _Thread_local FILE *tl_out, *tl_err;

FILE *cli_outf(void)
{
	return tl_out ? tl_out : stdout;
}

FILE *cli_errf(void)
{
	return tl_err ? tl_err : stderr;
}

void cli_set_streams(FILE *out, FILE *err)
{
	tl_out = out;
	tl_err = err;
}

int cli_printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vfprintf(cli_outf(), fmt, ap);
	va_end(ap);
	return n;
}

void cli_error(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fputs("quiver: ", cli_errf());
	put_escaped(buf, cli_errf());
	fputc('\n', cli_errf());
}

int cli_fail(qv_store *s, int rc)
{
	const char *msg = s ? qv_store_errmsg(s) : "";
	cli_error("%s", *msg ? msg : qv_strerror(rc));
	return rc == QV_ECORRUPT ? EXIT_DAMAGE : EXIT_FAIL;
}

const char *cli_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
	double v = (double)n;
	int u = 0;
	while (v >= 1000 && u < 5) {
		v /= 1000;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, len, "%.2f %s", v, units[u]);
	return buf;
}

const char *cli_time(int64_t ns, char *buf, size_t len)
{
	time_t t = (time_t)(ns / 1000000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

double cli_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The bar on the terminal now, if any: a message must clear its line. */
static cli_progress *g_bar;

void cli_progress_pause(void)
{
	if (g_bar && g_bar->active) {
		fputs("\r\033[K", stderr);
		g_bar->active = 0; /* drawn again at its next step */
		g_bar->last = 0;
	}
}

void cli_progress_start(cli_progress *p, const char *what)
{
	memset(p, 0, sizeof(*p));
	p->what = what;
	p->t0 = cli_now();
	p->tty = !cli_in_daemon() && isatty(STDERR_FILENO); /* quiverd's stderr is its log */
}

void cli_progress_cb(void *arg, uint64_t done, uint64_t total)
{
	cli_progress *p = arg;
	if (!p->tty || total == 0)
		return;
	double now = cli_now();
	if (now - p->last < 0.1 && done < total)
		return;
	p->last = now;
	p->active = 1;
	g_bar = p;
	const int width = 24; /* the line fits 80 columns */
	int fill = (int)((double)done / (double)total * width);
	char bar[64], a[32], b[32];
	for (int i = 0; i < width; i++)
		bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
	bar[width] = 0;
	double el = now - p->t0;
	fprintf(stderr, "\r%-10s [%s] %3d%%  %s / %s  %.2f GB/s ", p->what, bar,
	        (int)(100.0 * (double)done / (double)total), cli_bytes(done, a, sizeof(a)),
	        cli_bytes(total, b, sizeof(b)), el > 0 ? (double)done / el / 1e9 : 0.0);
	fflush(stderr);
}

void cli_progress_end(cli_progress *p)
{
	if (p->active)
		fputs("\r\033[K", stderr);
	p->active = 0;
	if (g_bar == p)
		g_bar = NULL;
}

int cli_split_ref(const char *arg, char *buf, size_t len, const char **model, const char **ref)
{
	if (!arg || strlen(arg) >= len)
		return -1;
	strcpy(buf, arg);
	char *at = strchr(buf, '@');
	*model = buf;
	*ref = NULL;
	if (at) {
		*at = 0;
		*ref = at + 1;
		if (!**ref)
			return -1;
	}
	return **model ? 0 : -1;
}

static _Thread_local int tl_output_failed;

int cli_output_failed(void)
{
	int f = tl_output_failed;
	tl_output_failed = 0;
	return f;
}

void cli_json_print(json_t *j)
{
	if (!j) {
		/* a result that cannot be encoded must not look like success */
		cli_error("cannot encode the result as JSON");
		tl_output_failed = 1;
		return;
	}
	char *s = json_dumps(j, JSON_INDENT(2));
	if (s) {
		fputs(s, cli_outf());
		fputc('\n', cli_outf());
		free(s);
	}
	json_decref(j);
}

long long cli_parse_size(const char *arg)
{
	char *end;
	errno = 0;
	long long v = strtoll(arg, &end, 10);
	if (end == arg || v < 0 || errno == ERANGE)
		return -1;
	int shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if (v > LLONG_MAX >> shift)
		return -1; /* too large to count in bytes */
	v <<= shift;
	if (shift && *end == 'i') /* "Gi", "GiB" */
		end++;
	if (*end == 'B')
		end++;
	return *end ? -1 : v;
}
