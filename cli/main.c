/* The quiver command: a thin layer over the store API.
 *
 * Each command parses its own options (getopt_long, so options may follow
 * the arguments), calls one library function, and prints either a human
 * summary or, with --json, one JSON document on stdout. Errors are one line
 * on stderr. Exit codes: 0 ok, 1 failure, 2 usage, 3 integrity damage. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "daemon.h"
#include "quiver/tier.h"

#define REF_BUF (2 * QV_NAME_MAX + 16)

static const char *g_root; /* --root before the command */

struct cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;   /* first line of --help */
	const char *help;    /* the rest */
};

static const struct cmd *find_cmd(const char *name);

static int usage_error(const struct cmd *c, const char *fmt, const char *arg)
{
	char msg[1024];
	snprintf(msg, sizeof(msg), fmt, arg);
	cli_error("%s", msg);
	fprintf(cli_errf(), "usage: %s (see 'quiver %s --help')\n", c->usage, c->name);
	return EXIT_USAGE;
}

/* A whole number from 1 to max into *out: 0, or -1 if s is not one. */
static int parse_count(const char *s, unsigned max, unsigned *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (end == s || *end || v < 1 || v > (long)max)
		return -1;
	*out = (unsigned)v;
	return 0;
}

static void print_help(const struct cmd *c)
{
	cli_printf("usage: %s\n\n%s\n", c->usage, c->help);
	cli_printf("\nCommon options:\n"
	       "  --root DIR   store folder (default: $QUIVER_ROOT, else ~/.local/share/quiver)\n"
	       "  -h, --help   show this help\n"
	       "\nExit codes: 0 success, 1 failure, 2 usage error, 3 integrity damage found.\n");
}

/* Common option parsing: every command knows --root, --help and maybe --json. */
enum { OPT_ROOT = 1000, OPT_JSON, OPT_VERSION, OPT_ALIAS, OPT_NO_ACTIVATE, OPT_MESSAGE,
       OPT_FORCE, OPT_DRY_RUN, OPT_TO, OPT_RM, OPT_DEVICE, OPT_IO, OPT_QD, OPT_CHUNK,
       OPT_DECODERS, OPT_COLD_READS, OPT_HOST_PAGES, OPT_VERIFY, OPT_PROMOTE, OPT_HOT, OPT_COLD, OPT_CAPACITY, OPT_HIGH, OPT_LOW, OPT_APPLY };

struct opts {
	const char *root;
	int json;
	const char *version;
	const char *aliases[64];
	size_t n_aliases;
	int no_activate;
	const char *message;
	int force;
	int dry_run;
	const char *to;
	int rm;
	const char *device;
	const char *io;
	const char *qd;
	const char *chunk;
	const char *decoders;
	const char *cold_reads;
	const char *host_pages;
	int verify;
	int promote;
	const char *hot, *cold, *capacity, *high, *low;
	int apply;
};

/* Parses argv for command c with the extra long options allowed in `allow`
 * (a string of OPT_ codes as chars - 1000). Returns -1 on usage error (message
 * printed), 1 if --help was printed, 0 to go on; *first is the index of the
 * first positional argument. */
static int parse_opts(const struct cmd *c, int argc, char **argv, const struct option *extra,
                      struct opts *o, int *first)
{
	struct option lo[16];
	size_t n = 0;
	lo[n++] = (struct option){"root", required_argument, NULL, OPT_ROOT};
	lo[n++] = (struct option){"help", no_argument, NULL, 'h'};
	for (; extra && extra->name; extra++)
		lo[n++] = *extra;
	lo[n] = (struct option){0, 0, 0, 0};
	memset(o, 0, sizeof(*o));
	o->root = g_root;
	optind = 0; /* GNU: full re-initialization, commands may run many times (daemon) */
	opterr = 0;
	for (;;) {
		int ch = getopt_long(argc, argv, ":h", lo, NULL);
		if (ch == -1)
			break;
		switch (ch) {
		case 'h': print_help(c); return 1;
		case OPT_ROOT: o->root = optarg; break;
		case OPT_JSON: o->json = 1; break;
		case OPT_VERSION: o->version = optarg; break;
		case OPT_ALIAS:
			if (o->n_aliases == 64) {
				usage_error(c, "too many --alias options%s", "");
				return -1;
			}
			o->aliases[o->n_aliases++] = optarg;
			break;
		case OPT_NO_ACTIVATE: o->no_activate = 1; break;
		case OPT_MESSAGE: o->message = optarg; break;
		case OPT_FORCE: o->force = 1; break;
		case OPT_DRY_RUN: o->dry_run = 1; break;
		case OPT_TO: o->to = optarg; break;
		case OPT_RM: o->rm = 1; break;
		case OPT_DEVICE: o->device = optarg; break;
		case OPT_IO: o->io = optarg; break;
		case OPT_QD: o->qd = optarg; break;
		case OPT_CHUNK: o->chunk = optarg; break;
		case OPT_DECODERS: o->decoders = optarg; break;
		case OPT_COLD_READS: o->cold_reads = optarg; break;
		case OPT_HOST_PAGES: o->host_pages = optarg; break;
		case OPT_VERIFY: o->verify = 1; break;
		case OPT_PROMOTE: o->promote = 1; break;
		case OPT_HOT: o->hot = optarg; break;
		case OPT_COLD: o->cold = optarg; break;
		case OPT_CAPACITY: o->capacity = optarg; break;
		case OPT_HIGH: o->high = optarg; break;
		case OPT_LOW: o->low = optarg; break;
		case OPT_APPLY: o->apply = 1; break;
		case ':':
			usage_error(c, "option %s needs a value", argv[optind - 1]);
			return -1;
		default: /* a short option bundled with others ('-xy') is optopt, not an argv word */
			if (optopt && optopt != '?') {
				char opt[3] = {'-', (char)optopt, 0};
				usage_error(c, "unknown option '%s'", opt);
			} else
				usage_error(c, "unknown option '%s'", argv[optind - 1]);
			return -1;
		}
	}
	*first = optind;
	return 0;
}

/* In the daemon, commands run on its one store handle (cli_daemon_store). */
static qv_store *g_shared_store;

void cli_set_shared_store(qv_store *s)
{
	g_shared_store = s;
}

int cli_in_daemon(void)
{
	return g_shared_store != NULL;
}

static void (*g_follow)(enum cli_follow what, const char *model, const char *ref);

void cli_set_follow_hook(void (*fn)(enum cli_follow what, const char *model, const char *ref))
{
	g_follow = fn;
}

static void close_store(qv_store *s)
{
	if (s != g_shared_store)
		qv_store_close(s);
}

static int open_store(const struct opts *o, qv_store **s)
{
	char err[1024] = "";
	if (g_shared_store) {
		*s = g_shared_store;
		return 0;
	}
	int rc = qv_store_open(o->root, s, err, sizeof(err));
	if (rc) {
		cli_error("%s", *err ? err : qv_strerror(rc));
		return EXIT_FAIL;
	}
	qv_tier_attach(*s);
	return 0;
}

/* Splits arg as MODEL[@REF] (need_ref: the @REF is required) into buf and
 * opens the store. Returns -1 to go on, else the exit code to return. */
static int ref_and_store(const struct cmd *c, const struct opts *o, const char *arg, int need_ref,
                         char buf[REF_BUF], const char **model, const char **ref, qv_store **s)
{
	if (cli_split_ref(arg, buf, REF_BUF, model, ref) || (need_ref && !*ref))
		return usage_error(c, need_ref ? "expected MODEL@REF, got '%s'" : "bad MODEL[@REF] '%s'",
		                   arg);
	return open_store(o, s) ? EXIT_FAIL : -1;
}

static const char *tier_name(int tier)
{
	return tier == QV_TIER_HOT ? "hot" : tier == QV_TIER_COLD ? "cold" : "mixed";
}

/* The tier of model@label ("hot", "cold", "mixed"); "?" if it cannot be read. */
static const char *version_tier(qv_store *s, const char *model, const char *label)
{
	qv_version *v;
	int tier = QV_TIER_HOT;
	if (qv_version_get(s, model, label, QV_WITH_MANIFEST, &v))
		return "?";
	int rc = qv_tier_of_version(s, v, &tier);
	qv_version_free(v);
	return rc ? "?" : tier_name(tier);
}

/* After a switch to, an alias for or a pin of a version with cold shards
 * (which protects it): bring them back hot. */
