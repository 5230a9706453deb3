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
	char bad[256]; /* the first setting refused, explained */
	char bad_name[96]; /* its key, to tell its line from a syntax error's */
};

/* A setting that is not understood stops the store from opening: a typo
 * ("hot_capcity") silently ignored would leave the tiers other than
 * intended. */
static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct cfg *c = user;
	char *end, why[200];
	if (strcmp(section, "tiers") != 0) {
		snprintf(why, sizeof(why), "unknown section [%.80s]", section);
		goto bad;
	}
	if (strcmp(name, "hot") == 0 || strcmp(name, "cold") == 0) {
		if (!*value) {
			snprintf(why, sizeof(why), "%s has no folder", name);
			goto bad;
		}
		snprintf(strcmp(name, "hot") == 0 ? c->hot : c->cold, PATH_MAX, "%s", value);
	} else if (strcmp(name, "hot_capacity") == 0) {
		errno = 0;
		unsigned long long v = strtoull(value, &end, 10);
		if (*value < '0' || *value > '9' || *end || errno == ERANGE || v > INT64_MAX) {
			snprintf(why, sizeof(why), "hot_capacity = %.80s is not a byte count", value);
			goto bad;
		}
		c->hot_capacity = v;
	} else if (strcmp(name, "high") == 0 || strcmp(name, "low") == 0) {
		double v = strtod(value, &end);
		if (!*value || *end || !(v > 0 && v <= 1)) { /* NaN too */
			snprintf(why, sizeof(why), "%s = %.80s is not a fraction in (0, 1]", name, value);
			goto bad;
		}
		*(strcmp(name, "high") == 0 ? &c->high : &c->low) = v;
	} else {
		snprintf(why, sizeof(why), "unknown setting %.80s", name);
		goto bad;
	}
	return 1;
bad:
	if (!*c->bad) {
		snprintf(c->bad, sizeof(c->bad), "%s", why);
		snprintf(c->bad_name, sizeof(c->bad_name), "%s", name); /* the line named */
	}
	return 0;
}

/* Whether line n (from 1) of path mentions word: libinih reports the first
 * error's line, which may be a syntax error before the first refused setting. */
static int line_has(const char *path, int n, const char *word)
{
	FILE *f = fopen(path, "re");
	char line[INI_MAX_LINE + 2];
	int found = 0;
	for (int i = 1; f && fgets(line, sizeof(line), f); i++)
		if (i == n) {
			found = *word && strstr(line, word) != NULL;
			break;
		}
	if (f)
		fclose(f);
	return found;
}

/* Parses the config file at path into c: 0, -ENOENT if there is none, or
 * QV_EFORMAT with the reason in errbuf. */
static int config_parse(const char *path, struct cfg *c, char *errbuf, size_t errlen)
{
	int r = ini_parse(path, on_entry, c);
	if (r == -1)
		return errno == ENOENT ? -ENOENT : -errno;
	if (r != 0) {
		snprintf(errbuf, errlen, "%s: line %d: %s", path, r,
		         *c->bad && line_has(path, r, c->bad_name)
		                 ? c->bad
		                 : "not a 'key = value' line or [section] (or longer than the limit)");
		return QV_EFORMAT;
	}
	if (c->low > c->high) {
		snprintf(errbuf, errlen, "%s: low watermark %g is above high %g", path, c->low, c->high);
		return QV_EFORMAT;
	}
	return 0;
}

/* A tier's folder as the config names it: none is the root itself, and a
 * relative one (a hand-edited file) is relative to the root, not to wherever
 * a command runs. */
