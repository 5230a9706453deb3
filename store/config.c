/* Store configuration: the tiers and the placement policy's numbers.
 *
 * root/config.ini (written by `quiver init`, parsed with libinih):
 *
 *   [tiers]
 *   hot = /nvme/quiver        ; shards/ and tmp/ of the hot tier
 *   cold = /hdd/quiver        ; shards/ and tmp/ of the cold tier (optional)
 *   hot_capacity = 500000000000
 *   high = 0.90
 *   low = 0.75
 *
 * Each tier keeps its own tmp/ so that a migration's rename never crosses a
 * file system. A store without config.ini has one hot tier at the root. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "store_int.h"

struct cfg {
	char hot[PATH_MAX];
	char cold[PATH_MAX];
	uint64_t hot_capacity;
	double high, low;
	char bad[256];
};

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct cfg *c = user;
	char *end;
	if (strcmp(section, "tiers") != 0)
		return 1; /* other sections belong to later features */
	if (strcmp(name, "hot") == 0) {
		snprintf(c->hot, sizeof(c->hot), "%s", value);
	} else if (strcmp(name, "cold") == 0) {
		snprintf(c->cold, sizeof(c->cold), "%s", value);
	} else if (strcmp(name, "hot_capacity") == 0) {
		c->hot_capacity = strtoull(value, &end, 10);
		if (*end)
			goto bad;
	} else if (strcmp(name, "high") == 0 || strcmp(name, "low") == 0) {
		double v = strtod(value, &end);
		if (*end || !(v > 0 && v <= 1)) /* NaN too */
			goto bad;
		*(strcmp(name, "high") == 0 ? &c->high : &c->low) = v;
	}
	return 1;
bad:
	snprintf(c->bad, sizeof(c->bad), "%s = %s", name, value);
	return 0;
}

static char *join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", a, b);
	return p;
}

static int tier_set(struct qv__tier *t, const char *dir)
{
	t->dir = strdup(dir);
	t->shard_dir = join(dir, "shards");
	t->tmp_dir = join(dir, "tmp");
	if (!t->dir || !t->shard_dir || !t->tmp_dir)
		return -ENOMEM;
	int rc = qv__mkdir_p(t->shard_dir, 0755);
	if (rc == 0)
		rc = qv__mkdir_p(t->tmp_dir, 0755);
	return rc;
}

int qv__config_load(qv_store *s, char *errbuf, size_t errlen)
{
	struct cfg c = {.high = 0.90, .low = 0.75};
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/config.ini", s->root);
	int r = ini_parse(path, on_entry, &c);
	if (r < 0) { /* no file: the default layout */
		snprintf(c.hot, sizeof(c.hot), "%s", s->root);
	} else if (r > 0) {
		snprintf(errbuf, errlen, "%s: line %d: bad setting %s", path, r, c.bad);
		return QV_EFORMAT;
	}
	if (!*c.hot)
		snprintf(c.hot, sizeof(c.hot), "%s", s->root);
	if (c.low > c.high) {
		snprintf(errbuf, errlen, "%s: low watermark %.2f is above high %.2f", path, c.low, c.high);
		return QV_EFORMAT;
	}
	int rc = tier_set(&s->tier[QV_TIER_HOT], c.hot);
	if (rc == 0 && *c.cold)
		rc = tier_set(&s->tier[QV_TIER_COLD], c.cold);
	if (rc) {
		snprintf(errbuf, errlen, "%s: cannot set up the tier folders: %s", path, qv_strerror(rc));
		return rc;
	}
	s->shard_dir = s->tier[QV_TIER_HOT].shard_dir;
	s->tmp_dir = s->tier[QV_TIER_HOT].tmp_dir;
	s->hot_capacity = c.hot_capacity;
	s->high = c.high;
	s->low = c.low;
	return 0;
}

void qv__config_free(qv_store *s)
{
	for (int i = 0; i < QV_TIERS; i++) {
		free(s->tier[i].dir);
		free(s->tier[i].shard_dir);
		free(s->tier[i].tmp_dir);
	}
}

void qv_store_config_get(const qv_store *s, qv_store_config *out)
{
	out->hot_dir = s->tier[QV_TIER_HOT].dir;
	out->cold_dir = s->tier[QV_TIER_COLD].dir;
	out->hot_capacity = s->hot_capacity;
	out->high = s->high;
	out->low = s->low;
}

const char *qv_store_tmp_dir(const qv_store *s, int tier)
{
	return tier >= 0 && tier < QV_TIERS ? s->tier[tier].tmp_dir : NULL;
}

static int dir_has_files(const char *dir)
{
	char cmd[PATH_MAX];
	struct stat st;
	/* a fan-out folder exists once any shard was written there */
	for (int a = 0; a < 256; a++) {
		snprintf(cmd, sizeof(cmd), "%s/shards/%02x", dir, a);
		if (stat(cmd, &st) == 0)
			return 1;
	}
	return 0;
}

