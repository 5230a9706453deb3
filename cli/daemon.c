/* quiverd: the node daemon (also `quiver serve`).
 *
 * One daemon per store root owns the store for its node: it runs the
 * changing commands (publish, rollback, demote, ...) that the CLI forwards to
 * it, so the tier policy and the DRAM tier stay coherent; keeps chosen
 * versions in pinned host memory (the DRAM tier); and loads versions into a
 * co-located engine's memory: a memfd passed over the socket for host loads,
 * the engine's own CUDA allocation (opened from its IPC handle) for GPU
 * loads. It runs in the foreground and logs to stderr, systemd style.
 *
 * Threads: the accept loop; one thread per client (bounded); one background
 * thread for the tier policy, promotions and warming. Changing commands are
 * serialized by one mutex; loads run concurrently on the shared store handle
 * (reads need no lock). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "daemon.h"
#include "proto.h"

#define MAX_CLIENTS 64
#define MAX_ARGS 512 /* a forwarded command line (64 --alias options take 128) */
#define QV_STR_(x) #x
#define QV_STR(x) QV_STR_(x)
#define MAX_TASKS 256

enum task_kind { TASK_POLICY, TASK_PROMOTE, TASK_WARM };

struct task {
	enum task_kind kind;
	char model[QV_NAME_MAX + 1];
	char label[QV_NAME_MAX + 1];
};

static struct {
	qv_store *s;
	char root[PATH_MAX];
	int listen_fd, wake[2];
	pthread_mutex_t cmd_mu;
	/* background tasks */
	pthread_t bg;
	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cv;
	struct task tasks[MAX_TASKS];
	unsigned thead, tcount;
	int bg_stop;
	/* clients */
	pthread_mutex_t cl_mu;
	pthread_cond_t cl_cv;
	int client_fd[MAX_CLIENTS];
	int n_clients;
} G = {.cmd_mu = PTHREAD_MUTEX_INITIALIZER, .bg_mu = PTHREAD_MUTEX_INITIALIZER,
       .bg_cv = PTHREAD_COND_INITIALIZER, .cl_mu = PTHREAD_MUTEX_INITIALIZER,
       .cl_cv = PTHREAD_COND_INITIALIZER, .listen_fd = -1, .wake = {-1, -1}};

void log_info(const char *fmt, ...)
{
	char buf[1024], ts[32];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s quiverd: %s\n", ts, buf);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- background tasks ----------------------------------------------------------------- */
static void task_push(enum task_kind kind, const char *model, const char *label)
{
	pthread_mutex_lock(&G.bg_mu);
	if (G.tcount < MAX_TASKS) {
		struct task *t = &G.tasks[(G.thead + G.tcount++) % MAX_TASKS];
		t->kind = kind;
		snprintf(t->model, sizeof(t->model), "%s", model ? model : "");
		snprintf(t->label, sizeof(t->label), "%s", label ? label : "");
		pthread_cond_signal(&G.bg_cv);
	} else {
		log_info("background queue full; dropped a task");
	}
	pthread_mutex_unlock(&G.bg_mu);
}

static void run_task(const struct task *t)
{
	char err[512] = "";
	double t0 = now_s();
	if (t->kind == TASK_POLICY) {
		qv_policy_result r;
		pthread_mutex_lock(&G.cmd_mu);
		int rc = qv_tier_apply(G.s, &r, NULL, NULL);
		pthread_mutex_unlock(&G.cmd_mu);
		if (rc) {
			metrics_error("tier");
			log_info("tier policy failed: %s", qv_store_errmsg(G.s));
		} else if (r.versions) {
			metrics_migration(r.versions);
			log_info("tier policy: demoted %llu versions (%llu shards) in %.2f s",
			         (unsigned long long)r.versions, (unsigned long long)r.moved.shards,
			         now_s() - t0);
		}
	} else if (t->kind == TASK_PROMOTE) {
		qv_migrate_result m;
		pthread_mutex_lock(&G.cmd_mu);
		int rc = qv_tier_promote(G.s, t->model, t->label, &m, NULL, NULL);
		pthread_mutex_unlock(&G.cmd_mu);
		if (rc) {
			metrics_error("promote");
			log_info("promoting %s@%s failed: %s", t->model, t->label, qv_store_errmsg(G.s));
		} else if (m.shards) {
			metrics_migration(1);
			log_info("promoted %s@%s: %llu shards in %.2f s", t->model, t->label,
			         (unsigned long long)m.shards, m.seconds);
		}
	} else {
		int rc = dram_warm(G.s, t->model, t->label, err, sizeof(err));
		if (rc)
			log_info("warming %s@%s: %s", t->model, t->label, err);
		else
			log_info("warm: %s@%s in DRAM (%.2f s)", t->model, t->label, now_s() - t0);
	}
}

static void *bg_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&G.bg_mu);
	for (;;) {
		while (!G.bg_stop && G.tcount == 0)
			pthread_cond_wait(&G.bg_cv, &G.bg_mu);
		if (G.bg_stop)
			break;
		struct task t = G.tasks[G.thead];
		G.thead = (G.thead + 1) % MAX_TASKS;
		G.tcount--;
		pthread_mutex_unlock(&G.bg_mu);
		run_task(&t);
		pthread_mutex_lock(&G.bg_mu);
	}
	pthread_mutex_unlock(&G.bg_mu);
	return NULL;
}