static int tier_dir(const char *root, const char *dir, char *out, size_t len)
{
	int n;
	if (!*dir || *dir == '/') {
		n = snprintf(out, len, "%s", *dir ? dir : root);
		return n >= 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
	}
	/* Before 2026-11-30 init wrote the root as typed when no --hot was
	 * given ("hot = store" for --root store): such a value names the root
	 * itself, or a folder relative to where init ran. */
	const char *d = strncmp(dir, "./", 2) == 0 ? dir + 2 : dir;
	size_t rl = strlen(root), dl = strlen(d);
	struct stat st;
	char shards[PATH_MAX * 2];
	if (strcmp(root, d) == 0 || (rl > dl && strcmp(root + rl - dl, d) == 0 && root[rl - dl - 1] == '/')) {
		n = snprintf(out, len, "%s", root);
		return n >= 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
	}
	n = snprintf(out, len, "%s/%s", root, dir);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	snprintf(shards, sizeof(shards), "%s/shards", dir);
	if (stat(out, &st) != 0 && stat(shards, &st) == 0) /* relative to here, as it was */
		snprintf(out, len, "%s", dir);
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
	if (stat(path, &s->config_st) != 0)
		memset(&s->config_st, 0, sizeof(s->config_st));
	int rc = config_parse(path, &c, errbuf, errlen);
	if (rc == QV_EFORMAT)
		return rc;
	if (rc && rc != -ENOENT) {
		snprintf(errbuf, errlen, "%s: %s", path, qv_strerror(rc));
		return rc;
	}
	char hot[PATH_MAX * 2 + 2], cold[PATH_MAX * 2 + 2];
	rc = tier_dir(s->root, c.hot, hot, sizeof(hot));
	if (rc == 0 && *c.cold)
		rc = tier_dir(s->root, c.cold, cold, sizeof(cold));
	if (rc == 0)
		rc = tier_set(&s->tier[QV_TIER_HOT], hot);
	if (rc == 0 && *c.cold)
		rc = tier_set(&s->tier[QV_TIER_COLD], cold);
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

int qv__config_check(qv_store *s)
{
	char path[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof(path), "%s/config.ini", s->root);
	if (stat(path, &st) != 0)
		memset(&st, 0, sizeof(st));
	if (st.st_ino == s->config_st.st_ino && st.st_dev == s->config_st.st_dev &&
	    st.st_size == s->config_st.st_size && st.st_mtim.tv_sec == s->config_st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == s->config_st.st_mtim.tv_nsec)
		return 0;
	return qv__err(s, QV_ECHANGED,
	               "%s changed since this command opened the store ('quiver init'); run it again",
	               path);
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

static int count_tiers(void *arg, const uint8_t d[QV_DIGEST_LEN], const qv_shard_info *info)
{
	(void)d;
	uint64_t *n = arg;
	if (info->tier >= 0 && info->tier < QV_TIERS)
		n[info->tier]++;
	return 0;
}

/* Whether a and b name one folder (both exist: init made them). */
static int same_dir(const char *a, const char *b)
{
	struct stat x, y;
	if (stat(a, &x) == 0 && stat(b, &y) == 0)
		return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
	return strcmp(a, b) == 0;
}

/* Why dir cannot be written as "key = dir" into config.ini, or NULL. */
static const char *bad_tier_path(const char *key, const char *dir)
{
	if (!qv__utf8_valid(dir))
		return "is not valid UTF-8";
	for (const unsigned char *p = (const unsigned char *)dir; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return "holds a control character";
	if (strchr(dir, ';'))
		return "holds ';', which config.ini reads as a comment";
	size_t n = strlen(dir);
	if (n && (dir[n - 1] == ' ' || dir[n - 1] == '\t'))
		return "ends with a space, which config.ini drops";
	/* libinih reads lines of at most INI_MAX_LINE - 1 bytes, newline included */
	if (strlen(key) + 3 + n + 1 > INI_MAX_LINE - 1)
		return "is too long for a config.ini line (libinih's limit)";
	return NULL;
}

/* v in as few digits as read back exactly: 0.9, not 0.90000000000000002 */
static const char *exact(double v, char *buf, size_t len)
{
	for (int digits = 15; digits <= 17; digits++) {
		snprintf(buf, len, "%.*g", digits, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
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
		snprintf(errbuf, errlen, "watermarks must satisfy 0 < low <= high <= 1 (low %g, high %g)",
		         cfg->low, cfg->high);
		return -EINVAL;
	}
	if (cfg->hot_capacity > INT64_MAX) {
		snprintf(errbuf, errlen, "a hot capacity of %llu bytes is too large",
		         (unsigned long long)cfg->hot_capacity);
		return -EINVAL;
	}
	qv_store *s = NULL;
	int locked = 0;
	rc = qv_store_open(root, &s, errbuf, errlen);
	if (rc)
		return rc;
	/* tier folders are kept as absolute paths: later commands run anywhere */
	char hot[PATH_MAX], cold[PATH_MAX];
	/* folders made here go again if init is refused */
	struct qv__made made_hot = {0}, made_cold = {0};
	int written = 0; /* config.ini names the folders: they stay */
	const char *want_hot = cfg->hot_dir ? cfg->hot_dir : root;
	if ((rc = qv__mkdir_p_new(want_hot, 0755, &made_hot)) != 0 ||
	    (!realpath(want_hot, hot) && (rc = -errno))) {
		snprintf(errbuf, errlen, "%s: %s", want_hot, qv_strerror(rc));
		goto fail;
	}
	if (cfg->cold_dir && ((rc = qv__mkdir_p_new(cfg->cold_dir, 0755, &made_cold)) != 0 ||
	                      (!realpath(cfg->cold_dir, cold) && (rc = -errno)))) {
		snprintf(errbuf, errlen, "%s: %s", cfg->cold_dir, qv_strerror(rc));
		goto fail;
	}
	const char *why;
	rc = -EINVAL;
	if ((why = bad_tier_path("hot", hot)) != NULL) {
		snprintf(errbuf, errlen, "the hot tier's folder %s %s", hot, why);
		goto fail;
	}
	if (cfg->cold_dir && (why = bad_tier_path("cold", cold)) != NULL) {
		snprintf(errbuf, errlen, "the cold tier's folder %s %s", cold, why);
		goto fail;
	}
	/* one folder for both would have a demotion rename its cold copy onto
	 * the hot file, then unlink it as the old copy */
	if (cfg->cold_dir && same_dir(hot, cold)) {
		snprintf(errbuf, errlen, "the hot and cold tiers must be different folders (both are %s)",
		         hot);
		goto fail;
	}
	/* Existing shards stay where they are: refuse to point a tier that
	 * holds some elsewhere. Writers (publish, migrations) hold the lock
	 * shared: none writes a shard between this count and the new file. */
	rc = qv__lock_exclusive(s);
	if (rc) {
		snprintf(errbuf, errlen, "%s/lock: %s", root, qv_strerror(rc));
		goto fail;
	}
	locked = 1;
	uint64_t held[QV_TIERS] = {0};
	rc = qv_shard_foreach(s, count_tiers, held);
	if (rc) {
		snprintf(errbuf, errlen, "%s", qv_store_errmsg(s));
		goto fail;
	}
	const char *now_hot = s->tier[QV_TIER_HOT].dir, *now_cold = s->tier[QV_TIER_COLD].dir;
	rc = QV_EEXIST;
	if (held[QV_TIER_HOT] && !same_dir(now_hot, hot)) {
		snprintf(errbuf, errlen,
		         "the hot tier %s already holds %llu shards; it cannot be moved to %s", now_hot,
		         (unsigned long long)held[QV_TIER_HOT], hot);
		goto fail;
	}
	if (held[QV_TIER_COLD] && !now_cold) {
		/* config.ini lost or edited: the index still has cold shards */
		snprintf(errbuf, errlen,
		         "the index holds %llu cold shards, but config.ini names no cold tier; "
		         "restore its 'cold =' line by hand",
		         (unsigned long long)held[QV_TIER_COLD]);
		goto fail;
	}
	if (held[QV_TIER_COLD] && (!cfg->cold_dir || !same_dir(now_cold, cold))) {
		snprintf(errbuf, errlen, "the cold tier %s already holds %llu shards; it cannot be %s",
		         now_cold, (unsigned long long)held[QV_TIER_COLD],
		         cfg->cold_dir ? "moved" : "dropped");
		goto fail;
	}

	snprintf(path, sizeof(path), "%s/config.ini", root);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		rc = -errno;
		snprintf(errbuf, errlen, "%s: %s", tmp, strerror(errno));
		goto fail;
	}
	char high[32], low[32];
	fprintf(f, "# written by quiver init\n[tiers]\nhot = %s\n", hot);
	if (cfg->cold_dir)
		fprintf(f, "cold = %s\n", cold);
	fprintf(f, "hot_capacity = %llu\nhigh = %s\nlow = %s\n", (unsigned long long)cfg->hot_capacity,
	        exact(cfg->high, high, sizeof(high)), exact(cfg->low, low, sizeof(low)));
	rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -errno;
	if (fclose(f) != 0 && rc == 0)
		rc = -errno;
	if (rc) {
		snprintf(errbuf, errlen, "%s: %s", tmp, qv_strerror(rc));
		goto out_tmp;
	}
	/* the file must say what was meant before it replaces the old one */
	struct cfg back = {.high = 0.90, .low = 0.75};
	rc = config_parse(tmp, &back, errbuf, errlen);
	if (rc == 0 && (strcmp(back.hot, hot) != 0 || strcmp(back.cold, cfg->cold_dir ? cold : "") != 0 ||
	                back.hot_capacity != cfg->hot_capacity || back.high != cfg->high ||
	                back.low != cfg->low)) {
		snprintf(errbuf, errlen, "%s does not read back as written", tmp);
		rc = QV_EFORMAT;
	}
	if (rc)
		goto out_tmp;
	if (rename(tmp, path) < 0)
		rc = -errno;
	written = rc == 0;
	if (rc == 0)
		rc = qv__fsync_dir(root);
	if (rc) {
		snprintf(errbuf, errlen, "%s: %s", path, qv_strerror(rc));
		goto out_tmp;
	}
	qv__unlock(s);
	qv_store_close(s);
	/* open once more: creates the tier folders and checks the file */
	rc = qv_store_open(root, &s, errbuf, errlen);
	qv_store_close(s);
	return rc;
out_tmp:
	unlink(tmp);
fail:
	if (locked)
		qv__unlock(s);
	qv_store_close(s);
	if (!written) { /* the cold tier first: it may lie inside the hot one */
		qv__made_undo(&made_cold);
		qv__made_undo(&made_hot);
	}
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
