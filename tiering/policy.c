/* The placement policy and the tier status.
 *
 * The policy is deliberately simple and explainable: protected versions
 * (current, aliased, pinned) never leave the hot tier; when hot usage is over
 * the high watermark, other versions are demoted least recently loaded first
 * (never loaded counts as oldest, ties by age) until usage is under the low
 * watermark. Shards shared with a version that stays hot stay hot. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/tier.h"
#include "tier_int.h"

struct usage_acc {
	qv_tier_status *st;
};

static int add_usage(void *arg, const uint8_t d[QV_DIGEST_LEN], const qv_shard_info *info)
{
	(void)d;
	qv_tier_status *st = arg;
	if (info->tier < 0 || info->tier >= QV_TIERS)
		return 0;
	qv_tier_usage *u = &st->tier[info->tier];
	u->used_bytes += info->stored_size;
	u->raw_bytes += info->size;
	u->shards++;
	return 0;
}

static int hot_bytes(qv_store *s, uint64_t *out)
{
	qv_tier_status st;
	memset(&st, 0, sizeof(st));
	int rc = qv_shard_foreach(s, add_usage, &st);
	*out = st.tier[QV_TIER_HOT].used_bytes;
	return rc;
}

struct cand {
	char model[QV_NAME_MAX + 1];
	char label[QV_NAME_MAX + 1];
	int64_t last_load_ns, created_ns;
};

/* Raw bytes of model@label's shards on the hot tier (0 if it cannot tell). */
static uint64_t hot_raw_of(qv_store *s, const char *model, const char *label)
{
	struct qv__dlist l;
	qv_version *v = NULL;
	uint64_t sum = 0;
	int rc = qv_version_get(s, model, label, QV_WITH_MANIFEST, &v);
	if (rc == 0)
		rc = qv__version_shards(v, &l);
	qv_version_free(v);
	if (rc != 0)
		return 0;
	for (size_t i = 0; i < l.n; i++) {
		qv_shard_info info;
		if (qv_shard_info_get(s, l.d[i], &info) == 0 && info.tier == QV_TIER_HOT)
			sum += info.size;
	}
	qv__dlist_free(&l);
	return sum;
}

static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->last_load_ns != y->last_load_ns)
		return x->last_load_ns < y->last_load_ns ? -1 : 1;
	if (x->created_ns != y->created_ns)
		return x->created_ns < y->created_ns ? -1 : 1;
	return strcmp(x->label, y->label);
}

/* Versions the policy may demote: unprotected, with at least one hot shard. */
static int candidates(qv_store *s, struct cand **out, size_t *n_out)
{
	qv_model_list *ml = NULL;
	struct cand *c = NULL;
	size_t n = 0, cap = 0;
	int rc = qv_model_list_get(s, &ml);
	for (size_t m = 0; rc == 0 && m < ml->n; m++) {
		qv_version_list *vl = NULL;
		rc = qv_version_list_get(s, ml->m[m].name, &vl);
		for (size_t i = 0; rc == 0 && i < vl->n; i++) {
			const qv_version *lv = &vl->v[i];
			if (lv->n_aliases || lv->pinned)
				continue;
			qv_version *v;
			int tier = QV_TIER_HOT;
			rc = qv_version_get(s, lv->model, lv->label, QV_WITH_MANIFEST, &v);
			if (rc == 0)
				rc = qv_tier_of_version(s, v, &tier);
			qv_version_free(v);
			if (rc || tier == QV_TIER_COLD)
				continue;
			if (n == cap) {
				cap = cap ? 2 * cap : 16;
				struct cand *nc = realloc(c, cap * sizeof(*c));
				if (!nc) {
					rc = qv_store_fail(s, -ENOMEM, "out of memory");
					break;
				}
				c = nc;
			}
			snprintf(c[n].model, sizeof(c[n].model), "%s", lv->model);
			snprintf(c[n].label, sizeof(c[n].label), "%s", lv->label);
			c[n].last_load_ns = lv->last_load_ns;
			c[n].created_ns = lv->created_ns;
			n++;
		}
		qv_version_list_free(vl);
	}
	qv_model_list_free(ml);
	if (rc) {
		free(c);
		return rc;
	}
	if (n)
		qsort(c, n, sizeof(*c), cmp_cand);
	*out = c;
	*n_out = n;
	return 0;
}