static int promote_if_cold(qv_store *s, const char *model, const char *label, int json,
                           double *secs)
{
	qv_store_config cfg;
	*secs = 0;
	qv_store_config_get(s, &cfg);
	if (!cfg.cold_dir) /* every shard is hot: no lookups after every publish */
		return 0;
	if (strcmp(version_tier(s, model, label), "hot") == 0)
		return 0;
	if (cli_in_daemon() && g_follow) {
		g_follow(CLI_FOLLOW_PROMOTE, model, label);
		if (!json)
			cli_printf("%s@%s has cold shards: quiverd promotes them in the background\n", model,
			           label);
		return 0;
	}
	qv_migrate_result m;
	cli_progress pg;
	cli_progress_start(&pg, "promote");
	int rc = qv_tier_promote(s, model, label, &m, cli_progress_cb, &pg);
	cli_progress_end(&pg);
	if (rc)
		return cli_fail(s, rc);
	*secs = m.seconds;
	if (!json) {
		char a[32];
		cli_printf("%s@%s was cold: promoted %llu shards (%s) to the hot tier in %.2f s\n", model,
		       label, (unsigned long long)m.shards, cli_bytes(m.raw_bytes, a, sizeof(a)),
		       m.seconds);
	}
	return 0;
}

/* Runs the placement policy after a publish; prints what it moved. */
static int run_policy(qv_store *s, int json)
{
	qv_store_config cfg;
	qv_store_config_get(s, &cfg);
	if (!cfg.cold_dir || !cfg.hot_capacity)
		return 0;
	qv_policy_result r;
	cli_progress pg;
	cli_progress_start(&pg, "demote");
	int rc = qv_tier_apply(s, &r, cli_progress_cb, &pg);
	cli_progress_end(&pg);
	if (rc) /* the publish itself stands: a failing policy is a warning here */
		cli_error("warning: the tier policy after this publish failed (%s); "
		          "'quiver tier --apply' runs it again", qv_store_errmsg(s));
	if (r.versions && !json) {
		char a[32], b[32];
		cli_printf("tier policy: demoted %llu version%s (%llu shards, %s -> %s on the cold tier)\n",
		       (unsigned long long)r.versions, r.versions == 1 ? "" : "s",
		       (unsigned long long)r.moved.shards, cli_bytes(r.moved.raw_bytes, a, sizeof(a)),
		       cli_bytes(r.moved.stored_bytes, b, sizeof(b)));
	}
	return 0;
}

#define PARSE(extra, nargs_min, nargs_max)                                            \
	struct opts o;                                                                 \
	int first;                                                                     \
	const struct cmd *c = find_cmd(argv[0]);                                       \
	int pr = parse_opts(c, argc, argv, extra, &o, &first);                         \
	if (pr)                                                                        \
		return pr < 0 ? EXIT_USAGE : EXIT_OK;                                  \
	int nargs = argc - first;                                                      \
	if (nargs < (nargs_min) || nargs > (nargs_max))                                \
		return usage_error(c, "%s", nargs < (nargs_min) ? "missing argument"   \
		                                                : "too many arguments");

static const struct option opt_json[] = {{"json", no_argument, NULL, OPT_JSON}, {0, 0, 0, 0}};

static json_t *digest_json(const uint8_t d[QV_DIGEST_LEN])
{
	char hex[QV_HEX_LEN + 8];
	strcpy(hex, "sha256:");
	qv_digest_hex(d, hex + 7);
	return json_string(hex);
}

static json_t *aliases_json(const qv_version *v)
{
	json_t *a = json_array();
	for (size_t i = 0; i < v->n_aliases; i++)
		json_array_append_new(a, json_string(v->aliases[i]));
	return a;
}

/* ---- publish ------------------------------------------------------------------ */
static int cmd_publish(int argc, char **argv)
{
	static const struct option extra[] = {
		{"version", required_argument, NULL, OPT_VERSION},
		{"alias", required_argument, NULL, OPT_ALIAS},
		{"no-activate", no_argument, NULL, OPT_NO_ACTIVATE},
		{"message", required_argument, NULL, OPT_MESSAGE},
		{"json", no_argument, NULL, OPT_JSON},
		{0, 0, 0, 0}};
	PARSE(extra, 2, 2);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_publish_opts po = {.label = o.version, .aliases = o.aliases, .n_aliases = o.n_aliases,
	                      .no_activate = o.no_activate, .message = o.message};
	cli_progress pg;
	cli_progress_start(&pg, "publish");
	po.progress = cli_progress_cb;
	po.progress_arg = &pg;
	qv_publish_result r;
	int rc = qv_publish(s, argv[first], argv[first + 1], &po, &r);
	cli_progress_end(&pg);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	double gbps = r.seconds > 0 ? (double)r.bytes / r.seconds / 1e9 : 0;
	if (o.json) {
		cli_json_print(json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b}",
		                         "model", argv[first], "version", r.label, "digest",
		                         digest_json(r.digest), "files", (json_int_t)r.files,
		                         "tensors", (json_int_t)r.tensors, "bytes", (json_int_t)r.bytes,
		                         "shards", (json_int_t)r.shards, "new_shards",
		                         (json_int_t)r.new_shards, "new_bytes",
		                         (json_int_t)r.new_bytes, "seconds", r.seconds, "gbps", gbps,
		                         "activated", !o.no_activate));
	} else {
		char hex[QV_HEX_LEN + 1], a[32], b[32];
		qv_digest_hex(r.digest, hex);
		cli_printf("published %s@%s%s\n", argv[first], r.label,
		       o.no_activate ? "" : " (now current)");
		cli_printf("  digest    sha256:%s\n", hex);
		cli_printf("  tensors   %llu in %llu file%s\n", (unsigned long long)r.tensors,
		       (unsigned long long)r.files, r.files == 1 ? "" : "s");
		cli_printf("  bytes     %s, newly stored %s (%llu of %llu shards new)\n",
		       cli_bytes(r.bytes, a, sizeof(a)), cli_bytes(r.new_bytes, b, sizeof(b)),
		       (unsigned long long)r.new_shards, (unsigned long long)r.shards);
		cli_printf("  elapsed   %.2f s, %.2f GB/s\n", r.seconds, gbps);
	}
	/* a new current or aliased version whose shards were found on the cold
	 * tier (deduplicated against a demoted version) must not stay there */
	double promo;
	rc = EXIT_OK;
	if (!o.no_activate || o.n_aliases)
		rc = promote_if_cold(s, argv[first], r.label, o.json, &promo);
	if (rc == EXIT_OK && !cli_in_daemon())
		rc = run_policy(s, o.json); /* the daemon runs it in the background */
	close_store(s);
	return rc;
}

/* ---- list ----------------------------------------------------------------------- */
static int cmd_list(int argc, char **argv)
{
	PARSE(opt_json, 0, 1);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	int rc;
	char a[32], t[32];
	if (nargs == 0) {
		qv_model_list *ml;
		rc = qv_model_list_get(s, &ml);
		if (rc)
			goto fail;
		if (o.json) {
			json_t *arr = json_array();
			for (size_t i = 0; i < ml->n; i++)
				json_array_append_new(
					arr, json_pack("{s:s, s:I, s:s, s:I}", "model", ml->m[i].name,
				                       "versions", (json_int_t)ml->m[i].n_versions,
				                       "current", ml->m[i].current, "bytes",
				                       (json_int_t)ml->m[i].bytes));
			cli_json_print(json_pack("{s:o}", "models", arr));
		} else if (ml->n == 0) {
			cli_printf("no models in %s\n", qv_store_root(s));
		} else {
			cli_printf("%-40s %8s  %-12s %12s\n", "MODEL", "VERSIONS", "CURRENT", "BYTES");
			for (size_t i = 0; i < ml->n; i++)
				cli_printf("%-40s %8zu  %-12s %12s\n", ml->m[i].name, ml->m[i].n_versions,
				       *ml->m[i].current ? ml->m[i].current : "-",
				       cli_bytes(ml->m[i].bytes, a, sizeof(a)));
		}
		qv_model_list_free(ml);
	} else {
		qv_version_list *vl;
		rc = qv_version_list_get(s, argv[first], &vl);
		if (rc)
			goto fail;
		if (o.json) {
			json_t *arr = json_array();
			for (size_t i = 0; i < vl->n; i++) {
				const qv_version *v = &vl->v[i];
				json_array_append_new(
					arr, json_pack("{s:s, s:o, s:I, s:I, s:s, s:o, s:b, s:s, s:s}",
				                       "version", v->label, "digest", digest_json(v->digest),
				                       "created_ns", (json_int_t)v->created_ns, "bytes",
				                       (json_int_t)v->bytes, "created",
				                       cli_time(v->created_ns, t, sizeof(t)), "aliases",
				                       aliases_json(v), "current", v->is_current, "message",
				                       v->message, "tier", version_tier(s, v->model, v->label)));
			}
			cli_json_print(json_pack("{s:s, s:o}", "model", argv[first], "versions", arr));
		} else {
			cli_printf("%-14s %-14s %-21s %12s  %-5s %s\n", "VERSION", "DIGEST", "CREATED", "BYTES",
			       "TIER", "ALIASES");
			for (size_t i = 0; i < vl->n; i++) {
				const qv_version *v = &vl->v[i];
				char hex[QV_HEX_LEN + 1], al[512] = "";
				qv_digest_hex(v->digest, hex);
				for (size_t k = 0; k < v->n_aliases; k++) {
					if (k)
						strncat(al, ",", sizeof(al) - strlen(al) - 1);
					strncat(al, v->aliases[k], sizeof(al) - strlen(al) - 1);
				}
				cli_printf("%-14s %.12s   %-21s %12s  %-5s %s\n", v->label, hex,
				       cli_time(v->created_ns, t, sizeof(t)), cli_bytes(v->bytes, a, sizeof(a)),
				       version_tier(s, v->model, v->label), al);
			}
		}
		qv_version_list_free(vl);
	}
	close_store(s);
	return EXIT_OK;
fail:
	rc = cli_fail(s, rc);
	close_store(s);
	return rc;
}