/* Queues warming of every model's current version (at start). */
static void warm_currents(void)
{
	qv_model_list *ml;
	if (qv_model_list_get(G.s, &ml))
		return;
	for (size_t i = 0; i < ml->n; i++)
		if (*ml->m[i].current)
			task_push(TASK_WARM, ml->m[i].name, ml->m[i].current);
	qv_model_list_free(ml);
}

/* ---- replies --------------------------------------------------------------------------- */
static int reply(int fd, json_t *j, int pass_fd)
{
	char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!txt)
		return -ENOMEM;
	int rc = qv__proto_send(fd, txt, strlen(txt), pass_fd);
	free(txt);
	return rc;
}

static int reply_err(int fd, const char *op, int code, const char *msg)
{
	metrics_error(op);
	return reply(fd, json_pack("{s:b, s:s, s:i}", "ok", 0, "error", msg, "code", code), -1);
}

static json_t *table_json(const qv_load *l)
{
	size_t n;
	const qv_load_tensor *t = qv_load_tensors(l, &n);
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *shape = json_array();
		for (uint32_t d = 0; d < t[i].ndim; d++)
			json_array_append_new(shape, json_integer(t[i].shape[d]));
		json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:I, s:I}", "name", t[i].name,
		                                     "dtype", t[i].dtype, "shape", shape, "offset",
		                                     (json_int_t)t[i].offset, "bytes",
		                                     (json_int_t)t[i].bytes));
	}
	return arr;
}

/* ---- ops ------------------------------------------------------------------------------ */
static const char *const forwardable[] = {"publish", "activate", "rollback", "alias",
                                          "rm",      "gc",       "demote",   "promote",
                                          "pin",     "unpin",    "tier",     NULL};

/* The CLI's follow-up hook (cli_set_follow_hook): promote or warm a version
 * in the background. */
static void follow_up(enum cli_follow what, const char *model, const char *ref)
{
	task_push(what == CLI_FOLLOW_PROMOTE ? TASK_PROMOTE : TASK_WARM, model, ref);
}

/* Reads what the client already sent (at most 0.1 s): closing a socket with
 * unread data resets it, and the reply just written would be lost. */
static void drain_before_close(int fd)
{
	const struct timeval tv = {0, 100 * 1000};
	char sink[4096];
	shutdown(fd, SHUT_WR);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		return;
	for (int i = 0; i < 256 && recv(fd, sink, sizeof(sink), 0) > 0; i++)
		;
}

static int op_cli(int fd, json_t *req)
{
	json_t *jargv = json_object_get(req, "argv");
	char *argv[MAX_ARGS + 1];
	size_t argc = json_array_size(jargv);
	if (!json_is_array(jargv) || argc < 1 || argc > MAX_ARGS)
		return reply_err(fd, "protocol", -EINVAL,
		                 "cli: argv must be an array of 1 to " QV_STR(MAX_ARGS) " strings");
	for (size_t i = 0; i < argc; i++) {
		json_t *a = json_array_get(jargv, i);
		if (!json_is_string(a) || json_string_length(a) > 4096)
			return reply_err(fd, "protocol", -EINVAL, "cli: argv must hold strings of <= 4096 bytes");
		argv[i] = (char *)json_string_value(a);
	}
	argv[argc] = NULL;
	int ok = 0;
	for (const char *const *p = forwardable; *p; p++)
		ok |= strcmp(*p, argv[0]) == 0;
	if (!ok)
		return reply_err(fd, "protocol", -EINVAL, "cli: this command runs in the client");
	char *out = NULL, *err = NULL;
	size_t olen = 0, elen = 0;
	FILE *fo = open_memstream(&out, &olen), *fe = open_memstream(&err, &elen);
	if (!fo || !fe) {
		if (fo)
			fclose(fo);
		if (fe)
			fclose(fe);
		free(out);
		free(err);
		return reply_err(fd, argv[0], -ENOMEM, "out of memory");
	}
	pthread_mutex_lock(&G.cmd_mu);
	cli_set_streams(fo, fe);
	int rc = cli_dispatch((int)argc, argv);
	cli_set_streams(NULL, NULL);
	pthread_mutex_unlock(&G.cmd_mu);
	fclose(fo);
	fclose(fe);
	if (rc)
		metrics_error(argv[0]);
	log_info("%s: exit %d", argv[0], rc);
	if (rc == 0 && strcmp(argv[0], "publish") == 0)
		task_push(TASK_POLICY, NULL, NULL); /* the policy, in the background */
	if (rc == 0 && (strcmp(argv[0], "demote") == 0 || strcmp(argv[0], "promote") == 0))
		metrics_migration(1);
	rc = reply(fd, json_pack("{s:b, s:i, s:s, s:s}", "ok", 1, "exit", rc, "stdout", out ? out : "",
	                         "stderr", err ? err : ""), -1);
	free(out);
	free(err);
	return rc;
}

static int get_ref(json_t *req, const char **model, const char **ref)
{
	*model = json_string_value(json_object_get(req, "model"));
	*ref = json_string_value(json_object_get(req, "ref"));
	return *model ? 0 : -EINVAL;
}

