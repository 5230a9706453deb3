/* Versions, aliases and history: reading them, switching "current", and
 * removing a version.
 *
 * Every switch (activate, rollback, alias) is one write transaction that
 * moves the alias and appends a history entry, so history always explains
 * how "current" got where it is and rollback can walk it back. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "store_int.h"

/* Returned objects carry their arena right behind the public struct. */
struct version_box {
	qv_version v;
	qv__arena a;
};
struct vlist_box {
	qv_version_list l;
	qv__arena a;
};
struct mlist_box {
	qv_model_list l;
	qv__arena a;
};
struct hist_box {
	qv_history h;
	qv__arena a;
};

/* ---- prefix walks -------------------------------------------------------------- */
typedef int (*kv_fn)(void *arg, const char *rest, size_t rest_len, const MDB_val *val);

/* Calls fn for every key of dbi that starts with model "\0"; fn returning
 * non-zero stops the walk (negative: error). */
static int prefix_walk(qv_store *s, MDB_txn *txn, MDB_dbi dbi, const char *model, kv_fn fn,
                       void *arg)
{
	MDB_cursor *c;
	char kb[QV_KEY_MAX];
	size_t plen = qv__key2(kb, model, "");
	int rc = mdb_cursor_open(txn, dbi, &c);
	if (rc)
		return qv__mdb_fail(s, rc, "cursor");
	MDB_val k = {plen, kb}, v;
	rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	int r = 0;
	while (rc == 0 && k.mv_size >= plen && memcmp(k.mv_data, kb, plen) == 0) {
		r = fn(arg, (char *)k.mv_data + plen, k.mv_size - plen, &v);
		if (r)
			break;
		rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (r < 0)
		return r;
	if (rc && rc != MDB_NOTFOUND)
		return qv__mdb_fail(s, rc, "cursor");
	return 0;
}

struct alias_pair {
	char name[QV_NAME_MAX + 1];
	char label[QV_NAME_MAX + 1];
};
struct alias_set {
	struct alias_pair *p;
	size_t n, cap;
};

static int alias_collect(void *arg, const char *rest, size_t len, const MDB_val *val)
{
	struct alias_set *as = arg;
	if (len > QV_NAME_MAX || val->mv_size > QV_NAME_MAX)
		return 0;
	if (as->n == as->cap) {
		size_t nc = as->cap ? as->cap * 2 : 8;
		struct alias_pair *np = realloc(as->p, nc * sizeof(*np));
		if (!np)
			return -ENOMEM;
		as->p = np;
		as->cap = nc;
	}
	struct alias_pair *ap = &as->p[as->n++];
	memcpy(ap->name, rest, len);
	ap->name[len] = 0;
	memcpy(ap->label, val->mv_data, val->mv_size);
	ap->label[val->mv_size] = 0;
	return 0;
}

static int aliases_of_model(qv_store *s, MDB_txn *txn, const char *model, struct alias_set *as)
{
	memset(as, 0, sizeof(*as));
	int rc = prefix_walk(s, txn, s->db_aliases, model, alias_collect, as);
	if (rc == -ENOMEM)
		qv__err(s, rc, "out of memory");
	return rc;
}

struct label_set {
	char (*l)[QV_NAME_MAX + 1];
	size_t n, cap;
};

static int label_collect(void *arg, const char *rest, size_t len, const MDB_val *val)
{
	struct label_set *ls = arg;
	(void)val;
	if (len > QV_NAME_MAX)
		return 0;
	if (ls->n == ls->cap) {
		size_t nc = ls->cap ? ls->cap * 2 : 16;
		void *np = realloc(ls->l, nc * sizeof(*ls->l));
		if (!np)
			return -ENOMEM;
		ls->l = np;
		ls->cap = nc;
	}
	memcpy(ls->l[ls->n], rest, len);
	ls->l[ls->n][len] = 0;
	ls->n++;
	return 0;
}

/* ---- building qv_version ------------------------------------------------------------ */
static int fill_version(qv_store *s, MDB_txn *txn, const char *model, const char *label,
                        const struct alias_set *as, unsigned flags, qv__arena *a, qv_version *v)
{
	qv__version_rec rec;
	int rc = qv__version_rec_get(s, txn, model, label, &rec);
	if (rc)
		return rc;
	v->model = qv__arena_strdup(a, model);
	v->label = qv__arena_strdup(a, label);
	v->message = qv__arena_strdup(a, rec.message);
	v->parent = qv__arena_strdup(a, rec.parent);
	memcpy(v->digest, rec.digest, QV_DIGEST_LEN);
	v->created_ns = rec.created_ns;
	v->bytes = rec.bytes;
	v->n_tensors = rec.n_tensors;
	v->single_file = rec.single_file;
	v->pinned = rec.pinned;
	v->last_load_ns = rec.last_load_ns;
	size_t n = 0;
	for (size_t i = 0; i < as->n; i++)
		n += strcmp(as->p[i].label, label) == 0;
	const char **names = qv__arena_alloc(a, (n + 1) * sizeof(char *));
	if (!v->model || !v->label || !v->message || !v->parent || !names)
		return qv__err(s, -ENOMEM, "out of memory");
	n = 0;
	for (size_t i = 0; i < as->n; i++) {
		if (strcmp(as->p[i].label, label) != 0)
			continue;
		if (strcmp(as->p[i].name, "current") == 0)
			v->is_current = 1;
		names[n++] = qv__arena_strdup(a, as->p[i].name);
	}
	v->aliases = names;
	v->n_aliases = n;
	if (flags & QV_WITH_MANIFEST) {
		qv_file *files;
		int single;
		rc = qv__manifest_load(s, txn, rec.digest, a, &files, &v->n_files, &single);
		if (rc)
			return rc;
		v->files = files;
	}
	return 0;
}

int qv_version_get(qv_store *s, const char *model, const char *ref, unsigned flags,
                   qv_version **out)
{
	MDB_txn *txn = NULL;
	struct alias_set as = {0};
	char label[QV_NAME_MAX + 1];
	struct version_box *b = calloc(1, sizeof(*b));
	int rc;

	*out = NULL;
	qv__errmsg_clear();
	if (!b)
		return qv__err(s, -ENOMEM, "out of memory");
	rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc == 0)
		rc = qv__resolve(s, txn, model, ref, label);
	if (rc == 0)
		rc = aliases_of_model(s, txn, model, &as);
	if (rc == 0)
		rc = fill_version(s, txn, model, label, &as, flags, &b->a, &b->v);
	if (txn)
		mdb_txn_abort(txn);
	free(as.p);
	if (rc) {
		qv_version_free(&b->v);
		return rc;
	}
	*out = &b->v;
	return 0;
}