/* ---- show ---------------------------------------------------------------------------- */
static int cmd_show(int argc, char **argv)
{
	PARSE(opt_json, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 0, buf, &model, &ref, &s)) >= 0)
		return pr;
	qv_version *v;
	int rc = qv_version_get(s, model, ref, QV_WITH_MANIFEST, &v);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	char t[32], a[32], hex[QV_HEX_LEN + 1];
	if (o.json) {
		json_t *files = json_array(), *tensors = json_array();
		for (size_t i = 0; i < v->n_files; i++) {
			const qv_file *f = &v->files[i];
			json_array_append_new(files,
			                      json_pack("{s:s, s:I, s:s, s:I}", "name", f->name, "size",
			                                (json_int_t)f->size, "type",
			                                f->safetensors ? "safetensors" : "blob", "tensors",
			                                (json_int_t)f->n_tensors));
			for (size_t k = 0; k < f->n_tensors; k++) {
				const qv_tensor *x = &f->tensors[k];
				json_t *shape = json_array();
				for (uint32_t d = 0; d < x->ndim; d++)
					json_array_append_new(shape, json_integer(x->shape[d]));
				qv_shard_info si = {0};
				int has = qv_shard_info_get(s, x->shard, &si) == 0;
				json_array_append_new(
					tensors, json_pack("{s:s, s:s, s:o, s:I, s:s, s:o, s:I, s:s}", "name",
				                           x->name, "dtype", x->dtype, "shape", shape, "bytes",
				                           (json_int_t)x->bytes, "file", f->name, "shard",
				                           digest_json(x->shard), "shard_offset",
				                           (json_int_t)x->shard_offset, "tier",
				                           has ? tier_name(si.tier) : "missing"));
			}
		}
		cli_json_print(json_pack(
			"{s:s, s:s, s:o, s:I, s:s, s:I, s:I, s:s, s:s, s:o, s:b, s:s, s:o, s:o, s:b}", "model",
			v->model, "version", v->label, "digest", digest_json(v->digest), "created_ns",
			(json_int_t)v->created_ns, "created", cli_time(v->created_ns, t, sizeof(t)),
			"bytes", (json_int_t)v->bytes, "tensor_count", (json_int_t)v->n_tensors,
			"message", v->message, "parent", v->parent, "aliases", aliases_json(v), "current",
			v->is_current, "tier", version_tier(s, v->model, v->label), "files", files,
			"tensors", tensors, "pinned", v->pinned));
	} else {
		qv_digest_hex(v->digest, hex);
		cli_printf("model     %s\nversion   %s%s\ndigest    sha256:%s\ncreated   %s\n", v->model,
		       v->label, v->is_current ? " (current)" : "", hex,
		       cli_time(v->created_ns, t, sizeof(t)));
		cli_printf("bytes     %s in %zu file%s, %llu tensors, tier %s%s\n",
		       cli_bytes(v->bytes, a, sizeof(a)), v->n_files, v->n_files == 1 ? "" : "s",
		       (unsigned long long)v->n_tensors, version_tier(s, v->model, v->label),
		       v->pinned ? ", pinned" : "");
		if (*v->parent)
			cli_printf("parent    %s\n", v->parent);
		if (*v->message)
			cli_printf("message   %s\n", v->message);
		cli_printf("aliases   ");
		for (size_t i = 0; i < v->n_aliases; i++)
			cli_printf("%s%s", i ? ", " : "", v->aliases[i]);
		cli_printf("%s\nfiles\n", v->n_aliases ? "" : "-");
		for (size_t i = 0; i < v->n_files; i++)
			cli_printf("  %-50s %12s  %s\n", v->files[i].name, cli_bytes(v->files[i].size, a, sizeof(a)),
			       v->files[i].safetensors ? "safetensors" : "blob");
		cli_printf("tensors\n");
		for (size_t i = 0; i < v->n_files; i++)
			for (size_t k = 0; k < v->files[i].n_tensors; k++) {
				const qv_tensor *x = &v->files[i].tensors[k];
				char shape[256] = "[";
				for (uint32_t d = 0; d < x->ndim; d++) {
					char num[32];
					snprintf(num, sizeof(num), "%s%lld", d ? ", " : "", (long long)x->shape[d]);
					strncat(shape, num, sizeof(shape) - strlen(shape) - 2);
				}
				strcat(shape, "]");
				qv_digest_hex(x->shard, hex);
				qv_shard_info si = {0};
				int has = qv_shard_info_get(s, x->shard, &si) == 0;
				cli_printf("  %-50s %-8s %-24s %12s  shard %.12s  %s\n", x->name, x->dtype, shape,
				       cli_bytes(x->bytes, a, sizeof(a)), hex, has ? tier_name(si.tier) : "missing");
			}
	}
	qv_version_free(v);
	close_store(s);
	return EXIT_OK;
}

/* ---- activate / rollback ----------------------------------------------------------------- */
static int print_switch(const struct opts *o, const char *model, const qv_switch_result *r,
                        double secs, double promote_secs)
{
	if (o->json)
		cli_json_print(json_pack("{s:s, s:s, s:s, s:f, s:f}", "model", model, "from", r->from,
		                         "to", r->to, "seconds", secs, "promote_seconds", promote_secs));
	else
		cli_printf("%s: current is now %s (was %s)\n", model, r->to, *r->from ? r->from : "none");
	return EXIT_OK;
}

static int cmd_activate(int argc, char **argv)
{
	PARSE(opt_json, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 1, buf, &model, &ref, &s)) >= 0)
		return pr;
	qv_switch_result r;
	double t0 = cli_now(), promo = 0;
	int rc = qv_activate(s, model, ref, &r);
	if (rc == 0)
		rc = promote_if_cold(s, model, r.to, o.json, &promo);
	else
		rc = cli_fail(s, rc);
	if (rc == 0 && cli_in_daemon() && g_follow) /* after the promotion: warm from hot */
		g_follow(CLI_FOLLOW_WARM, model, r.to);
	if (rc == 0)
		print_switch(&o, model, &r, cli_now() - t0, promo);
	close_store(s);
	return rc;
}

static int cmd_rollback(int argc, char **argv)
{
	static const struct option extra[] = {{"to", required_argument, NULL, OPT_TO},
	                                      {"json", no_argument, NULL, OPT_JSON},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 1, 1);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_switch_result r;
	double t0 = cli_now(), promo = 0;
	int rc = qv_rollback(s, argv[first], o.to, &r);
	if (rc == 0)
		rc = promote_if_cold(s, argv[first], r.to, o.json, &promo);
	else
		rc = cli_fail(s, rc);
	if (rc == 0 && cli_in_daemon() && g_follow) /* after the promotion: warm from hot */
		g_follow(CLI_FOLLOW_WARM, argv[first], r.to);
	if (rc == 0)
		print_switch(&o, argv[first], &r, cli_now() - t0, promo);
	close_store(s);
	return rc;
}

/* ---- alias -------------------------------------------------------------------------------- */
static int cmd_alias(int argc, char **argv)
{
	static const struct option extra[] = {{"rm", no_argument, NULL, OPT_RM}, {0, 0, 0, 0}};
	PARSE(extra, 2, 3);
	if (o.rm ? nargs != 2 : nargs != 3)
		return usage_error(c, "%s", o.rm ? "--rm takes MODEL NAME" : "expected MODEL NAME REF");
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	double promo;
	int rc = o.rm ? qv_alias_rm(s, argv[first], argv[first + 1])
	              : qv_alias_set(s, argv[first], argv[first + 1], argv[first + 2]);
	if (rc)
		rc = cli_fail(s, rc);
	else if (o.rm)
		cli_printf("%s: removed alias %s\n", argv[first], argv[first + 1]);
	else if ((rc = promote_if_cold(s, argv[first], argv[first + 2], 0, &promo)) == 0)
		cli_printf("%s: %s -> %s\n", argv[first], argv[first + 1], argv[first + 2]);
	close_store(s);
	return rc;
}