static int op_warm_cool(int fd, json_t *req, int warm)
{
	const char *model, *ref;
	char err[512] = "";
	const char *op = warm ? "warm" : "cool";
	if (get_ref(req, &model, &ref))
		return reply_err(fd, op, -EINVAL, "needs \"model\" (and optionally \"ref\")");
	double t0 = now_s();
	int rc = warm ? dram_warm(G.s, model, ref, err, sizeof(err))
	              : dram_cool(G.s, model, ref, err, sizeof(err));
	if (rc)
		return reply_err(fd, op, rc, err);
	return reply(fd, json_pack("{s:b, s:f}", "ok", 1, "seconds", now_s() - t0), -1);
}

#define IPC_CACHE 16

struct conn {
	int fd;
	/* the IPC cache entries this connection opened or used, by slot and
	 * generation (an entry reopened for another handle has a new one) */
	struct { int slot; uint64_t gen; } held[IPC_CACHE];
	int n_held;
};

/* Opened CUDA IPC allocations, kept open across requests: opening a handle
 * costs milliseconds, and an engine swaps into the same allocation again and
 * again. An open mapping keeps the engine's allocation alive in the driver
 * even after the engine frees it, so each entry belongs to the connections
 * that used it and is closed when the last of them closes or sends
 * release_cuda (the engine must not free an allocation the daemon still
 * maps). When the table is full, the least recently used idle entry is
 * closed, preferring one that no connection holds (all at shutdown). Also
 * tells a swap (another version into an allocation that held one) from a
 * first load. */
static struct ipc_ent {
	uint8_t handle[QV_GPU_IPC_HANDLE_BYTES];
	int device;
	void *dptr;
	size_t bytes; /* the allocation's size, as the driver says (SIZE_MAX: unknown) */
	uint8_t digest[QV_DIGEST_LEN];
	int has_digest, busy;
	unsigned refs; /* connections holding it */
	uint64_t used, gen;
} ipc[IPC_CACHE];
static pthread_mutex_t ipc_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t ipc_clock, ipc_gen;

static void ipc_close_slot(int slot) /* ipc_mu held */
{
	if (ipc[slot].dptr)
		qv_gpu_ipc_close(ipc[slot].device, ipc[slot].dptr);
	memset(&ipc[slot], 0, sizeof(ipc[slot]));
}

/* Records that c holds slot (ipc_mu held). Entries c held that were since
 * reopened for another handle are forgotten first, so held[] never
 * overflows: at most IPC_CACHE entries are live. */
static void conn_hold(struct conn *c, int slot)
{
	int n = 0;
	for (int i = 0; i < c->n_held; i++)
		if (c->held[i].slot == slot && c->held[i].gen == ipc[slot].gen)
			return; /* held already */
	for (int i = 0; i < c->n_held; i++)
		if (ipc[c->held[i].slot].gen == c->held[i].gen)
			c->held[n++] = c->held[i];
	c->n_held = n;
	c->held[c->n_held].slot = slot;
	c->held[c->n_held].gen = ipc[slot].gen;
	c->n_held++;
	ipc[slot].refs++;
}

/* c lets go of held[i] (ipc_mu held): the mapping is closed when no other
 * connection holds it. Returns 1 if it was closed. */
static int conn_drop(struct conn *c, int i)
{
	int slot = c->held[i].slot, closed = 0;
	if (ipc[slot].gen == c->held[i].gen && ipc[slot].refs > 0 && --ipc[slot].refs == 0 &&
	    !ipc[slot].busy) {
		ipc_close_slot(slot);
		closed = 1;
	}
	c->held[i] = c->held[--c->n_held];
	return closed;
}

/* The slot of the allocation behind handle on device, opened if it was not
 * (busy from now until ipc_put, and held by c); -1 with *why set when it
 * cannot be opened, -2 when another request is loading into it. */
static int ipc_get(struct conn *c, int device, const uint8_t *handle, void **dptr, size_t *bytes,
                   const char **why)
{
	int slot = -1, rc = 0;
	pthread_mutex_lock(&ipc_mu);
	for (int i = 0; i < IPC_CACHE; i++)
		if (ipc[i].dptr && ipc[i].device == device &&
		    memcmp(ipc[i].handle, handle, QV_GPU_IPC_HANDLE_BYTES) == 0) {
			slot = ipc[i].busy ? -2 : i;
			break;
		}
	if (slot == -1) {
		for (int i = 0; i < IPC_CACHE; i++) {
			if (ipc[i].busy)
				continue;
			if (!ipc[i].dptr) { /* a free entry: take it */
				slot = i;
				break;
			}
			/* else the least recently used, one no connection holds first */
			if (slot < 0 || (ipc[i].refs == 0) > (ipc[slot].refs == 0) ||
			    ((ipc[i].refs == 0) == (ipc[slot].refs == 0) && ipc[i].used < ipc[slot].used))
				slot = i;
		}
		if (slot < 0)
			*why = "every cached CUDA IPC mapping is in use by a request";
		if (slot >= 0) {
			ipc_close_slot(slot);
			rc = qv_gpu_ipc_open(device, handle, &ipc[slot].dptr, &ipc[slot].bytes, why);
			if (rc == 0) {
				memcpy(ipc[slot].handle, handle, QV_GPU_IPC_HANDLE_BYTES);
				ipc[slot].device = device;
				ipc[slot].gen = ++ipc_gen;
			} else {
				ipc[slot].dptr = NULL;
				slot = -1;
			}
		}
	}
	if (slot >= 0) {
		ipc[slot].busy = 1;
		ipc[slot].used = ++ipc_clock;
		conn_hold(c, slot);
		*dptr = ipc[slot].dptr;
		*bytes = ipc[slot].bytes;
	}
	pthread_mutex_unlock(&ipc_mu);
	return slot;
}