void qv_version_free(qv_version *v)
{
	if (!v)
		return;
	struct version_box *b = (struct version_box *)v;
	qv__arena_free(&b->a);
	free(b);
}

static int cmp_version_seq(const void *x, const void *y)
{
	const qv_version *a = x, *b = y;
	if (a->created_ns != b->created_ns)
		return a->created_ns < b->created_ns ? -1 : 1;
	return strcmp(a->label, b->label);
}

/* The versions of model (no manifests) into arena a. */
static int list_versions(qv_store *s, MDB_txn *txn, const char *model, qv__arena *a,
                         qv_version **out, size_t *n_out)
{
	struct label_set ls = {0};
	struct alias_set as = {0};
	int rc = prefix_walk(s, txn, s->db_versions, model, label_collect, &ls);
	if (rc == 0)
		rc = aliases_of_model(s, txn, model, &as);
	qv_version *vs = NULL;
	if (rc == 0) {
		vs = qv__arena_alloc(a, (ls.n + 1) * sizeof(*vs));
		if (!vs)
			rc = qv__err(s, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; rc == 0 && i < ls.n; i++)
		rc = fill_version(s, txn, model, ls.l[i], &as, 0, a, &vs[i]);
	if (rc == 0) {
		qsort(vs, ls.n, sizeof(*vs), cmp_version_seq);
		*out = vs;
		*n_out = ls.n;
	}
	free(ls.l);
	free(as.p);
	return rc;
}

int qv_version_list_get(qv_store *s, const char *model, qv_version_list **out)
{
	MDB_txn *txn = NULL;
	struct vlist_box *b = calloc(1, sizeof(*b));
	int rc;
	*out = NULL;
	qv__errmsg_clear();
	if (!b)
		return qv__err(s, -ENOMEM, "out of memory");
	if (qv_name_check_model(model)) {
		rc = qv__err(s, QV_ENAME, "invalid model name '%.200s'", model);
		goto out;
	}
	rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc == 0)
		rc = list_versions(s, txn, model, &b->a, &b->l.v, &b->l.n);
	if (rc == 0 && b->l.n == 0)
		rc = qv__err(s, QV_ENOTFOUND, "%s: no such model", model);
out:
	if (txn)
		mdb_txn_abort(txn);
	if (rc) {
		qv_version_list_free(&b->l);
		return rc;
	}
	*out = &b->l;
	return 0;
}