/* ---- history ------------------------------------------------------------------------------ */
static int cmd_history(int argc, char **argv)
{
	PARSE(opt_json, 1, 1);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_history *h;
	int rc = qv_history_get(s, argv[first], &h);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	char t[32];
	if (o.json) {
		json_t *arr = json_array();
		for (size_t i = 0; i < h->n; i++)
			json_array_append_new(arr, json_pack("{s:I, s:s, s:s, s:s, s:s}", "time_ns",
			                                     (json_int_t)h->e[i].time_ns, "time",
			                                     cli_time(h->e[i].time_ns, t, sizeof(t)),
			                                     "action", h->e[i].action, "from",
			                                     h->e[i].from, "to", h->e[i].to));
		cli_json_print(json_pack("{s:s, s:o}", "model", argv[first], "history", arr));
	} else {
		cli_printf("%-21s %-9s %-14s %s\n", "TIME", "ACTION", "FROM", "TO");
		for (size_t i = 0; i < h->n; i++)
			cli_printf("%-21s %-9s %-14s %s\n", cli_time(h->e[i].time_ns, t, sizeof(t)),
			       h->e[i].action, *h->e[i].from ? h->e[i].from : "-",
			       *h->e[i].to ? h->e[i].to : "-");
	}
	qv_history_free(h);
	close_store(s);
	return EXIT_OK;
}

/* ---- export ------------------------------------------------------------------------------- */
static int cmd_export(int argc, char **argv)
{
	PARSE(opt_json, 2, 2);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 0, buf, &model, &ref, &s)) >= 0)
		return pr;
	cli_progress pg;
	cli_progress_start(&pg, "export");
	double t0 = cli_now();
	int rc = qv_export(s, model, ref, argv[first + 1], cli_progress_cb, &pg);
	cli_progress_end(&pg);
	if (rc) {
		rc = cli_fail(s, rc);
	} else if (o.json) {
		cli_json_print(json_pack("{s:s, s:s, s:f}", "model", model, "outdir", argv[first + 1],
		                         "seconds", cli_now() - t0));
	} else {
		cli_printf("exported %s@%s to %s in %.2f s\n", model, ref ? ref : "current", argv[first + 1],
		       cli_now() - t0);
	}
	close_store(s);
	return rc;
}

/* ---- verify -------------------------------------------------------------------------------- */
static int cmd_verify(int argc, char **argv)
{
	PARSE(opt_json, 0, 1);
	char buf[REF_BUF];
	const char *model = NULL, *ref = NULL;
	if (nargs == 1 && cli_split_ref(argv[first], buf, sizeof(buf), &model, &ref))
		return usage_error(c, "bad MODEL[@REF] '%s'", argv[first]);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	cli_progress pg;
	cli_progress_start(&pg, "verify");
	qv_verify_report *r;
	int rc = qv_verify(s, model, ref, &r, cli_progress_cb, &pg);
	cli_progress_end(&pg);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	if (o.json) {
		json_t *dm = json_array();
		for (size_t i = 0; i < r->n_damaged; i++) {
			json_t *vs = json_array();
			for (size_t k = 0; k < r->damaged[i].n_versions; k++)
				json_array_append_new(vs, json_string(r->damaged[i].versions[k]));
			json_array_append_new(dm, json_pack("{s:o, s:s, s:o}", "shard",
			                                    digest_json(r->damaged[i].shard), "reason",
			                                    r->damaged[i].reason, "versions", vs));
		}
		cli_json_print(json_pack("{s:b, s:I, s:I, s:I, s:o}", "ok", r->n_damaged == 0,
		                         "versions", (json_int_t)r->versions, "shards",
		                         (json_int_t)r->shards, "bytes", (json_int_t)r->bytes,
		                         "damaged", dm));
	} else {
		char a[32], hex[QV_HEX_LEN + 1];
		for (size_t i = 0; i < r->n_damaged; i++) {
			qv_digest_hex(r->damaged[i].shard, hex);
			cli_printf("DAMAGED shard sha256:%s (%s), breaks:", hex, r->damaged[i].reason);
			for (size_t k = 0; k < r->damaged[i].n_versions; k++)
				cli_printf(" %s", r->damaged[i].versions[k]);
			cli_printf("\n");
		}
		cli_printf("%s: %llu version%s, %llu shards, %s checked; %zu damaged\n",
		       r->n_damaged ? "DAMAGE" : "ok", (unsigned long long)r->versions,
		       r->versions == 1 ? "" : "s", (unsigned long long)r->shards,
		       cli_bytes(r->bytes, a, sizeof(a)), r->n_damaged);
	}
	if (r->n_damaged)
		cli_error("integrity damage: %zu shard%s damaged", r->n_damaged,
		          r->n_damaged == 1 ? "" : "s");
	rc = r->n_damaged ? EXIT_DAMAGE : EXIT_OK;
	qv_verify_report_free(r);
	close_store(s);
	return rc;
}

/* ---- rm / gc --------------------------------------------------------------------------------- */
static int print_freed(const struct opts *o, const char *what, const qv_free_result *r)
{
	char a[32];
	if (o->json)
		cli_json_print(json_pack("{s:b, s:I, s:I, s:I, s:I, s:I}", "dry_run", o->dry_run,
		                         "versions", (json_int_t)r->versions, "shards",
		                         (json_int_t)r->shards, "bytes", (json_int_t)r->bytes,
		                         "temp_files", (json_int_t)r->temp_files, "index_fixes",
		                         (json_int_t)r->index_fixes));
	else
		cli_printf("%s%s %llu shard%s (%s)%s%llu temp file%s, %llu index fix%s\n", what,
		       o->dry_run ? " would free" : " freed", (unsigned long long)r->shards,
		       r->shards == 1 ? "" : "s", cli_bytes(r->bytes, a, sizeof(a)), ", ",
		       (unsigned long long)r->temp_files, r->temp_files == 1 ? "" : "s",
		       (unsigned long long)r->index_fixes, r->index_fixes == 1 ? "" : "es");
	return EXIT_OK;
}

static int cmd_rm(int argc, char **argv)
{
	static const struct option extra[] = {{"force", no_argument, NULL, OPT_FORCE},
	                                      {"json", no_argument, NULL, OPT_JSON},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 1, buf, &model, &ref, &s)) >= 0)
		return pr;
	qv_free_result r;
	int rc = qv_version_rm(s, model, ref, o.force, &r);
	if (rc) {
		rc = cli_fail(s, rc);
	} else {
		char what[REF_BUF + 16];
		snprintf(what, sizeof(what), "removed %s@%s;", model, ref);
		print_freed(&o, what, &r);
	}
	close_store(s);
	return rc;
}

static int cmd_gc(int argc, char **argv)
{
	static const struct option extra[] = {{"dry-run", no_argument, NULL, OPT_DRY_RUN},
	                                      {"json", no_argument, NULL, OPT_JSON},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 0, 0);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_free_result r;
	int rc = qv_gc(s, o.dry_run, &r);
	rc = rc ? cli_fail(s, rc) : print_freed(&o, "gc:", &r);
	close_store(s);
	return rc;
}

/* ---- load ------------------------------------------------------------------------------------- */

/* A load's io mode as `load` prints it; "none" for reads that did not happen. */
static const char *io_mode_name(enum qv_io_mode m)
{
	return m == QV_IO_DIRECT ? "direct" : m == QV_IO_BUFFERED ? "buffered" : "none";
}

/* What a load's host arena asked for, as `load` prints it. */
static const char *host_pages_name(enum qv_host_pages p)
{
	return p == QV_HOST_PAGES_HUGE ? "huge" : p == QV_HOST_PAGES_SMALL ? "small" : "none";
}