/* Done with slot; ok: it now holds version digest. Returns 1 for a swap. */
static int ipc_put(int slot, int ok, const uint8_t digest[QV_DIGEST_LEN])
{
	int swap = 0;
	pthread_mutex_lock(&ipc_mu);
	if (ok) {
		swap = ipc[slot].has_digest && memcmp(ipc[slot].digest, digest, QV_DIGEST_LEN) != 0;
		memcpy(ipc[slot].digest, digest, QV_DIGEST_LEN);
		ipc[slot].has_digest = 1;
	} else {
		ipc[slot].has_digest = 0; /* its contents are unknown now */
	}
	ipc[slot].busy = 0;
	if (ipc[slot].refs == 0) /* every holder let go while it was busy */
		ipc_close_slot(slot);
	pthread_mutex_unlock(&ipc_mu);
	return swap;
}

/* c lets go of the mapping of handle (release_cuda; handle NULL: of every
 * mapping it holds, when it closes). Returns how many mappings were closed. */
static int ipc_release(struct conn *c, const uint8_t *handle)
{
	int closed = 0;
	pthread_mutex_lock(&ipc_mu);
	for (int i = c->n_held - 1; i >= 0; i--) {
		int slot = c->held[i].slot;
		if (!handle || (ipc[slot].gen == c->held[i].gen &&
		                memcmp(ipc[slot].handle, handle, QV_GPU_IPC_HANDLE_BYTES) == 0))
			closed += conn_drop(c, i);
	}
	pthread_mutex_unlock(&ipc_mu);
	return closed;
}

static void ipc_close_all(void)
{
	pthread_mutex_lock(&ipc_mu);
	for (int i = 0; i < IPC_CACHE; i++)
		if (ipc[i].dptr)
			qv_gpu_ipc_close(ipc[i].device, ipc[i].dptr);
	memset(ipc, 0, sizeof(ipc));
	pthread_mutex_unlock(&ipc_mu);
}

/* Counts a served load by where its bytes came from: the DRAM tier, or the
 * hot and cold tiers (split by the load's own statistics). */
static void record_load(const void *warm, const qv_load *l, uint64_t bytes, double secs)
{
	if (warm || !l) {
		metrics_load(SRC_DRAM, bytes, secs);
		return;
	}
	const qv_load_stats *st = qv_load_get_stats(l);
	/* bytes: the arena's size, as the reply says; the cold part is exact */
	uint64_t cold = st->cold_bytes < bytes ? st->cold_bytes : bytes, hot = bytes - cold;
	metrics_load(hot >= cold ? SRC_HOT : SRC_COLD, hot >= cold ? hot : cold, secs);
	if (hot && cold)
		metrics_bytes(hot >= cold ? SRC_COLD : SRC_HOT, hot >= cold ? cold : hot);
}

static int op_load_host(struct conn *c, json_t *req)
{
	const char *model, *ref;
	qv_version *v = NULL;
	qv_load *l = NULL;
	const qv_load *table = NULL;
	int mfd = -1, rc;
	void *map = MAP_FAILED;
	size_t bytes = 0;
	const void *warm = NULL;
	double t0 = now_s();
	if (get_ref(req, &model, &ref))
		return reply_err(c->fd, "load_host", -EINVAL, "needs \"model\" (and optionally \"ref\")");
	rc = qv_version_get(G.s, model, ref, 0, &v);
	if (rc)
		return reply_err(c->fd, "load_host", rc, qv_store_errmsg(G.s));
	int dram_fd = -1;
	warm = dram_acquire(v->digest, &bytes, &table, &dram_fd);
	uint64_t need = bytes;
	if (!warm && (rc = qv_load_size(G.s, model, v->label, &need)) != 0) {
		rc = reply_err(c->fd, "load_host", rc, qv_store_errmsg(G.s));
		goto out;
	}
	if (warm) {
		/* zero copy: the client maps the DRAM tier's memfd copy-on-write.
		 * The memfd is sealed (dram.c); the descriptor passed is
		 * read-only too, where /proc lets us reopen it so. */
		char self[64];
		snprintf(self, sizeof(self), "/proc/self/fd/%d", dram_fd);
		mfd = open(self, O_RDONLY | O_CLOEXEC);
		if (mfd < 0)
			mfd = fcntl(dram_fd, F_DUPFD_CLOEXEC, 0);
		if (mfd < 0) {
			rc = reply_err(c->fd, "load_host", -errno, "cannot share the DRAM tier's memory");
			goto out;
		}
	} else {
		mfd = memfd_create("quiver-load", MFD_CLOEXEC);
		if (mfd < 0 || ftruncate(mfd, (off_t)(need ? need : 1)) < 0 ||
		    (map = mmap(NULL, need ? need : 1, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0)) ==
		            MAP_FAILED) {
			rc = reply_err(c->fd, "load_host", -errno,
			               "cannot make the shared memory for the load");
			goto out;
		}
		qv_load_opts lo = {.device = QV_DEVICE_CPU};
		rc = qv_load_run(G.s, model, v->label, map, need, &lo, &l);
		if (rc) {
			rc = reply_err(c->fd, "load_host", rc, qv_store_errmsg(G.s));
			goto out;
		}
		table = l;
	}
	double secs = now_s() - t0;
	record_load(warm, l, need, secs);
	rc = reply(c->fd,
	           json_pack("{s:b, s:s, s:s, s:I, s:s, s:f, s:o}", "ok", 1, "model", model, "version",
	                     v->label, "bytes", (json_int_t)need, "source", warm ? "dram" : "store",
	                     "seconds", secs, "tensors", table_json(table)),
	           mfd);
out:
	if (map != MAP_FAILED)
		munmap(map, need ? need : 1);
	if (mfd >= 0)
		close(mfd);
	if (warm)
		dram_release(v->digest);
	qv_load_destroy(l);
	qv_version_free(v);
	return rc;
}