int qv_tier_apply(qv_store *s, qv_policy_result *res, qv_progress_fn progress,
                  void *progress_arg)
{
	qv_policy_result r;
	qv_store_config cfg;
	struct cand *c = NULL;
	size_t n = 0;
	memset(&r, 0, sizeof(r));
	qv_store_config_get(s, &cfg);
	int rc = hot_bytes(s, &r.hot_before);
	r.hot_after = r.hot_before;
	if (rc || !cfg.cold_dir || cfg.hot_capacity == 0 ||
	    (double)r.hot_before <= cfg.high * (double)cfg.hot_capacity)
		goto out;
	rc = candidates(s, &c, &n);
	double low = cfg.low * (double)cfg.hot_capacity;
	/* a version that cannot be demoted (removed meanwhile, a damaged copy)
	 * does not stop the others; the first failure is reported */
	int first = 0;
	char why[512] = "";
	/* progress: the bytes the hot tier sheds, of the hot bytes of the
	 * versions it will take, in order, to shed enough (shards they share
	 * with versions staying hot stay, so it may end short of the total) */
	struct qv__tier_progress pg = {.fn = progress, .arg = progress_arg};
	for (size_t i = 0; progress && i < n && (double)pg.total < (double)r.hot_before - low; i++)
		pg.total += hot_raw_of(s, c[i].model, c[i].label);
	for (size_t i = 0; rc == 0 && i < n && (double)r.hot_after > low; i++) {
		qv_migrate_result m;
		pg.base = r.hot_after < r.hot_before ? r.hot_before - r.hot_after : 0;
		int mrc = qv__tier_demote_policy(s, c[i].model, c[i].label, &m, &pg);
		if (mrc) {
			if (!first) {
				first = mrc;
				snprintf(why, sizeof(why), "demoting %s@%s: %s", c[i].model, c[i].label,
				         qv_store_errmsg(s));
			}
			/* it may have moved some shards before failing */
			rc = hot_bytes(s, &r.hot_after);
			/* a full or broken cold tier fails every version alike */
			if (mrc == -ENOSPC || mrc == -EIO || mrc == -EROFS || mrc == -EDQUOT)
				break;
			continue;
		}
		r.versions += m.shards > 0; /* one whose shards all stay hot moved nothing */
		r.moved.shards += m.shards;
		r.moved.raw_bytes += m.raw_bytes;
		r.moved.stored_bytes += m.stored_bytes;
		r.moved.kept += m.kept;
		r.moved.seconds += m.seconds;
		rc = hot_bytes(s, &r.hot_after);
	}
	if (rc == 0 && first)
		rc = qv_store_fail(s, first, "%s", why);
out:
	free(c);
	if (res)
		*res = r;
	return rc;
}

struct ref {
	uint8_t d[QV_DIGEST_LEN];
	uint64_t off, bytes;
};

static int cmp_ref(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;
	int c = memcmp(x->d, y->d, QV_DIGEST_LEN);
	return c ? c : x->off < y->off ? -1 : x->off > y->off;
}

/* Bytes v references more than once (tied or repeated tensors, identical
 * files): the same shard bytes named by two tensors or two files. */
static int repeated_bytes(const qv_version *v, uint64_t *out)
{
	size_t n = 0, k = 0;
	for (size_t i = 0; i < v->n_files; i++)
		n += v->files[i].safetensors ? v->files[i].n_tensors : 1;
	struct ref *r = malloc((n ? n : 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (size_t i = 0; i < v->n_files; i++) {
		const qv_file *f = &v->files[i];
		if (!f->safetensors) {
			memcpy(r[k].d, f->blob, QV_DIGEST_LEN);
			r[k].off = 0;
			r[k++].bytes = f->size;
			continue;
		}
		for (size_t t = 0; t < f->n_tensors; t++) {
			memcpy(r[k].d, f->tensors[t].shard, QV_DIGEST_LEN);
			r[k].off = f->tensors[t].shard_offset;
			r[k++].bytes = f->tensors[t].bytes;
		}
	}
	qsort(r, k, sizeof(*r), cmp_ref);
	*out = 0;
	for (size_t i = 1; i < k; i++)
		if (cmp_ref(&r[i - 1], &r[i]) == 0)
			*out += r[i].bytes;
	free(r);
	return 0;
}

int qv_tier_status_get(qv_store *s, qv_tier_status *out)
{
	qv_store_config cfg;
	qv_model_list *ml = NULL;
	uint64_t referenced = 0;
	memset(out, 0, sizeof(*out));
	qv_store_config_get(s, &cfg);
	out->tier[QV_TIER_HOT].dir = cfg.hot_dir;
	out->tier[QV_TIER_HOT].capacity = cfg.hot_capacity;
	out->tier[QV_TIER_COLD].dir = cfg.cold_dir;
	out->high = cfg.high;
	out->low = cfg.low;
	int rc = qv_shard_foreach(s, add_usage, out);
	if (rc == 0)
		rc = qv_model_list_get(s, &ml);
	for (size_t m = 0; rc == 0 && m < ml->n; m++) {
		qv_version_list *vl = NULL;
		rc = qv_version_list_get(s, ml->m[m].name, &vl);
		for (size_t i = 0; rc == 0 && i < vl->n; i++) {
			qv_version *v;
			rc = qv_version_get(s, vl->v[i].model, vl->v[i].label, QV_WITH_MANIFEST, &v);
			if (rc)
				break;
			int tier;
			struct qv__dlist l;
			rc = qv_tier_of_version(s, v, &tier);
			if (rc == 0) {
				if (tier < 0)
					out->mixed_versions++;
				else
					out->tier[tier].versions++;
				rc = qv__version_shards(v, &l);
			}
			for (size_t k = 0; rc == 0 && k < l.n; k++) {
				qv_shard_info info;
				if (qv_shard_info_get(s, l.d[k], &info) == 0)
					referenced += info.size;
			}
			if (rc == 0) {
				qv__dlist_free(&l);
				uint64_t again;
				rc = repeated_bytes(v, &again);
				if (rc == 0)
					referenced += again;
				else
					rc = qv_store_fail(s, rc, "out of memory");
			}
			qv_version_free(v);
		}
		qv_version_list_free(vl);
	}
	qv_model_list_free(ml);
	const qv_tier_usage *cold = &out->tier[QV_TIER_COLD];
	/* frames stored raw cost their alignment: the net saving can be less
	 * than what the shards that shrank saved */
	out->saved_by_compression = cold->raw_bytes > cold->used_bytes ? cold->raw_bytes - cold->used_bytes : 0;
	uint64_t stored_raw = out->tier[QV_TIER_HOT].raw_bytes + out->tier[QV_TIER_COLD].raw_bytes;
	out->saved_by_dedup = referenced > stored_raw ? referenced - stored_raw : 0;
	return rc;
}