/* User + system CPU seconds this process has used (every thread). */
static double cpu_seconds(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmd_load(int argc, char **argv)
{
	static const struct option extra[] = {{"device", required_argument, NULL, OPT_DEVICE},
	                                      {"io", required_argument, NULL, OPT_IO},
	                                      {"qd", required_argument, NULL, OPT_QD},
	                                      {"chunk", required_argument, NULL, OPT_CHUNK},
	                                      {"decode-threads", required_argument, NULL, OPT_DECODERS},
	                                      {"cold-reads", required_argument, NULL, OPT_COLD_READS},
	                                      {"host-pages", required_argument, NULL, OPT_HOST_PAGES},
	                                      {"verify", no_argument, NULL, OPT_VERIFY},
	                                      {"promote", no_argument, NULL, OPT_PROMOTE},
	                                      {"json", no_argument, NULL, OPT_JSON},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	if (cli_split_ref(argv[first], buf, sizeof(buf), &model, &ref))
		return usage_error(c, "bad MODEL[@REF] '%s'", argv[first]);
	qv_load_opts lo = {.device = QV_DEVICE_CPU, .io = QV_IO_AUTO, .verify = o.verify};
	if (o.device && strcmp(o.device, "cpu") != 0) {
		char *end;
		long n = -1;
		if (strncmp(o.device, "cuda:", 5) == 0 && o.device[5] >= '0' && o.device[5] <= '9') {
			errno = 0;
			n = strtol(o.device + 5, &end, 10);
			if (errno || *end || n > 4096)
				n = -1;
		}
		if (n < 0)
			return usage_error(c, "--device must be cpu or cuda:N, not '%s'", o.device);
		lo.device = (int)n;
	}
	if (o.io) {
		if (strcmp(o.io, "auto") == 0)
			lo.io = QV_IO_AUTO;
		else if (strcmp(o.io, "direct") == 0)
			lo.io = QV_IO_DIRECT;
		else if (strcmp(o.io, "buffered") == 0)
			lo.io = QV_IO_BUFFERED;
		else
			return usage_error(c, "--io must be auto, direct or buffered, not '%s'", o.io);
	}
	if (o.qd) {
		long long v = cli_parse_size(o.qd);
		if (v < 1 || v > QV_LOAD_QD_MAX)
			return usage_error(c, "--qd must be 1 to 256, not '%s'", o.qd);
		lo.qd = (unsigned)v;
	}
	if (o.chunk) {
		long long v = cli_parse_size(o.chunk);
		if (v < QV_LOAD_CHUNK_MIN || v > QV_LOAD_CHUNK_MAX || v % 4096)
			return usage_error(c, "--chunk must be a multiple of 4 KiB from 64K to 64M, not '%s'",
			                   o.chunk);
		lo.chunk_bytes = (size_t)v;
	}
	if (o.decoders && parse_count(o.decoders, QV_LOAD_DECODE_THREADS_MAX, &lo.decode_threads))
		return usage_error(c, "--decode-threads must be 1 to 16, not '%s'", o.decoders);
	if (o.cold_reads && parse_count(o.cold_reads, QV_LOAD_COLD_READS_MAX, &lo.cold_reads))
		return usage_error(c, "--cold-reads must be 1 to 64, not '%s'", o.cold_reads);
	if (o.host_pages) {
		if (strcmp(o.host_pages, "auto") == 0)
			lo.host_pages = QV_HOST_PAGES_AUTO;
		else if (strcmp(o.host_pages, "small") == 0)
			lo.host_pages = QV_HOST_PAGES_SMALL;
		else if (strcmp(o.host_pages, "huge") == 0)
			lo.host_pages = QV_HOST_PAGES_HUGE;
		else
			return usage_error(c, "--host-pages must be auto, small or huge, not '%s'",
			                   o.host_pages);
	}
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	cli_progress pg;
	cli_progress_start(&pg, "load");
	lo.progress = cli_progress_cb;
	lo.progress_arg = &pg;
	qv_load *l;
	double cpu0 = cpu_seconds();
	int rc = qv_load_run(s, model, ref, NULL, 0, &lo, &l);
	double cpu = cpu_seconds() - cpu0; /* this process does nothing else meanwhile */
	cli_progress_end(&pg);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	const qv_load_stats *st = qv_load_get_stats(l);
	double gbps = st->seconds > 0 ? (double)st->bytes / st->seconds / 1e9 : 0;
	const char *io = io_mode_name(st->io), *cold_io = io_mode_name(st->cold_io);
	char dev[32], a[32];
	if (st->device == QV_DEVICE_CPU)
		snprintf(dev, sizeof(dev), "cpu");
	else
		snprintf(dev, sizeof(dev), "cuda:%d", st->device);
	if (o.json)
		cli_json_print(json_pack("{s:s, s:s, s:I, s:I, s:f, s:f, s:f, s:f, s:s, s:s, s:s, s:i, s:I, s:I, s:b, s:I, s:i, s:i, s:s, s:f, s:s, s:I}",
		                         "model", model, "version", ref ? ref : "current", "bytes",
		                         (json_int_t)st->bytes, "tensors", (json_int_t)st->tensors,
		                         "seconds", st->seconds, "gbps", gbps, "device_init_seconds", st->device_init_seconds, "first_tensor_seconds",
		                         st->first_tensor_seconds, "device", dev, "io", io, "engine",
		                         st->engine, "qd", (int)st->qd, "chunk_bytes",
		                         (json_int_t)st->chunk_bytes, "reads", (json_int_t)st->reads,
		                         "verified", lo.verify, "cold_bytes", (json_int_t)st->cold_bytes,
		                         "decode_threads", (int)st->decode_threads, "cold_reads",
		                         (int)st->cold_reads, "cold_io", cold_io,
		                         "cpu_seconds", cpu, "host_pages", host_pages_name(st->host_pages),
		                         "cold_gpu_bytes", (json_int_t)st->cold_gpu_bytes));
	else
		cli_printf("loaded %s@%s to %s: %s, %llu tensors in %.3f s (%.2f GB/s, %.2f s of CPU), "
		           "first tensor after %.3f s\n",
		       model, ref ? ref : "current", dev, cli_bytes(st->bytes, a, sizeof(a)),
		       (unsigned long long)st->tensors, st->seconds, gbps, cpu, st->first_tensor_seconds);
	if (!o.json && st->host_pages)
		cli_printf("  host memory: %s pages\n",
		           st->host_pages == QV_HOST_PAGES_HUGE ? "transparent huge (2 MiB)" : "4 KiB");
	if (!o.json && st->bytes > st->cold_bytes) /* the hot engine ran */
		cli_printf("  hot shards: io %s (%s), qd %u, chunk %zu KiB, %llu reads%s\n", io,
		       st->engine, st->qd, st->chunk_bytes >> 10, (unsigned long long)st->reads,
		       lo.verify ? ", every shard's checksum verified" : "");
	if (!o.json && st->cold_bytes) {
		char g[32];
		cli_printf("  cold frames: io %s, %u read at once, %s decoded on %u threads (every "
		           "frame's checksum checked)\n",
		       cold_io, st->cold_reads, cli_bytes(st->cold_bytes, a, sizeof(a)), st->decode_threads);
		if (st->cold_gpu_bytes)
			cli_printf("  of which %s merged and checked on the GPU\n",
			           cli_bytes(st->cold_gpu_bytes, g, sizeof(g)));
	}
	rc = EXIT_OK;
	if (o.promote && st->cold_bytes) {
		qv_migrate_result m;
		cli_progress_start(&pg, "promote");
		int prc = qv_tier_promote(s, model, ref ? ref : "current", &m, cli_progress_cb, &pg);
		cli_progress_end(&pg);
		if (prc)
			rc = cli_fail(s, prc);
		else if (!o.json)
			cli_printf("  promoted %llu shards to the hot tier in %.2f s\n",
			       (unsigned long long)m.shards, m.seconds);
	}
	qv_load_destroy(l);
	close_store(s);
	return rc;
}

/* ---- tiers ---------------------------------------------------------------------------------------- */
static int cmd_init(int argc, char **argv)
{
	static const struct option extra[] = {{"hot", required_argument, NULL, OPT_HOT},
	                                      {"cold", required_argument, NULL, OPT_COLD},
	                                      {"hot-capacity", required_argument, NULL, OPT_CAPACITY},
	                                      {"high", required_argument, NULL, OPT_HIGH},
	                                      {"low", required_argument, NULL, OPT_LOW},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 0, 0);
	/* the store as it is (created if new; the root resolved as every
	 * command does): settings not given keep their current values */
	char root[4096], err[1024] = "";
	qv_store *s;
	int rc = qv_store_open(o.root, &s, err, sizeof(err));
	if (rc) {
		cli_error("%s", *err ? err : qv_strerror(rc));
		return EXIT_FAIL;
	}
	snprintf(root, sizeof(root), "%s", qv_store_root(s));
	/* a daemon keeps the configuration it started with: it would go on
	 * writing shards where the new one does not look */
	qv_client *cl;
	if (!cli_in_daemon() && qv_client_connect(root, &cl) == 0) {
		qv_client_close(cl);
		qv_store_close(s);
		cli_error("quiverd serves %s; stop it before 'quiver init', then start it again", root);
		return EXIT_FAIL;
	}
	qv_store_config now;
	qv_store_config_get(s, &now);
	char now_hot[4096], now_cold[4096];
	snprintf(now_hot, sizeof(now_hot), "%s", now.hot_dir);
	snprintf(now_cold, sizeof(now_cold), "%s", now.cold_dir ? now.cold_dir : "");
	qv_store_close(s);
	qv_store_config cfg = {.hot_dir = o.hot ? o.hot : now_hot,
	                       .cold_dir = o.cold ? o.cold : *now_cold ? now_cold : NULL,
	                       .hot_capacity = now.hot_capacity, .high = now.high, .low = now.low};
	char *end;
	if (o.capacity) {
		long long v = cli_parse_size(o.capacity);
		if (v < 0)
			return usage_error(c, "--hot-capacity must be a size like 500G, not '%s'", o.capacity);
		cfg.hot_capacity = (uint64_t)v;
	}
	/* written !(0 < x <= 1) so that NaN fails too */
	if (o.high && (cfg.high = strtod(o.high, &end), !(cfg.high > 0 && cfg.high <= 1) || *end))
		return usage_error(c, "--high must be a fraction in (0, 1], not '%s'", o.high);
	if (o.low && (cfg.low = strtod(o.low, &end), !(cfg.low > 0 && cfg.low <= 1) || *end))
		return usage_error(c, "--low must be a fraction in (0, 1], not '%s'", o.low);
	if (cfg.low > cfg.high) {
		char msg[160];
		snprintf(msg, sizeof(msg), "the low watermark (%g%s) must not be above the high one (%g%s)",
		         cfg.low, o.low ? "" : ", kept from before", cfg.high,
		         o.high ? "" : ", kept from before");
		return usage_error(c, "%s", msg);
	}
	rc = qv_store_init(root, &cfg, err, sizeof(err));
	if (rc) {
		cli_error("%s", *err ? err : qv_strerror(rc));
		return EXIT_FAIL;
	}
	/* say what the file now holds */
	rc = qv_store_open(root, &s, err, sizeof(err));
	if (rc) {
		cli_error("%s", *err ? err : qv_strerror(rc));
		return EXIT_FAIL;
	}
	qv_store_config_get(s, &now);
	char a[32];
	cli_printf("initialized %s: hot tier %s, cold tier %s, hot capacity %s, watermarks %g/%g\n",
	           root, now.hot_dir, now.cold_dir ? now.cold_dir : "none",
	           now.hot_capacity ? cli_bytes(now.hot_capacity, a, sizeof(a)) : "unlimited", now.high,
	           now.low);
	qv_store_close(s);
	return EXIT_OK;
}

static int cmd_pin_common(int argc, char **argv, int pin)
{
	PARSE(NULL, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 1, buf, &model, &ref, &s)) >= 0)
		return pr;
	double promo;
	int rc = qv_version_pin(s, model, ref, pin);
	if (rc)
		rc = cli_fail(s, rc);
	else if (!pin || (rc = promote_if_cold(s, model, ref, 0, &promo)) == 0)
		cli_printf("%s@%s %s\n", model, ref, pin ? "pinned: it stays on the hot tier" : "unpinned");
	close_store(s);
	return rc;
}