static int hexval(char ch)
{
	return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* What a load of model@ref needs: the version it resolves to now and the
 * arena's size, so that an engine can allocate before load_cuda without
 * opening the store itself (it may only be allowed the socket). */
static int op_size(struct conn *c, json_t *req)
{
	const char *model, *ref;
	qv_version *v = NULL;
	uint64_t need = 0;
	if (get_ref(req, &model, &ref))
		return reply_err(c->fd, "size", -EINVAL, "needs \"model\" (and optionally \"ref\")");
	int rc = qv_version_get(G.s, model, ref, 0, &v);
	if (rc == 0)
		rc = qv_load_size(G.s, model, v->label, &need);
	rc = rc ? reply_err(c->fd, "size", rc, qv_store_errmsg(G.s))
	        : reply(c->fd,
	                json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "model", model, "version", v->label,
	                          "bytes", (json_int_t)need),
	                -1);
	qv_version_free(v);
	return rc;
}

/* The ipc_handle field of req into handle: 0, or -1 if it is not 128
 * lowercase hex digits. */
static int get_handle(json_t *req, uint8_t handle[QV_GPU_IPC_HANDLE_BYTES])
{
	const char *hex = json_string_value(json_object_get(req, "ipc_handle"));
	if (!hex || strlen(hex) != 2 * QV_GPU_IPC_HANDLE_BYTES)
		return -1;
	for (int i = 0; i < QV_GPU_IPC_HANDLE_BYTES; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		handle[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* The engine is about to free an allocation it loaded into: the daemon
 * closes its mapping (unless another connection still uses it). */
static int op_release_cuda(struct conn *c, json_t *req)
{
	uint8_t handle[QV_GPU_IPC_HANDLE_BYTES];
	if (get_handle(req, handle))
		return reply_err(c->fd, "release_cuda", -EINVAL,
		                 "needs ipc_handle (128 lowercase hex digits)");
	int closed = ipc_release(c, handle);
	return reply(c->fd, json_pack("{s:b, s:b}", "ok", 1, "closed", closed > 0), -1);
}

static int op_load_cuda(struct conn *c, json_t *req)
{
	const char *model, *ref;
	json_t *jdev = json_object_get(req, "device"), *jbytes = json_object_get(req, "bytes");
	uint8_t handle[QV_GPU_IPC_HANDLE_BYTES];
	qv_version *v = NULL;
	qv_load *l = NULL;
	const qv_load *table = NULL;
	void *dptr = NULL;
	int slot = -1;
	const void *warm = NULL;
	size_t wbytes = 0, abytes = 0;
	uint64_t need = 0;
	double t0 = now_s();
	int rc;
	if (get_ref(req, &model, &ref) || !json_is_integer(jdev) || !json_is_integer(jbytes) ||
	    json_integer_value(jbytes) < 0 || get_handle(req, handle))
		return reply_err(c->fd, "load_cuda", -EINVAL,
		                 "needs model, device, bytes and ipc_handle (128 lowercase hex digits)");
	int device = (int)json_integer_value(jdev);
	uint64_t have = (uint64_t)json_integer_value(jbytes);
	json_t *jpci = json_object_get(req, "pci_bus_id");
	if (jpci) {
		/* the client's cuda:N is its own numbering (CUDA_VISIBLE_DEVICES);
		 * the bus id names the GPU, and this process's number for it wins */
		const char *pci = json_string_value(jpci);
		int mine = -1;
		rc = pci ? qv_gpu_device_by_pci(pci, &mine) : -EINVAL;
		if (rc) {
			char msg[256];
			if (rc == -EINVAL)
				snprintf(msg, sizeof(msg), "pci_bus_id is not a PCI bus id (0000:65:00.0)");
			else if (rc == -ENODEV)
				snprintf(msg, sizeof(msg),
				         "quiverd sees no GPU at PCI bus id %s (the client's cuda:%d): start "
				         "quiverd with that GPU visible (CUDA_VISIBLE_DEVICES)",
				         pci, device);
			else
				snprintf(msg, sizeof(msg), "quiverd was built without CUDA");
			return reply_err(c->fd, "load_cuda", rc, msg);
		}
		device = mine;
	}
	rc = qv_version_get(G.s, model, ref, 0, &v);
	if (rc)
		return reply_err(c->fd, "load_cuda", rc, qv_store_errmsg(G.s));
	warm = dram_acquire(v->digest, &wbytes, &table, NULL);
	need = wbytes;
	if (!warm && (rc = qv_load_size(G.s, model, v->label, &need)) != 0) {
		rc = reply_err(c->fd, "load_cuda", rc, qv_store_errmsg(G.s));
		goto out;
	}
	if (have < need) {
		char msg[256];
		snprintf(msg, sizeof(msg), "the allocation holds %llu bytes, %s@%s needs %llu",
		         (unsigned long long)have, model, v->label, (unsigned long long)need);
		rc = reply_err(c->fd, "load_cuda", QV_ELIMIT, msg);
		goto out;
	}
	double t_open = now_s();
	const char *why = "no reason given";
	slot = ipc_get(c, device, handle, &dptr, &abytes, &why);
	if (slot < 0) {
		char msg[256];
		if (slot == -2)
			snprintf(msg, sizeof(msg), "another request is loading into that allocation");
		else
			snprintf(msg, sizeof(msg), "cannot open the CUDA IPC handle on cuda:%d: %s", device,
			         why);
		slot = -1;
		rc = reply_err(c->fd, "load_cuda", -EBUSY, msg);
		goto out;
	}
	t_open = now_s() - t_open;
	/* the client's "bytes" is its word; the driver's is the allocation's */
	if (abytes < need) {
		char msg[256];
		snprintf(msg, sizeof(msg),
		         "the allocation behind the handle holds %zu bytes, %s@%s needs %llu", abytes,
		         model, v->label, (unsigned long long)need);
		rc = reply_err(c->fd, "load_cuda", QV_ELIMIT, msg);
		goto out;
	}
	if (have > abytes)
		have = abytes;
	double t_copy = now_s();
	if (warm) {
		rc = qv_gpu_copy_to_device(device, dptr, warm, need, 4);
		if (rc) {
			rc = reply_err(c->fd, "load_cuda", rc, "copy from the DRAM tier to the GPU failed");
			goto out;
		}
	} else {
		qv_load_opts lo = {.device = device};
		rc = qv_load_run(G.s, model, v->label, dptr, have, &lo, &l);
		if (rc) {
			rc = reply_err(c->fd, "load_cuda", rc, qv_store_errmsg(G.s));
			goto out;
		}
		table = l;
	}
	t_copy = now_s() - t_copy;
	double secs = now_s() - t0;
	record_load(warm, l, need, secs);
	if (ipc_put(slot, 1, v->digest))
		metrics_swap();
	slot = -1;
	rc = reply(c->fd,
	           json_pack("{s:b, s:s, s:s, s:I, s:i, s:s, s:f, s:f, s:f, s:o}", "ok", 1, "model",
	                     model, "version", v->label, "bytes", (json_int_t)need, "device", device,
	                     "source", warm ? "dram" : "store", "seconds", secs, "open_seconds", t_open,
	                     "copy_seconds", t_copy, "tensors", table_json(table)),
	           -1);
out:
	if (slot >= 0)
		ipc_put(slot, 0, NULL);
	if (warm)
		dram_release(v->digest);
	qv_load_destroy(l);
	qv_version_free(v);
	return rc;
}

static int dispatch(struct conn *c, json_t *req)
{
	const char *op = json_string_value(json_object_get(req, "op"));
	if (strcmp(op, "ping") == 0)
		return reply(c->fd, json_pack("{s:b, s:s, s:i, s:s, s:i}", "ok", 1, "version",
		                              QUIVER_VERSION, "pid", (int)getpid(), "root", G.root,
		                              "protocol", QV_PROTO_VERSION),
		             -1);
	if (strcmp(op, "cli") == 0)
		return op_cli(c->fd, req);
	if (strcmp(op, "warm") == 0)
		return op_warm_cool(c->fd, req, 1);
	if (strcmp(op, "cool") == 0)
		return op_warm_cool(c->fd, req, 0);
	if (strcmp(op, "dram") == 0) {
		json_t *j = dram_json();
		json_object_set_new(j, "ok", json_true());
		return reply(c->fd, j, -1);
	}
	if (strcmp(op, "load_host") == 0)
		return op_load_host(c, req);
	if (strcmp(op, "load_cuda") == 0)
		return op_load_cuda(c, req);
	if (strcmp(op, "release_cuda") == 0)
		return op_release_cuda(c, req);
	if (strcmp(op, "size") == 0)
		return op_size(c, req);
	return reply_err(c->fd, "protocol", -EINVAL, "unknown op");
}

/* ---- clients ----------------------------------------------------------------------------- */
#define FRAME_STALL_SECONDS 30 /* the longest pause inside one request */

static void *client_main(void *arg)
{
	struct conn c = {.fd = (int)(intptr_t)arg};
	/* A client may wait as long as it likes between requests (in poll), but
	 * a request it has begun must keep coming: a stalled one would hold one
	 * of the MAX_CLIENTS places for good. */
	const struct timeval stall = {FRAME_STALL_SECONDS, 0};
	if (setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof(stall)) < 0)
		log_info("client: SO_RCVTIMEO: %s", strerror(errno));
	for (;;) {
		char *buf = NULL, err[256];
		size_t len;
		int pfd = -1;
		struct pollfd idle = {.fd = c.fd, .events = POLLIN};
		while (poll(&idle, 1, -1) < 0 && errno == EINTR)
			;
		int rc = qv__proto_recv(c.fd, QV_PROTO_REQUEST_MAX, &buf, &len, &pfd);
		if (pfd >= 0)
			close(pfd); /* clients send no descriptors */
		if (rc == QV_EFORMAT || rc == QV_ELIMIT || rc == QV_ESCHEMA) {
			/* the stream is out of step: say why, then drop this client */
			reply_err(c.fd, "protocol", rc,
			          rc == QV_ELIMIT    ? "message over the size limit"
			          : rc == QV_ESCHEMA ? "unsupported protocol version"
			                             : "malformed frame");
			break;
		}
		if (rc)
			break; /* gone */
		json_t *req = qv__proto_request_parse(buf, len, err, sizeof(err));
		free(buf);
		if (!req)
			rc = reply_err(c.fd, "protocol", QV_EFORMAT, err);
		else
			rc = dispatch(&c, req);
		json_decref(req);
		if (rc)
			break;
	}
	/* its allocations may be freed from now on (or its process is gone) */
	ipc_release(&c, NULL);
	pthread_mutex_lock(&G.cl_mu);
	for (int i = 0; i < G.n_clients; i++)
		if (G.client_fd[i] == c.fd) {
			G.client_fd[i] = G.client_fd[--G.n_clients];
			break;
		}
	close(c.fd);
	pthread_cond_broadcast(&G.cl_cv);
	pthread_mutex_unlock(&G.cl_mu);
	return NULL;
}

static void on_signal(int sig)
{
	char b = (char)sig;
	if (write(G.wake[1], &b, 1) < 0) {
		/* nothing to do: the pipe is full, a wake-up is already pending */
	}
}

/* ---- main -------------------------------------------------------------------------------- */
static void usage(FILE *f)
{
	fprintf(f, "usage: quiverd [--root DIR] [--dram SIZE] [--metrics-port N] [--no-warm]\n"
	           "       quiver serve [same options]\n\n"
	           "The node daemon: serves ROOT on the Unix socket ROOT/quiverd.sock (mode 0660),\n"
	           "runs the changing quiver commands the CLI forwards to it, keeps versions in a\n"
	           "pinned DRAM tier of SIZE bytes (default 0: none) and loads them into engines'\n"
	           "memory. Current versions are warmed at start if they fit (--no-warm: not).\n"
	           "Metrics in Prometheus format on http://127.0.0.1:N/metrics (default: off).\n"
	           "Runs in the foreground, logs to stderr; SIGTERM stops it cleanly.\n");
}


/* A command of the daemon's that waits for another process's lock (a CLI
 * run with QUIVER_NO_DAEMON, a script holding it) says so in the log. */
static void wait_logged(void *arg, const char *what)
{
	(void)arg;
	log_info("waiting for %s: another process holds it", what);
}

int daemon_main(int argc, char **argv)
{
	static const struct option lo[] = {{"root", required_argument, NULL, 'r'},
	                                   {"dram", required_argument, NULL, 'd'},
	                                   {"metrics-port", required_argument, NULL, 'm'},
	                                   {"no-warm", no_argument, NULL, 'n'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	const char *root = NULL;
	long long dram = 0, port = 0;
	int warm = 1, lock_fd = -1, rc = 1;
	char err[1024] = "", path[PATH_MAX + 32];
	optind = 0;
	opterr = 0;
	for (int ch; (ch = getopt_long(argc, argv, ":h", lo, NULL)) != -1;) {
		switch (ch) {
		case 'r': root = optarg; break;
		case 'd':
			if ((dram = cli_parse_size(optarg)) < 0) {
				fprintf(stderr, "quiverd: --dram needs a size like 64G\n");
				return 2;
			}
			break;
		case 'm':
			if ((port = cli_parse_size(optarg)) < 0 || port > 65535) {
				fprintf(stderr, "quiverd: --metrics-port needs a port number\n");
				return 2;
			}
			break;
		case 'n': warm = 0; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "quiverd: bad option '%s'\n", argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (qv_store_open(root, &G.s, err, sizeof(err))) {
		fprintf(stderr, "quiverd: %s\n", err);
		return 1;
	}
	qv_tier_attach(G.s);
	qv_store_set_wait_notice(G.s, wait_logged, NULL);
	snprintf(G.root, sizeof(G.root), "%s", qv_store_root(G.s));

	/* one daemon per root */
	snprintf(path, sizeof(path), "%s/quiverd.lock", G.root);
	lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		char pid[32] = "?";
		if (lock_fd >= 0) {
			ssize_t n = pread(lock_fd, pid, sizeof(pid) - 1, 0);
			pid[n > 0 ? n : 0] = 0;
			pid[strcspn(pid, "\n")] = 0;
		}
		fprintf(stderr, "quiverd: another quiverd (pid %s) already serves %s\n", pid, G.root);
		goto out;
	}
	if (ftruncate(lock_fd, 0) == 0)
		dprintf(lock_fd, "%d\n", (int)getpid());

	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/quiverd.sock", G.root) >=
	    sizeof(sa.sun_path)) {
		fprintf(stderr, "quiverd: socket path %s/quiverd.sock is too long for a Unix socket\n",
		        G.root);
		goto out;
	}
	unlink(sa.sun_path); /* a stale socket: we hold the lock */
	G.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	mode_t old = umask(0117); /* the socket is created 0660 */
	int b = G.listen_fd < 0 ? -1 : bind(G.listen_fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (b < 0 || chmod(sa.sun_path, 0660) < 0 || listen(G.listen_fd, 64) < 0) {
		fprintf(stderr, "quiverd: %s: %s\n", sa.sun_path, strerror(errno));
		goto out;
	}
	if (pipe2(G.wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		fprintf(stderr, "quiverd: pipe: %s\n", strerror(errno));
		goto out;
	}
	struct sigaction sg = {.sa_handler = on_signal};
	sigemptyset(&sg.sa_mask);
	sigaction(SIGTERM, &sg, NULL);
	sigaction(SIGINT, &sg, NULL);
	signal(SIGPIPE, SIG_IGN);

	dram_init((uint64_t)dram);
	cli_set_shared_store(G.s);
	cli_set_follow_hook(follow_up);
	if (metrics_start((unsigned)port, G.s, err, sizeof(err))) {
		fprintf(stderr, "quiverd: %s\n", err);
		goto out;
	}
	if (pthread_create(&G.bg, NULL, bg_main, NULL) != 0) {
		fprintf(stderr, "quiverd: cannot start the background thread\n");
		goto out;
	}
	log_info("serving %s on %s (DRAM tier %lld bytes, metrics %s)", G.root, sa.sun_path, dram,
	         port ? "on" : "off");
	if (warm && dram > 0)
		warm_currents();

	for (;;) {
		struct pollfd pf[2] = {{G.listen_fd, POLLIN, 0}, {G.wake[0], POLLIN, 0}};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		if (!(pf[0].revents & POLLIN))
			continue;
		int cfd = accept4(G.listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0) {
			/* out of descriptors or memory: the connection stays queued and
			 * poll says so at once; wait rather than spin */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				static double last_log;
				if (now_s() - last_log > 10) {
					log_info("accept: %s; waiting before the next one", strerror(errno));
					last_log = now_s();
				}
				const struct timespec backoff = {0, 100 * 1000 * 1000};
				nanosleep(&backoff, NULL);
			}
			continue;
		}
		pthread_mutex_lock(&G.cl_mu);
		int full = G.n_clients >= MAX_CLIENTS;
		if (!full)
			G.client_fd[G.n_clients++] = cfd;
		pthread_mutex_unlock(&G.cl_mu);
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		if (full || pthread_create(&th, &at, client_main, (void *)(intptr_t)cfd) != 0) {
			reply_err(cfd, "protocol", -EBUSY, "too many clients; try again");
			drain_before_close(cfd);
			pthread_mutex_lock(&G.cl_mu);
			for (int i = 0; !full && i < G.n_clients; i++)
				if (G.client_fd[i] == cfd) {
					G.client_fd[i] = G.client_fd[--G.n_clients];
					break;
				}
			pthread_mutex_unlock(&G.cl_mu);
			close(cfd);
		}
		pthread_attr_destroy(&at);
	}
	log_info("stopping");
	rc = 0;
	/* wake the clients and wait for their threads */
	pthread_mutex_lock(&G.cl_mu);
	for (int i = 0; i < G.n_clients; i++)
		shutdown(G.client_fd[i], SHUT_RDWR);
	while (G.n_clients > 0)
		pthread_cond_wait(&G.cl_cv, &G.cl_mu);
	pthread_mutex_unlock(&G.cl_mu);
	pthread_mutex_lock(&G.bg_mu);
	G.bg_stop = 1;
	pthread_cond_signal(&G.bg_cv);
	pthread_mutex_unlock(&G.bg_mu);
	pthread_join(G.bg, NULL);
out:
	metrics_stop();
	if (G.listen_fd >= 0) {
		close(G.listen_fd);
		snprintf(path, sizeof(path), "%s/quiverd.sock", G.root);
		unlink(path); /* ours: we hold quiverd.lock (also when starting failed) */
	}
	for (int i = 0; i < 2; i++)
		if (G.wake[i] >= 0)
			close(G.wake[i]);
	ipc_close_all();
	dram_shutdown();
	cli_set_shared_store(NULL);
	cli_set_follow_hook(NULL);
	qv_store_close(G.s);
	if (lock_fd >= 0)
		close(lock_fd);
	if (rc == 0)
		log_info("stopped");
	return rc;
}
