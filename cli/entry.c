/* The quiver executable's entry point: runs a command here, or, for the
 * commands that change the store, in quiverd when one serves the root (so
 * the daemon's tier policy and DRAM tier see every change). QUIVER_NO_DAEMON=1
 * forces local execution. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "quiver/client.h"

int cli_main(int argc, char **argv);

static const char *const forwarded[] = {"publish", "activate", "rollback", "alias",
                                        "rm",      "gc",       "demote",   "promote",
                                        "pin",     "unpin",    "tier",     NULL};

/* Whether arg names the long option `name` as getopt_long reads it: the
 * whole name or an abbreviation ("--mess" for "--message"), "=VALUE" or not.
 * *inline_value: the value after '=', else NULL. */
static int names_option(const char *arg, const char *name, const char **inline_value)
{
	const char *eq = strchr(arg, '=');
	size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
	*inline_value = eq ? eq + 1 : NULL;
	return n >= 3 && strncmp(arg, "--", 2) == 0 && strncmp(name, arg, n) == 0;
}

/* Whether arg is one of publish's options that take the next word as value. */
static int publish_value(const char *arg)
{
	static const char *const valued[] = {"--version", "--alias", "--message", "--root", NULL};
	const char *inl;
	for (const char *const *v = valued; *v; v++)
		if (names_option(arg, *v, &inl) && !inl)
			return 1;
	return 0;
}

/* Forwards argv[cmd..] to the daemon; returns the exit code, or -1 to run
 * locally (no daemon). */
static int forward(int argc, char **argv, int cmd, const char *root)
{
	qv_client *c;
	if (qv_client_connect(root, &c) != 0)
		return -1;
	json_t *jargv = json_array();
	int positional = 0;
	for (int i = cmd; i < argc; i++) {
		const char *a = argv[i];
		char abs[PATH_MAX];
		/* publish's PATH is read by the daemon: make it absolute */
		if (i > cmd && a[0] != '-' && strcmp(argv[cmd], "publish") == 0) {
			if (!publish_value(argv[i - 1]) && ++positional == 2 && realpath(a, abs))
				a = abs;
		}
		/* JSON holds UTF-8 only: a command with another argument runs
		 * here (where it is checked), never with that argument dropped */
		if (json_array_append_new(jargv, json_string(a)) != 0) {
			json_decref(jargv);
			qv_client_close(c);
			return -1;
		}
	}
	json_t *req = json_pack("{s:s, s:o}", "op", "cli", "argv", jargv);
	char *txt = req ? json_dumps(req, JSON_COMPACT) : NULL, *resp = NULL;
	json_decref(req);
	int rc = txt ? qv_client_call(c, txt, &resp, NULL) : -ENOMEM;
	free(txt);
	qv_client_close(c);
	if (rc) {
		cli_error("quiverd did not answer: %s", qv_strerror(rc));
		return EXIT_FAIL;
	}
	json_error_t jerr;
	json_t *j = json_loads(resp, 0, &jerr);
	qv_client_free(resp);
	int ok = 0, code = EXIT_FAIL;
	const char *out = "", *err = "", *msg = "bad reply";
	if (j && json_unpack(j, "{s:b}", "ok", &ok) == 0 && ok &&
	    json_unpack(j, "{s:i, s:s, s:s}", "exit", &code, "stdout", &out, "stderr", &err) == 0) {
		fputs(out, stdout);
		fputs(err, stderr);
	} else {
		if (j && json_is_string(json_object_get(j, "error")))
			msg = json_string_value(json_object_get(j, "error"));
		cli_error("quiverd: %s", msg);
		code = EXIT_FAIL;
	}
	json_decref(j);
	return code;
}

/* If argv[k] is --root (or an abbreviation, with "=DIR" or DIR next), its
 * value; else NULL. */
static const char *root_option(int argc, char **argv, int k)
{
	const char *inl;
	if (!names_option(argv[k], "--root", &inl))
		return NULL;
	return inl ? inl : k + 1 < argc ? argv[k + 1] : NULL;
}

/* Writes out what is buffered on stdout; a failure (a full disk, a closed
 * pipe) must not exit 0. */
static int stdout_flushed(int rc)
{
	if ((fflush(stdout) != 0 || ferror(stdout)) && rc == EXIT_OK) {
		cli_error("cannot write the output: %s", strerror(errno));
		return EXIT_FAIL;
	}
	return rc;
}

/* A writer that must wait for another's lock says so, rather than hang
 * without a word. */
static void wait_notice(void *arg, const char *what)
{
	(void)arg;
	cli_progress_pause();
	fprintf(stderr, "quiver: waiting for %s: another quiver process holds it\n", what);
}

int main(int argc, char **argv)
{
	const char *root = NULL;
	qv_store_set_wait_notice(NULL, wait_notice, NULL);
	int i = 1;
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) {
			root = argv[i + 1];
			i += 2;
		} else if (strncmp(argv[i], "--root=", 7) == 0) {
			root = argv[i] + 7;
			i++;
		} else {
			break;
		}
	}
	const char *no = getenv("QUIVER_NO_DAEMON");
	if (i < argc && !(no && *no && strcmp(no, "0") != 0)) {
		int fwd = 0, help = 0;
		for (const char *const *p = forwarded; *p; p++)
			fwd |= strcmp(*p, argv[i]) == 0;
		for (int k = i + 1; k < argc; k++) {
			help |= strcmp(argv[k], "-h") == 0 || strcmp(argv[k], "--help") == 0;
			const char *r = root_option(argc, argv, k); /* the daemon of that root */
			if (r)
				root = r;
		}
		if (fwd && !help) {
			int rc = forward(argc, argv, i, root);
			if (rc >= 0)
				return stdout_flushed(rc);
		}
	}
	return stdout_flushed(cli_main(argc, argv));
}