static int cmd_pin(int argc, char **argv) { return cmd_pin_common(argc, argv, 1); }
static int cmd_unpin(int argc, char **argv) { return cmd_pin_common(argc, argv, 0); }

static int print_migrate(const struct opts *o, const char *what, const char *model,
                         const char *ref, const qv_migrate_result *m)
{
	char a[32], b[32];
	if (o->json)
		cli_json_print(json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f}", "model", model,
		                         "version", ref, "action", what, "shards", (json_int_t)m->shards,
		                         "raw_bytes", (json_int_t)m->raw_bytes, "stored_bytes",
		                         (json_int_t)m->stored_bytes, "kept_hot", (json_int_t)m->kept,
		                         "seconds", m->seconds));
	else
		cli_printf("%s %s@%s: %llu shards, %s raw -> %s stored in %.2f s%s%llu shared shard%s kept hot\n",
		       what, model, ref, (unsigned long long)m->shards, cli_bytes(m->raw_bytes, a, sizeof(a)),
		       cli_bytes(m->stored_bytes, b, sizeof(b)), m->seconds, "; ", (unsigned long long)m->kept,
		       m->kept == 1 ? "" : "s");
	return EXIT_OK;
}

/* The policy never demotes a current, aliased or pinned version; a demote by
 * hand does, and says so, and how the version comes back. */
static void note_protected_demote(qv_store *s, const char *model, const char *ref)
{
	qv_version *v;
	if (qv_version_get(s, model, ref, 0, &v) != 0)
		return;
	if (v->n_aliases > 0 || v->pinned)
		cli_error("note: %s@%s is %s; it stays cold until 'quiver promote', 'pin' or "
		          "'activate' brings it back",
		          v->model, v->label,
		          v->is_current ? "current" : v->pinned ? "pinned" : "named by an alias");
	qv_version_free(v);
}

static int cmd_migrate(int argc, char **argv, int demote)
{
	PARSE(opt_json, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	qv_store *s;
	if ((pr = ref_and_store(c, &o, argv[first], 1, buf, &model, &ref, &s)) >= 0)
		return pr;
	qv_migrate_result m;
	cli_progress pg;
	cli_progress_start(&pg, demote ? "demote" : "promote");
	int rc = demote ? qv_tier_demote(s, model, ref, &m, cli_progress_cb, &pg)
	                : qv_tier_promote(s, model, ref, &m, cli_progress_cb, &pg);
	cli_progress_end(&pg);
	rc = rc ? cli_fail(s, rc) : print_migrate(&o, demote ? "demoted" : "promoted", model, ref, &m);
	if (rc == EXIT_OK && demote && m.shards > 0)
		note_protected_demote(s, model, ref);
	close_store(s);
	return rc;
}

static int cmd_demote(int argc, char **argv) { return cmd_migrate(argc, argv, 1); }
static int cmd_promote(int argc, char **argv) { return cmd_migrate(argc, argv, 0); }

static int cmd_tier(int argc, char **argv)
{
	static const struct option extra[] = {{"apply", no_argument, NULL, OPT_APPLY},
	                                      {"json", no_argument, NULL, OPT_JSON},
	                                      {0, 0, 0, 0}};
	PARSE(extra, 0, 0);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_store_config cfg;
	qv_store_config_get(s, &cfg);
	int rc = 0;
	char a[32], b[32], d[32];
	if (!o.apply) {
		qv_tier_status st;
		rc = qv_tier_status_get(s, &st);
		/* the policy demotes only with a cold tier and a hot capacity */
		const char *idle = !cfg.cold_dir        ? "no cold tier, so nothing is demoted "
		                                          "('quiver init --cold DIR')"
		                   : !cfg.hot_capacity ? "no hot capacity, so nothing is demoted "
		                                          "('quiver init --hot-capacity SIZE')"
		                                        : NULL;
		if (rc == 0 && o.json)
			cli_json_print(json_pack("{s:I, s:I, s:f, s:f, s:b, s:b}", "hot_used",
			                         (json_int_t)st.tier[QV_TIER_HOT].used_bytes, "hot_capacity",
			                         (json_int_t)cfg.hot_capacity, "high", cfg.high, "low",
			                         cfg.low, "applied", 0, "policy_active", idle == NULL));
		else if (rc == 0)
			cli_printf("hot tier: %s used of %s (high %.0f%%, low %.0f%%); %s\n",
			       cli_bytes(st.tier[QV_TIER_HOT].used_bytes, a, sizeof(a)),
			       cfg.hot_capacity ? cli_bytes(cfg.hot_capacity, b, sizeof(b)) : "unlimited",
			       cfg.high * 100, cfg.low * 100, idle ? idle : "run with --apply to enforce");
	} else {
		qv_policy_result r;
		cli_progress pg;
		cli_progress_start(&pg, "demote");
		rc = qv_tier_apply(s, &r, cli_progress_cb, &pg);
		cli_progress_end(&pg);
		if (rc == 0 && o.json)
			cli_json_print(json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b}",
			                         "hot_before", (json_int_t)r.hot_before, "hot_after",
			                         (json_int_t)r.hot_after, "versions_demoted",
			                         (json_int_t)r.versions, "shards", (json_int_t)r.moved.shards,
			                         "raw_bytes", (json_int_t)r.moved.raw_bytes, "stored_bytes",
			                         (json_int_t)r.moved.stored_bytes, "hot_capacity",
			                         (json_int_t)cfg.hot_capacity, "high", cfg.high, "low",
			                         cfg.low, "applied", 1));
		else if (rc == 0)
			cli_printf("tier policy: hot tier %s -> %s of %s; demoted %llu version%s (%llu shards)\n",
			       cli_bytes(r.hot_before, a, sizeof(a)), cli_bytes(r.hot_after, b, sizeof(b)),
			       cfg.hot_capacity ? cli_bytes(cfg.hot_capacity, d, sizeof(d)) : "unlimited",
			       (unsigned long long)r.versions, r.versions == 1 ? "" : "s",
			       (unsigned long long)r.moved.shards);
	}
	if (rc)
		rc = cli_fail(s, rc);
	close_store(s);
	return rc;
}

