/* Shared pieces of the quiver command line. */
#ifndef QV_CLI_H
#define QV_CLI_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "quiver/quiver.h"

/* Exit codes (documented in --help and docs/CLI.md). */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_DAMAGE = 3 };

/* Where results and errors go: stdout/stderr, or, in the daemon, the
 * calling thread's buffers (cli_set_streams). */
FILE *cli_outf(void);
FILE *cli_errf(void);
void cli_set_streams(FILE *out, FILE *err);
int cli_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "quiver: <msg>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the store's message for rc (or qv_strerror) and returns the exit code. */
int cli_fail(qv_store *s, int rc);

/* "1.23 GB" into buf. */
const char *cli_bytes(uint64_t n, char *buf, size_t len);
/* ISO-8601 UTC time of ns into buf. */
const char *cli_time(int64_t ns, char *buf, size_t len);

/* Progress bar on stderr, only when stderr is a TTY. */
typedef struct cli_progress {
	const char *what;
	double t0, last;
	int active;
	int tty;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *what);
void cli_progress_cb(void *arg, uint64_t done, uint64_t total);
void cli_progress_end(cli_progress *p);
/* Clears the line of the bar being drawn, if any, before a message. */
void cli_progress_pause(void);

/* Splits "model@ref" into model and ref (ref NULL if absent). buf holds the copy. */
int cli_split_ref(const char *arg, char *buf, size_t len, const char **model, const char **ref);

/* Prints j (and frees it) as indented JSON on stdout. j == NULL (a failed
 * json_pack) prints an error and makes the command fail (cli_output_failed). */
void cli_json_print(json_t *j);
/* 1 if the current command's output failed (and resets it). */
int cli_output_failed(void);

double cli_now(void);

/* "4M", "512k", "64GiB", "1048576" -> bytes; -1 on junk. */
long long cli_parse_size(const char *arg);

#endif
