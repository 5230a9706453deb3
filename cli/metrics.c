/* quiverd's metrics: counters kept by the request paths, served in the
 * Prometheus text format on 127.0.0.1 (libmicrohttpd, its own thread).
 * Counters are atomics, so recording costs a request nothing measurable;
 * tier sizes are read from the index when /metrics is scraped. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "daemon.h"

static const double buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))
static const char *const ops[] = {"publish", "activate", "rollback", "alias",     "rm",
                                  "gc",      "demote",   "promote",  "pin",       "unpin",
                                  "tier",    "warm",     "cool",     "load_host", "load_cuda",
                                  "size",    "release_cuda", "protocol", "other"};
#define N_OPS (sizeof(ops) / sizeof(ops[0]))
static const char *const sources[SRC_N] = {"dram", "hot", "cold"};

static struct {
	atomic_ullong load_bytes[SRC_N], loads[SRC_N];
	atomic_ullong bucket[N_BUCKETS + 1], count;
	atomic_ullong sum_us;
	atomic_ullong swaps, dram_hits, dram_misses, dram_evictions, migrations;
	atomic_ullong errors[N_OPS];
} M;

static struct MHD_Daemon *httpd;
static qv_store *mstore;

void metrics_load(enum metrics_source src, uint64_t bytes, double seconds)
{
	atomic_fetch_add(&M.load_bytes[src], bytes);
	atomic_fetch_add(&M.loads[src], 1);
	size_t b = 0;
	while (b < N_BUCKETS && seconds > buckets[b])
		b++;
	atomic_fetch_add(&M.bucket[b], 1);
	atomic_fetch_add(&M.count, 1);
	atomic_fetch_add(&M.sum_us, (unsigned long long)(seconds * 1e6));
}

void metrics_bytes(enum metrics_source src, uint64_t bytes)
{
	atomic_fetch_add(&M.load_bytes[src], bytes);
}

void metrics_swap(void) { atomic_fetch_add(&M.swaps, 1); }
void metrics_dram_evict(void) { atomic_fetch_add(&M.dram_evictions, 1); }
void metrics_migration(uint64_t shards) { atomic_fetch_add(&M.migrations, shards); }

void metrics_dram_lookup(int hit)
{
	atomic_fetch_add(hit ? &M.dram_hits : &M.dram_misses, 1);
}

void metrics_error(const char *op)
{
	size_t i;
	for (i = 0; i < N_OPS - 1; i++)
		if (strcmp(ops[i], op) == 0)
			break;
	atomic_fetch_add(&M.errors[i], 1);
}

struct tier_acc {
	uint64_t bytes[QV_TIERS];
};

static int acc_tier(void *arg, const uint8_t d[QV_DIGEST_LEN], const qv_shard_info *info)
{
	(void)d;
	struct tier_acc *a = arg;
	if (info->tier >= 0 && info->tier < QV_TIERS)
		a->bytes[info->tier] += info->stored_size;
	return 0;
}

#define P(...)                                                          \
	do {                                                            \
		if (fprintf(f, __VA_ARGS__) < 0)                        \
			goto out;                                       \
	} while (0)

/* The exposition text (malloc'd) or NULL. */
static char *render(size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	if (!f)
		return NULL;
	P("# HELP quiver_load_bytes_total Bytes delivered by loads, by the tier they came from.\n"
	  "# TYPE quiver_load_bytes_total counter\n");
	for (int i = 0; i < SRC_N; i++)
		P("quiver_load_bytes_total{source=\"%s\"} %llu\n", sources[i],
		  (unsigned long long)atomic_load(&M.load_bytes[i]));
	P("# HELP quiver_loads_total Loads served, by the tier most of their bytes came from.\n"
	  "# TYPE quiver_loads_total counter\n");
	for (int i = 0; i < SRC_N; i++)
		P("quiver_loads_total{source=\"%s\"} %llu\n", sources[i],
		  (unsigned long long)atomic_load(&M.loads[i]));
	P("# HELP quiver_load_duration_seconds Duration of loads served by the daemon.\n"
	  "# TYPE quiver_load_duration_seconds histogram\n");
	unsigned long long cum = 0;
	for (size_t b = 0; b < N_BUCKETS; b++) {
		cum += atomic_load(&M.bucket[b]);
		P("quiver_load_duration_seconds_bucket{le=\"%g\"} %llu\n", buckets[b], cum);
	}
	cum += atomic_load(&M.bucket[N_BUCKETS]);
	P("quiver_load_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
	P("quiver_load_duration_seconds_sum %.6f\n", (double)atomic_load(&M.sum_us) / 1e6);
	P("quiver_load_duration_seconds_count %llu\n", (unsigned long long)atomic_load(&M.count));
	P("# HELP quiver_swaps_total Loads of a version into an allocation that held another.\n"
	  "# TYPE quiver_swaps_total counter\nquiver_swaps_total %llu\n",
	  (unsigned long long)atomic_load(&M.swaps));
	P("# HELP quiver_dram_hits_total Loads served from the DRAM tier.\n"
	  "# TYPE quiver_dram_hits_total counter\nquiver_dram_hits_total %llu\n",
	  (unsigned long long)atomic_load(&M.dram_hits));
	P("# HELP quiver_dram_misses_total Loads that found their version outside the DRAM tier.\n"
	  "# TYPE quiver_dram_misses_total counter\nquiver_dram_misses_total %llu\n",
	  (unsigned long long)atomic_load(&M.dram_misses));
	P("# HELP quiver_dram_evictions_total Versions dropped from the DRAM tier to make room.\n"
	  "# TYPE quiver_dram_evictions_total counter\nquiver_dram_evictions_total %llu\n",
	  (unsigned long long)atomic_load(&M.dram_evictions));
	P("# HELP quiver_migrations_total Versions the daemon moved between the hot and cold tiers.\n"
	  "# TYPE quiver_migrations_total counter\nquiver_migrations_total %llu\n",
	  (unsigned long long)atomic_load(&M.migrations));
	P("# HELP quiver_errors_total Failed requests, by operation.\n"
	  "# TYPE quiver_errors_total counter\n");
	for (size_t i = 0; i < N_OPS; i++)
		P("quiver_errors_total{op=\"%s\"} %llu\n", ops[i],
		  (unsigned long long)atomic_load(&M.errors[i]));
	struct tier_acc acc = {{0}};
	qv_store_config cfg;
	qv_store_config_get(mstore, &cfg);
	qv_shard_foreach(mstore, acc_tier, &acc);
	uint64_t dcap, dused, dn;
	dram_usage(&dcap, &dused, &dn);
	P("# HELP quiver_tier_bytes Bytes stored on each tier.\n# TYPE quiver_tier_bytes gauge\n");
	P("quiver_tier_bytes{tier=\"dram\"} %llu\n", (unsigned long long)dused);
	P("quiver_tier_bytes{tier=\"hot\"} %llu\n", (unsigned long long)acc.bytes[QV_TIER_HOT]);
	P("quiver_tier_bytes{tier=\"cold\"} %llu\n", (unsigned long long)acc.bytes[QV_TIER_COLD]);
	P("# HELP quiver_tier_capacity_bytes Capacity of each tier (0: unlimited).\n"
	  "# TYPE quiver_tier_capacity_bytes gauge\n");
	P("quiver_tier_capacity_bytes{tier=\"dram\"} %llu\n", (unsigned long long)dcap);
	P("quiver_tier_capacity_bytes{tier=\"hot\"} %llu\n", (unsigned long long)cfg.hot_capacity);
	P("# HELP quiver_hot_high_watermark_ratio The hot tier's high watermark.\n"
	  "# TYPE quiver_hot_high_watermark_ratio gauge\nquiver_hot_high_watermark_ratio %.4f\n",
	  cfg.high);
	P("# HELP quiver_dram_versions Versions held in the DRAM tier.\n"
	  "# TYPE quiver_dram_versions gauge\nquiver_dram_versions %llu\n", (unsigned long long)dn);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
out:
	fclose(f);
	free(buf);
	return NULL;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
	(void)cls;
	(void)version;
	(void)upload;
	(void)upload_size;
	(void)state;
	struct MHD_Response *r;
	unsigned status = MHD_HTTP_OK;
	if (strcmp(method, "GET") != 0 || strcmp(url, "/metrics") != 0) {
		static const char nf[] = "not found: GET /metrics\n";
		r = MHD_create_response_from_buffer(sizeof(nf) - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
		status = MHD_HTTP_NOT_FOUND;
	} else {
		size_t len = 0;
		char *text = render(&len);
		if (!text)
			return MHD_NO;
		r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
	}
	if (!r)
		return MHD_NO;
	enum MHD_Result ok = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ok;
}

int metrics_start(unsigned port, qv_store *s, char *err, size_t errlen)
{
	mstore = s;
	if (port == 0)
		return 0;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL, handle,
	                         NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	                         MHD_OPTION_CONNECTION_LIMIT, 16u, MHD_OPTION_END);
	if (!httpd) {
		snprintf(err, errlen, "cannot serve metrics on 127.0.0.1:%u", port);
		return -EADDRINUSE;
	}
	return 0;
}

void metrics_stop(void)
{
	if (httpd)
		MHD_stop_daemon(httpd);
	httpd = NULL;
}