static int cmd_status(int argc, char **argv)
{
	PARSE(opt_json, 0, 0);
	qv_store *s;
	if (open_store(&o, &s))
		return EXIT_FAIL;
	qv_tier_status st;
	int rc = qv_tier_status_get(s, &st);
	if (rc) {
		rc = cli_fail(s, rc);
		close_store(s);
		return rc;
	}
	/* the DRAM tier, when a daemon serves this store */
	json_t *dram = NULL;
	qv_client *cl;
	if (!cli_in_daemon() && qv_client_connect(o.root, &cl) == 0) {
		char *resp = NULL;
		json_error_t jerr;
		if (qv_client_call(cl, "{\"op\":\"dram\"}", &resp, NULL) == 0)
			dram = json_loads(resp, 0, &jerr);
		qv_client_free(resp);
		qv_client_close(cl);
		if (dram && !json_is_true(json_object_get(dram, "ok"))) {
			json_decref(dram);
			dram = NULL;
		}
		if (dram)
			json_object_del(dram, "ok");
	}
	char a[32], b[32], d[32];
	if (o.json) {
		json_t *tiers = json_array();
		for (int t = 0; t < QV_TIERS; t++) {
			const qv_tier_usage *u = &st.tier[t];
			if (!u->dir)
				continue;
			json_array_append_new(
				tiers, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "tier", tier_name(t),
				                 "dir", u->dir, "capacity", (json_int_t)u->capacity,
				                 "used_bytes", (json_int_t)u->used_bytes, "raw_bytes",
				                 (json_int_t)u->raw_bytes, "shards", (json_int_t)u->shards,
				                 "versions", (json_int_t)u->versions));
		}
		cli_json_print(json_pack("{s:s, s:o, s:I, s:I, s:I, s:f, s:f, s:o}", "root",
		                         qv_store_root(s), "tiers", tiers, "mixed_versions",
		                         (json_int_t)st.mixed_versions, "saved_by_compression",
		                         (json_int_t)st.saved_by_compression, "saved_by_dedup",
		                         (json_int_t)st.saved_by_dedup, "high", st.high, "low", st.low,
		                         "dram", dram ? dram : json_null()));
		dram = NULL;
	} else {
		cli_printf("store %s\n", qv_store_root(s));
		cli_printf("%-5s %-40s %12s %12s %8s %9s\n", "TIER", "FOLDER", "CAPACITY", "USED", "SHARDS",
		       "VERSIONS");
		for (int t = 0; t < QV_TIERS; t++) {
			const qv_tier_usage *u = &st.tier[t];
			if (!u->dir)
				continue;
			cli_printf("%-5s %-40s %12s %12s %8llu %9llu\n", tier_name(t), u->dir,
			       u->capacity ? cli_bytes(u->capacity, a, sizeof(a)) : "-",
			       cli_bytes(u->used_bytes, b, sizeof(b)), (unsigned long long)u->shards,
			       (unsigned long long)u->versions);
		}
		cli_printf("mixed versions: %llu; saved by compression %s, by dedup %s\n",
		       (unsigned long long)st.mixed_versions,
		       cli_bytes(st.saved_by_compression, a, sizeof(a)),
		       cli_bytes(st.saved_by_dedup, d, sizeof(d)));
		if (dram) {
			json_t *ents = json_object_get(dram, "entries");
			cli_printf("dram  (quiverd)  %s of %s in %zu version%s:",
			           cli_bytes((uint64_t)json_integer_value(json_object_get(dram, "used")), a,
			                     sizeof(a)),
			           cli_bytes((uint64_t)json_integer_value(json_object_get(dram, "capacity")),
			                     b, sizeof(b)),
			           json_array_size(ents), json_array_size(ents) == 1 ? "" : "s");
			for (size_t i = 0; i < json_array_size(ents); i++)
				cli_printf(" %s", json_string_value(
				                          json_object_get(json_array_get(ents, i), "version")));
			cli_printf("\n");
		} else {
			cli_printf("dram  no quiverd serves this store\n");
		}
	}
	json_decref(dram);
	close_store(s);
	return EXIT_OK;
}

/* ---- the DRAM tier (through the daemon) ---------------------------------------------------------- */
/* Sends one request to the daemon of o->root; *reply is the parsed answer. */
static int daemon_request(const struct opts *o, json_t *req, json_t **reply)
{
	qv_client *cl;
	char *txt = json_dumps(req, JSON_COMPACT), *resp = NULL;
	json_decref(req);
	*reply = NULL;
	int rc = txt ? qv_client_connect(o->root, &cl) : -ENOMEM;
	if (rc) {
		free(txt);
		if (rc == -ENOENT || rc == -ECONNREFUSED)
			cli_error("no quiverd serves this store (start one with 'quiver serve --dram SIZE')");
		else
			cli_error("cannot reach quiverd: %s", qv_strerror(rc));
		return EXIT_FAIL;
	}
	rc = qv_client_call(cl, txt, &resp, NULL);
	qv_client_close(cl);
	free(txt);
	json_error_t jerr;
	json_t *j = rc ? NULL : json_loads(resp, 0, &jerr);
	qv_client_free(resp);
	if (!j || !json_is_true(json_object_get(j, "ok"))) {
		const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
		cli_error("quiverd: %s", msg ? msg : rc ? qv_strerror(rc) : "bad reply");
		int code = j && json_integer_value(json_object_get(j, "code")) == QV_ECORRUPT
		                   ? EXIT_DAMAGE
		                   : EXIT_FAIL;
		json_decref(j);
		return code;
	}
	*reply = j;
	return EXIT_OK;
}

static int cmd_warm_cool(int argc, char **argv, int warm)
{
	PARSE(opt_json, 1, 1);
	char buf[REF_BUF];
	const char *model, *ref;
	if (cli_split_ref(argv[first], buf, sizeof(buf), &model, &ref))
		return usage_error(c, "bad MODEL[@REF] '%s'", argv[first]);
	json_t *r;
	int rc = daemon_request(&o, json_pack("{s:s, s:s, s:s}", "op", warm ? "warm" : "cool",
	                                      "model", model, "ref", ref ? ref : "current"), &r);
	if (rc)
		return rc;
	double secs = json_real_value(json_object_get(r, "seconds"));
	if (o.json)
		cli_json_print(json_pack("{s:s, s:s, s:s, s:f}", "model", model, "ref",
		                         ref ? ref : "current", "action", warm ? "warm" : "cool",
		                         "seconds", secs));
	else
		cli_printf("%s@%s %s the DRAM tier (%.2f s)\n", model, ref ? ref : "current",
		           warm ? "is in" : "left", secs);
	json_decref(r);
	return EXIT_OK;
}

static int cmd_warm(int argc, char **argv) { return cmd_warm_cool(argc, argv, 1); }
static int cmd_cool(int argc, char **argv) { return cmd_warm_cool(argc, argv, 0); }