int qv_store_init(const char *root, const qv_store_config *cfg, char *errbuf, size_t errlen)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	int rc = qv__mkdir_p(root, 0755);
	if (rc) {
		snprintf(errbuf, errlen, "%s: %s", root, qv_strerror(rc));
		return rc;
	}
	if (!(cfg->low > 0 && cfg->high <= 1 && cfg->low <= cfg->high)) { /* NaN too */
		snprintf(errbuf, errlen, "watermarks must satisfy 0 < low <= high <= 1 (low %.2f, high %.2f)",
		         cfg->low, cfg->high);
		return -EINVAL;
	}
	/* Existing shards stay where they are: refuse to point a tier elsewhere. */
	qv_store *s = NULL;
	rc = qv_store_open(root, &s, errbuf, errlen);
	if (rc)
		return rc;
	/* tier folders are kept as absolute paths: later commands run anywhere */
	char hot_abs[PATH_MAX], cold_abs[PATH_MAX];
	qv_store_config c2 = *cfg;
	if (cfg->hot_dir && (qv__mkdir_p(cfg->hot_dir, 0755) || !realpath(cfg->hot_dir, hot_abs))) {
		snprintf(errbuf, errlen, "%s: %s", cfg->hot_dir, strerror(errno));
		qv_store_close(s);
		return -errno;
	}
	if (cfg->cold_dir && (qv__mkdir_p(cfg->cold_dir, 0755) || !realpath(cfg->cold_dir, cold_abs))) {
		snprintf(errbuf, errlen, "%s: %s", cfg->cold_dir, strerror(errno));
		qv_store_close(s);
		return -errno;
	}
	if (cfg->hot_dir)
		c2.hot_dir = hot_abs;
	if (cfg->cold_dir)
		c2.cold_dir = cold_abs;
	cfg = &c2;
	const char *now_hot = s->tier[QV_TIER_HOT].dir, *now_cold = s->tier[QV_TIER_COLD].dir;
	const char *hot = cfg->hot_dir ? cfg->hot_dir : now_hot;
	if (strcmp(hot, now_hot) != 0 && dir_has_files(now_hot)) {
		snprintf(errbuf, errlen, "the hot tier %s already holds shards; it cannot be moved to %s",
		         now_hot, hot);
		rc = QV_EEXIST;
	} else if (now_cold && (!cfg->cold_dir || strcmp(cfg->cold_dir, now_cold) != 0) &&
	           dir_has_files(now_cold)) {
		snprintf(errbuf, errlen, "the cold tier %s already holds shards; it cannot be moved",
		         now_cold);
		rc = QV_EEXIST;
	}
	char hot_copy[PATH_MAX];
	snprintf(hot_copy, sizeof(hot_copy), "%s", hot);
	qv_store_close(s);
	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/config.ini", root);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		snprintf(errbuf, errlen, "%s: %s", tmp, strerror(errno));
		return -errno;
	}
	fprintf(f, "# written by quiver init\n[tiers]\nhot = %s\n", hot_copy);
	if (cfg->cold_dir)
		fprintf(f, "cold = %s\n", cfg->cold_dir);
	fprintf(f, "hot_capacity = %llu\nhigh = %.4f\nlow = %.4f\n",
	        (unsigned long long)cfg->hot_capacity, cfg->high, cfg->low);
	rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -errno;
	if (fclose(f) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc == 0)
		rc = qv__fsync_dir(root);
	if (rc) {
		unlink(tmp);
		snprintf(errbuf, errlen, "%s: %s", path, qv_strerror(rc));
		return rc;
	}
	/* open once more: creates the tier folders and checks the file */
	rc = qv_store_open(root, &s, errbuf, errlen);
	qv_store_close(s);
	return rc;
}

int qv_store_writer_lock(qv_store *s)
{
	return qv__lock_shared(s);
}

void qv_store_writer_unlock(qv_store *s)
{
	qv__unlock(s);
}

void qv_store_set_tier_reader(qv_store *s, qv_tier_read_fn fn, void *arg)
{
	s->tier_read = fn;
	s->tier_read_arg = arg;
}

int qv__shard_read(qv_store *s, const uint8_t d[QV_DIGEST_LEN], int tier, uint64_t off, void *buf,
                   size_t len)
{
	if (tier != QV_TIER_HOT) {
		if (!s->tier_read)
			return qv__err(s, -ENOTSUP, "shard on tier %d, and no reader for that tier", tier);
		return s->tier_read(s->tier_read_arg, s, d, tier, off, buf, len);
	}
	char path[PATH_MAX];
	qv_shard_path_tier(s, d, QV_TIER_HOT, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? QV_ECORRUPT : -errno;
	int rc = qv__pread_full(fd, buf, len, off);
	close(fd);
	return rc == QV_EFORMAT ? QV_ECORRUPT : rc;
}