void qv_version_list_free(qv_version_list *l)
{
	if (!l)
		return;
	struct vlist_box *b = (struct vlist_box *)l;
	qv__arena_free(&b->a);
	free(b);
}

int qv_model_list_get(qv_store *s, qv_model_list **out)
{
	MDB_txn *txn = NULL;
	MDB_cursor *c = NULL;
	struct mlist_box *b = calloc(1, sizeof(*b));
	size_t cap = 0;
	int rc;
	*out = NULL;
	qv__errmsg_clear();
	if (!b)
		return qv__err(s, -ENOMEM, "out of memory");
	rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		goto out;
	rc = mdb_cursor_open(txn, s->db_models, &c);
	if (rc) {
		rc = qv__mdb_fail(s, rc, "cursor");
		goto out;
	}
	MDB_val k, v;
	int mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	while (mrc == 0) {
		char name[QV_NAME_MAX + 1];
		size_t n = k.mv_size > QV_NAME_MAX ? QV_NAME_MAX : k.mv_size;
		memcpy(name, k.mv_data, n);
		name[n] = 0;
		qv_version *vs;
		size_t nv;
		qv__arena tmp = {0};
		rc = list_versions(s, txn, name, &tmp, &vs, &nv);
		if (rc) {
			qv__arena_free(&tmp);
			goto out;
		}
		if (nv) {
			if (b->l.n == cap) {
				size_t nc = cap ? cap * 2 : 16;
				qv_model *nm = qv__arena_alloc(&b->a, nc * sizeof(*nm));
				if (!nm) {
					qv__arena_free(&tmp);
					rc = qv__err(s, -ENOMEM, "out of memory");
					goto out;
				}
				if (b->l.n)
					memcpy(nm, b->l.m, b->l.n * sizeof(*nm));
				b->l.m = nm;
				cap = nc;
			}
			qv_model *m = &b->l.m[b->l.n++];
			m->name = qv__arena_strdup(&b->a, name);
			m->n_versions = nv;
			m->current = "";
			for (size_t i = 0; i < nv; i++) {
				m->bytes += vs[i].bytes;
				if (vs[i].is_current)
					m->current = qv__arena_strdup(&b->a, vs[i].label);
			}
		}
		qv__arena_free(&tmp);
		mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	if (mrc != MDB_NOTFOUND)
		rc = qv__mdb_fail(s, mrc, "cursor");
out:
	if (c)
		mdb_cursor_close(c);
	if (txn)
		mdb_txn_abort(txn);
	if (rc) {
		qv_model_list_free(&b->l);
		return rc;
	}
	*out = &b->l;
	return 0;
}

void qv_model_list_free(qv_model_list *l)
{
	if (!l)
		return;
	struct mlist_box *b = (struct mlist_box *)l;
	qv__arena_free(&b->a);
	free(b);
}

/* ---- history -------------------------------------------------------------------- */
struct hist_collect {
	qv__arena *a;
	qv_history_entry *e;
	size_t n, cap;
};

static int hist_collect_fn(void *arg, const char *rest, size_t len, const MDB_val *val)
{
	struct hist_collect *hc = arg;
	(void)rest;
	(void)len;
	json_error_t jerr;
	json_t *j = json_loadb(val->mv_data, val->mv_size, 0, &jerr);
	json_int_t t = 0;
	const char *action = "", *from = "", *to = "";
	if (!j || json_unpack(j, "{s:I, s:s, s:s, s:s}", "t", &t, "action", &action, "from", &from,
	                      "to", &to)) {
		json_decref(j);
		return 0; /* skip a damaged entry rather than hide the rest */
	}
	if (hc->n == hc->cap) {
		size_t nc = hc->cap ? hc->cap * 2 : 16;
		qv_history_entry *ne = qv__arena_alloc(hc->a, nc * sizeof(*ne));
		if (!ne) {
			json_decref(j);
			return -ENOMEM;
		}
		if (hc->n)
			memcpy(ne, hc->e, hc->n * sizeof(*ne));
		hc->e = ne;
		hc->cap = nc;
	}
	qv_history_entry *e = &hc->e[hc->n++];
	e->time_ns = t;
	e->action = qv__arena_strdup(hc->a, action);
	e->from = qv__arena_strdup(hc->a, from);
	e->to = qv__arena_strdup(hc->a, to);
	json_decref(j);
	return (e->action && e->from && e->to) ? 0 : -ENOMEM;
}

static int history_read(qv_store *s, MDB_txn *txn, const char *model, qv__arena *a,
                        qv_history_entry **e, size_t *n)
{
	struct hist_collect hc = {.a = a};
	int rc = prefix_walk(s, txn, s->db_history, model, hist_collect_fn, &hc);
	if (rc == -ENOMEM)
		return qv__err(s, rc, "out of memory");
	*e = hc.e;
	*n = hc.n;
	return rc;
}

int qv_history_get(qv_store *s, const char *model, qv_history **out)
{
	MDB_txn *txn = NULL;
	struct hist_box *b = calloc(1, sizeof(*b));
	int rc;
	*out = NULL;
	qv__errmsg_clear();
	if (!b)
		return qv__err(s, -ENOMEM, "out of memory");
	if (qv_name_check_model(model)) {
		rc = qv__err(s, QV_ENAME, "invalid model name '%.200s'", model);
		goto out;
	}
	rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc == 0)
		rc = history_read(s, txn, model, &b->a, &b->h.e, &b->h.n);
	if (rc == 0 && b->h.n == 0) {
		qv__version_rec rec;
		(void)rec;
		MDB_val k = {strlen(model), (void *)model}, v;
		if (mdb_get(txn, s->db_models, &k, &v) == MDB_NOTFOUND)
			rc = qv__err(s, QV_ENOTFOUND, "%s: no such model", model);
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	if (rc) {
		qv_history_free(&b->h);
		return rc;
	}
	*out = &b->h;
	return 0;
}

void qv_history_free(qv_history *h)
{
	if (!h)
		return;
	struct hist_box *b = (struct hist_box *)h;
	qv__arena_free(&b->a);
	free(b);
}

/* ---- switching ------------------------------------------------------------------ */
static int switch_to(qv_store *s, const char *model, const char *ref, int rollback,
                     qv_switch_result *res)
{
	MDB_txn *txn = NULL;
	char label[QV_NAME_MAX + 1], cur[QV_NAME_MAX + 1] = "";
	qv__arena a = {0};
	int rc;

	qv__errmsg_clear();
	if (qv_name_check_model(model))
		return qv__err(s, QV_ENAME, "invalid model name '%.200s'", model);
	rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		return rc;
	rc = qv__alias_get(s, txn, model, "current", cur);
	if (rc && rc != QV_ENOTFOUND)
		goto out;
	if (ref || !rollback) {
		rc = qv__resolve(s, txn, model, ref, label);
		if (rc)
			goto out;
	} else {
		/* the version current before the present one: the newest history
		 * entry that switched to the present one tells where it came from */
		qv_history_entry *e = NULL;
		size_t n = 0;
		if (!*cur) {
			rc = qv__err(s, QV_ENOTFOUND, "%s: no current version to roll back from", model);
			goto out;
		}
		rc = history_read(s, txn, model, &a, &e, &n);
		if (rc)
			goto out;
		const char *prev = NULL;
		for (size_t i = n; i-- > 0;)
			if (strcmp(e[i].to, cur) == 0) {
				prev = e[i].from;
				break;
			}
		if (!prev || !*prev) {
			rc = qv__err(s, QV_ENOTFOUND, "%s: no version was current before %s", model, cur);
			goto out;
		}
		qv__version_rec rec;
		rc = qv__version_rec_get(s, txn, model, prev, &rec);
		if (rc == QV_ENOTFOUND)
			rc = qv__err(s, rc, "%s: the previous version %s has been removed; use --to",
			             model, prev);
		if (rc)
			goto out;
		snprintf(label, sizeof(label), "%s", prev);
	}
	rc = qv__alias_put(s, txn, model, "current", label, rollback ? "rollback" : "activate");
	if (rc)
		goto out;
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc) {
		rc = qv__mdb_fail(s, rc, "commit");
		goto out;
	}
	if (res) {
		snprintf(res->from, sizeof(res->from), "%s", cur);
		snprintf(res->to, sizeof(res->to), "%s", label);
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	qv__arena_free(&a);
	return rc;
}

int qv_activate(qv_store *s, const char *model, const char *ref, qv_switch_result *res)
{
	return switch_to(s, model, ref, 0, res);
}

int qv_rollback(qv_store *s, const char *model, const char *to, qv_switch_result *res)
{
	return switch_to(s, model, to, 1, res);
}

int qv_alias_set(qv_store *s, const char *model, const char *name, const char *ref)
{
	MDB_txn *txn = NULL;
	char label[QV_NAME_MAX + 1];
	int rc;
	qv__errmsg_clear();
	if (qv_name_check_label(name))
		return qv__err(s, QV_ENAME, "invalid alias name '%.200s'", name);
	if (strcmp(name, "current") == 0)
		return qv_activate(s, model, ref, NULL);
	rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		return rc;
	rc = qv__resolve(s, txn, model, ref, label);
	if (rc == 0)
		rc = qv__alias_put(s, txn, model, name, label, "alias");
	return qv__txn_end(s, txn, rc);
}

int qv_alias_rm(qv_store *s, const char *model, const char *name)
{
	MDB_txn *txn = NULL;
	char label[QV_NAME_MAX + 1];
	int rc;
	qv__errmsg_clear();
	if (qv_name_check_model(model))
		return qv__err(s, QV_ENAME, "invalid model name '%.200s'", model);
	if (qv_name_check_label(name))
		return qv__err(s, QV_ENAME, "invalid alias name '%.200s'", name);
	if (strcmp(name, "current") == 0)
		return qv__err(s, QV_EINUSE,
		               "%s: 'current' cannot be removed; activate another version or rm this one",
		               model);
	rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		return rc;
	rc = qv__alias_get(s, txn, model, name, label);
	if (rc == QV_ENOTFOUND)
		rc = qv__err(s, rc, "%s: no alias '%s'", model, name);
	if (rc == 0)
		rc = qv__alias_put(s, txn, model, name, "", "alias");
	return qv__txn_end(s, txn, rc);
}

/* ---- removing a version ---------------------------------------------------------- */

/* Drops one reference from the manifest; when it was the last, drops the
 * manifest and one reference from each of its shards, collecting the shards
 * that reach zero in *freed (digests, malloc'd). */
static int manifest_unref(qv_store *s, MDB_txn *txn, const uint8_t digest[QV_DIGEST_LEN],
                          uint8_t (**freed)[QV_DIGEST_LEN], size_t *n_freed, uint64_t *bytes)
{
	MDB_val k = {QV_DIGEST_LEN, (void *)digest}, v;
	qv__arena a = {0};
	int rc = mdb_get(txn, s->db_manifests, &k, &v);
	if (rc)
		return qv__mdb_fail(s, rc, "read manifest");
	uint64_t refs;
	memcpy(&refs, v.mv_data, 8);
	if (refs > 1) {
		char *buf = malloc(v.mv_size);
		if (!buf)
			return qv__err(s, -ENOMEM, "out of memory");
		memcpy(buf, v.mv_data, v.mv_size);
		refs--;
		memcpy(buf, &refs, 8);
		MDB_val nv = {v.mv_size, buf};
		rc = mdb_put(txn, s->db_manifests, &k, &nv, 0);
		free(buf);
		return rc ? qv__mdb_fail(s, rc, "write manifest") : 0;
	}
	qv_file *files;
	size_t nf;
	int single;
	rc = qv__manifest_load(s, txn, digest, &a, &files, &nf, &single);
	if (rc)
		goto out;
	rc = mdb_del(txn, s->db_manifests, &k, NULL);
	if (rc) {
		rc = qv__mdb_fail(s, rc, "delete manifest");
		goto out;
	}
	size_t nd = 0;
	uint8_t (*ds)[QV_DIGEST_LEN] = NULL;
	rc = qv__manifest_shards(files, nf, &ds, &nd);
	if (rc) {
		rc = qv__err(s, rc, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nd && rc == 0; i++) {
		MDB_val sk = {QV_DIGEST_LEN, ds[i]}, sv;
		qv__shard_rec rec;
		int g = mdb_get(txn, s->db_shards, &sk, &sv);
		if (g == MDB_NOTFOUND)
			continue; /* a damaged index: nothing to drop */
		if (g) {
			rc = qv__mdb_fail(s, g, "read shard");
			break;
		}
		memcpy(&rec, sv.mv_data, sizeof(rec));
		if (rec.refcount > 1) {
			rec.refcount--;
			MDB_val nv = {sizeof(rec), &rec};
			g = mdb_put(txn, s->db_shards, &sk, &nv, 0);
		} else {
			g = mdb_del(txn, s->db_shards, &sk, NULL);
			void *nfp = realloc(*freed, (*n_freed + 1) * QV_DIGEST_LEN);
			if (!nfp) {
				rc = qv__err(s, -ENOMEM, "out of memory");
				break;
			}
			*freed = nfp;
			memcpy((*freed)[(*n_freed)++], ds[i], QV_DIGEST_LEN);
			*bytes += rec.stored_size;
		}
		if (g)
			rc = qv__mdb_fail(s, g, "write shard");
	}
	free(ds);
out:
	qv__arena_free(&a);
	return rc;
}

int qv_version_rm(qv_store *s, const char *model, const char *ref, int force,
                  qv_free_result *res)
{
	MDB_txn *txn = NULL;
	struct alias_set as = {0};
	char label[QV_NAME_MAX + 1];
	uint8_t (*freed)[QV_DIGEST_LEN] = NULL;
	size_t n_freed = 0;
	uint64_t bytes = 0;
	int rc, locked = 0;

	qv__errmsg_clear();
	if (res)
		memset(res, 0, sizeof(*res));
	rc = qv__lock_exclusive(s);
	if (rc)
		return rc;
	locked = 1;
	rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		goto out;
	rc = qv__resolve(s, txn, model, ref, label);
	if (rc)
		goto out;
	rc = aliases_of_model(s, txn, model, &as);
	if (rc)
		goto out;
	for (size_t i = 0; i < as.n; i++) {
		if (strcmp(as.p[i].label, label) != 0)
			continue;
		if (!force) {
			rc = qv__err(s, QV_EINUSE, "%s@%s is %s%s; use --force to remove it anyway",
			             model, label, strcmp(as.p[i].name, "current") ? "aliased as " : "",
			             as.p[i].name);
			goto out;
		}
		rc = qv__alias_put(s, txn, model, as.p[i].name, "", "rm");
		if (rc)
			goto out;
	}
	qv__version_rec rec;
	rc = qv__version_rec_get(s, txn, model, label, &rec);
	if (rc)
		goto out;
	char kb[QV_KEY_MAX];
	MDB_val k = {qv__key2(kb, model, label), kb};
	rc = mdb_del(txn, s->db_versions, &k, NULL);
	if (rc) {
		rc = qv__mdb_fail(s, rc, "delete version");
		goto out;
	}
	rc = manifest_unref(s, txn, rec.digest, &freed, &n_freed, &bytes);
	if (rc)
		goto out;
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc) {
		rc = qv__mdb_fail(s, rc, "commit");
		goto out;
	}
	/* Only now, with no reference left in the index, may the files go
	 * (from whichever tier holds them). */
	for (size_t i = 0; i < n_freed; i++)
		for (int t = 0; t < QV_TIERS; t++) {
			char path[PATH_MAX];
			if (qv_shard_path_tier(s, freed[i], t, path, sizeof(path)) == 0)
				unlink(path);
		}
	if (res) {
		res->versions = 1;
		res->shards = n_freed;
		res->bytes = bytes;
	}
out:
	if (txn)
		mdb_txn_abort(txn);
	if (locked)
		qv__unlock(s);
	free(as.p);
	free(freed);
	return rc;
}

/* Rewrites one field group of a version record in one transaction. */
static int version_update(qv_store *s, const char *model, const char *ref, int pin, int touch)
{
	MDB_txn *txn = NULL;
	char label[QV_NAME_MAX + 1];
	qv__version_rec rec;
	qv__errmsg_clear();
	int rc = qv__txn_begin(s, 0, &txn);
	if (rc)
		return rc;
	rc = qv__resolve(s, txn, model, ref, label);
	if (rc == 0)
		rc = qv__version_rec_get(s, txn, model, label, &rec);
	if (rc == 0) {
		if (pin == 1 && !rec.pinned)
			rc = qv__protect_bump(s, txn);
		if (pin >= 0)
			rec.pinned = pin;
		if (touch)
			rec.last_load_ns = qv__now_ns();
		if (rc == 0)
			rc = qv__version_rec_put(s, txn, model, label, &rec);
	}
	return qv__txn_end(s, txn, rc);
}

int qv_version_pin(qv_store *s, const char *model, const char *ref, int pinned)
{
	return version_update(s, model, ref, pinned ? 1 : 0, 0);
}

int qv_version_touch(qv_store *s, const char *model, const char *label)
{
	return version_update(s, model, label, -1, 1);
}