/* ---- serve ------------------------------------------------------------------------------------- */
static int cmd_serve(int argc, char **argv)
{
	char *args[80];
	int n = 0;
	args[n++] = "quiverd";
	if (g_root) {
		args[n++] = "--root";
		args[n++] = (char *)g_root;
	}
	for (int i = 1; i < argc && n < 79; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	return daemon_main(n, args);
}

/* ---- dispatch --------------------------------------------------------------------------------- */
static const struct cmd cmds[] = {
	{"publish", cmd_publish,
	 "quiver publish MODEL PATH [--version V] [--alias NAME]... [--no-activate] [--message TEXT] [--json]",
	 "Publish PATH (a .safetensors file, or a Hugging Face style folder with sharded\n"
	 "safetensors, model.safetensors.index.json and other files) as a new version of\n"
	 "MODEL. Only tensors the store does not hold yet are written (dedup). The new\n"
	 "version becomes current unless --no-activate.\n\n"
	 "  --version V      label of the new version (default: v1, v2, ...)\n"
	 "  --alias NAME     also point alias NAME at it (repeatable)\n"
	 "  --no-activate    do not make it current\n"
	 "  --message TEXT   a note kept with the version\n"
	 "  --json           print the result as JSON"},
	{"list", cmd_list, "quiver list [MODEL] [--json]",
	 "List the models, or the versions of MODEL with their aliases, sizes and tier."},
	{"show", cmd_show, "quiver show MODEL[@REF] [--json]",
	 "Show a version: digest, time, message, aliases, files and every tensor\n"
	 "(name, dtype, shape, bytes, shard). REF is a label, an alias or a unique digest\n"
	 "prefix; the default is current."},
	{"activate", cmd_activate, "quiver activate MODEL@REF [--json]",
	 "Make MODEL@REF the current version (one transaction, recorded in history)."},
	{"rollback", cmd_rollback, "quiver rollback MODEL [--to REF] [--json]",
	 "Make the version that was current before the present one current again, or\n"
	 "REF with --to. Two rollbacks in a row return to where they started; use --to\n"
	 "to go further back (see 'quiver history')."},
	{"alias", cmd_alias, "quiver alias MODEL NAME REF | quiver alias --rm MODEL NAME",
	 "Point alias NAME of MODEL at REF (e.g. prod, canary, blue, green), or remove it.\n"
	 "An aliased version stays hot: if REF has cold shards, they are promoted."},
	{"history", cmd_history, "quiver history MODEL [--json]",
	 "Every switch of MODEL's current version: time, action, from, to."},
	{"export", cmd_export, "quiver export MODEL[@REF] OUTDIR [--json]",
	 "Rebuild the published file or folder in OUTDIR, byte for byte. Every shard's\n"
	 "digest is checked on the way; damage exits 3."},
	{"verify", cmd_verify, "quiver verify [MODEL[@REF]] [--json]",
	 "Recompute the SHA-256 of every shard of MODEL@REF (default: every version in\n"
	 "the store). Damaged shards are listed with every version they break; exit 3."},
	{"load", cmd_load,
	 "quiver load MODEL[@REF] [--device cpu|cuda:N] [--io auto|direct|buffered] [--qd N] [--chunk SIZE] [--decode-threads N] [--cold-reads N] [--host-pages auto|small|huge] [--verify] [--promote] [--json]",
	 "Stream a version's tensors from the store into memory: io_uring with O_DIRECT\n"
	 "reads into a ring of pinned buffers, then into host memory or the GPU.\n"
	 "Prints bytes, tensors, seconds, GB/s and the time to the first complete tensor.\n\n"
	 "  --device D   cpu (default) or cuda:N\n"
	 "  --io MODE    auto (default: O_DIRECT unless the version's files, hot and\n"
	 "               cold, are in the page cache), direct (io_uring, O_DIRECT; cold\n"
	 "               frames O_DIRECT too) or buffered (pread threads, page cache)\n"
	 "  --qd N       reads in flight, 1 to 256 (default 16; 4 for a GPU load's\n"
	 "               O_DIRECT reads from a rotational disk)\n"
	 "  --chunk SIZE bytes per read, a multiple of 4K from 64K to 64M (default 1M)\n"
	 "  --decode-threads N  workers decoding cold frames, 1 to 16 (default: one\n"
	 "               per core this process may run on)\n"
	 "  --cold-reads N  cold frames read at once, 1 to 64 (default: 2 when the\n"
	 "               cold tier is on a rotational disk, else 16)\n"
	 "  --host-pages P  pages of the host memory a cpu load fills: small (4 KiB),\n"
	 "               huge (2 MiB transparent huge pages: the kernel faults them in\n"
	 "               for about half the CPU time) or auto (default: huge, unless THP is\n"
	 "               off, a virtio balloon reports free pages to the hypervisor, which\n"
	 "               makes a huge page's first touch dearer, or the kernel is short of\n"
	 "               free huge pages)\n"
	 "  --verify     check every shard's XXH3 checksum on the way; damage exits 3\n"
	 "               (cold frames are always checked)\n"
	 "  --promote    also move the version's cold shards back to the hot tier\n"
	 "  --json       print the result as JSON (keys bytes, tensors, seconds, gbps,\n"
	 "               device_init_seconds, first_tensor_seconds, device, io, engine,\n"
	 "               qd, chunk_bytes, reads, verified, cold_bytes, decode_threads,\n"
	 "               cold_reads, cold_io: direct, buffered or none, cpu_seconds:\n"
	 "               user + system CPU time of the load, every thread, host_pages:\n"
	 "               small, huge or none, cold_gpu_bytes)\n"
	 "io, engine, qd, chunk_bytes and reads describe the hot shards' reads; cold_io\n"
	 "how the cold frames were read (buffered where O_DIRECT was refused). Loading to\n"
	 "a GPU, cold BF16 frames are merged and checked there (cold_gpu_bytes of them)."},
	{"init", cmd_init,
	 "quiver init [--hot DIR] [--cold DIR] [--hot-capacity SIZE] [--high 0.90] [--low 0.75]",
	 "Configure the tiers (writes ROOT/config.ini): the hot tier (fast disk, raw\n"
	 "shards; default ROOT), the cold tier (large disk, compressed shards) and the\n"
	 "hot tier's capacity and watermarks for the placement policy. Each tier keeps\n"
	 "its own temp folder. Tiers that already hold shards cannot be moved, and the\n"
	 "two tiers must be different folders. Run again to change a setting: those not\n"
	 "given keep their values. SIZE takes K, M, G, T (powers of 1024); 0 means\n"
	 "unlimited (the policy then never demotes). Refused while quiverd serves ROOT."},
	{"pin", cmd_pin, "quiver pin MODEL@REF",
	 "Keep MODEL@REF on the hot tier whatever the policy says; if it has cold shards,\n"
	 "they are promoted now."},
	{"unpin", cmd_unpin, "quiver unpin MODEL@REF", "Undo 'quiver pin'."},
	{"demote", cmd_demote, "quiver demote MODEL@REF [--json]",
	 "Move MODEL@REF's shards to the cold tier, compressed; shards that a version\n"
	 "staying hot also uses stay hot. Crash-safe: the old copy goes only after the\n"
	 "index points at the new one. The policy never demotes a current, aliased or\n"
	 "pinned version; named here, one is demoted (with a note on stderr) and stays\n"
	 "cold until 'quiver promote', 'pin' or 'activate' brings it back."},
	{"promote", cmd_promote, "quiver promote MODEL@REF [--json]",
	 "Move MODEL@REF's shards back to the hot tier, checking every frame."},
	{"tier", cmd_tier, "quiver tier [--apply] [--json]",
	 "Show hot usage against the watermarks; --apply runs the placement policy:\n"
	 "above the high watermark, the least recently loaded versions that are not\n"
	 "current, aliased or pinned go cold until usage is under the low watermark."},
	{"status", cmd_status, "quiver status [--json]",
	 "Per tier: folder, capacity, bytes used, shards and versions held; versions\n"
	 "split across tiers; bytes saved by compression and by dedup."},
	{"warm", cmd_warm, "quiver warm MODEL[@REF] [--json]",
	 "Load MODEL@REF into the daemon's pinned DRAM tier, from where loads into an\n"
	 "engine's memory run at the PCIe link's rate (needs a running quiverd)."},
	{"cool", cmd_cool, "quiver cool MODEL[@REF] [--json]",
	 "Drop MODEL@REF from the daemon's DRAM tier."},
	{"serve", cmd_serve, "quiver serve [--root DIR] [--dram SIZE] [--metrics-port N] [--no-warm]",
	 "Run quiverd, the node daemon, in the foreground (see 'quiverd --help' and\n"
	 "docs/DAEMON.md). While it runs, publish, activate, rollback, alias, rm, gc,\n"
	 "demote, promote, pin, unpin and tier go through it."},
	{"rm", cmd_rm, "quiver rm MODEL@REF [--force] [--json]",
	 "Remove a version and free the shards no other version uses. A current or\n"
	 "aliased version is refused unless --force (which drops those aliases)."},
	{"gc", cmd_gc, "quiver gc [--dry-run] [--json]",
	 "Free everything no version references: shard files, stale index entries and\n"
	 "temp files left by interrupted commands. --dry-run only reports."},
};

static const struct cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, name) == 0)
			return &cmds[i];
	return NULL;
}

static void main_help(FILE *f)
{
	fprintf(f, "usage: quiver [--root DIR] COMMAND [ARGS]\n\n"
	           "Keep and serve LLM weights: a content-addressed, versioned shard store.\n\n"
	           "Commands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  %s\n", cmds[i].usage + strlen("quiver "));
	fprintf(f, "\nMODEL may be org/name. REF is a version label, an alias or a unique digest\n"
	           "prefix (default: current). 'quiver COMMAND --help' (or 'quiver help COMMAND')\n"
	           "describes each command; 'quiver --version' prints the version.\n"
	           "Store: --root DIR, else $QUIVER_ROOT, else ~/.local/share/quiver.\n"
	           "Exit codes: 0 success, 1 failure, 2 usage error, 3 integrity damage found.\n");
}

int cli_dispatch(int argc, char **argv)
{
	const struct cmd *c = find_cmd(argv[0]);
	if (!c) {
		cli_error("unknown command '%s' (see 'quiver --help')", argv[0]);
		return EXIT_USAGE;
	}
	int rc = c->fn(argc, argv);
	return cli_output_failed() && rc == EXIT_OK ? EXIT_FAIL : rc;
}

int cli_main(int argc, char **argv)
{
	int i = 1;
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) {
			g_root = argv[i + 1];
			i += 2;
		} else if (strncmp(argv[i], "--root=", 7) == 0) {
			g_root = argv[i] + 7;
			i++;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			main_help(stdout);
			return EXIT_OK;
		} else if (strcmp(argv[i], "--version") == 0) {
			cli_printf("quiver %s\n", QUIVER_VERSION);
			return EXIT_OK;
		} else {
			cli_error("unknown option '%s'", argv[i]);
			main_help(stderr);
			return EXIT_USAGE;
		}
	}
	if (i >= argc) {
		main_help(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[i], "help") == 0) {
		const struct cmd *c = i + 1 < argc ? find_cmd(argv[i + 1]) : NULL;
		if (c)
			print_help(c);
		else
			main_help(stdout);
		return EXIT_OK;
	}
	return cli_dispatch(argc - i, argv + i);
}
