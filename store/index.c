/* The LMDB index: opening a store and reading/writing its records.
 *
 * One LMDB environment (root/index) with named databases:
 *   meta      "schema" -> decimal schema version
 *   models    model -> {"seq": next version number, "hist": next history number}
 *   versions  model\0label -> version record (JSON)
 *   aliases   model\0name -> label
 *   history   model\0<u64 big-endian seq> -> {"t","action","from","to"} (JSON)
 *   manifests digest -> u64 refcount + manifest JSON
 *   shards    digest -> qv__shard_rec
 * LMDB gives us the concurrency model for free: readers never block and see
 * a consistent snapshot; writers serialize on its write lock. Every change
 * a user sees is one write transaction. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "store_int.h"

/* what handles opened from now on are told of waits (set before any
 * thread opens a store) */
static qv_wait_fn default_wait_fn;
static void *default_wait_arg;

size_t qv__key2(char *buf, const char *model, const char *name)
{
	size_t a = strlen(model), b = strlen(name);
	assert(a <= QV_NAME_MAX && b <= QV_NAME_MAX + 8);
	memcpy(buf, model, a);
	buf[a] = 0;
	memcpy(buf + a + 1, name, b);
	return a + 1 + b;
}

static char *path_join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", a, b);
	return p;
}

int qv_store_default_root(char *buf, size_t len)
{
	const char *env = getenv("QUIVER_ROOT"), *home = getenv("HOME");
	int n;
	if (env && *env)
		n = snprintf(buf, len, "%s", env);
	else if (home && *home)
		n = snprintf(buf, len, "%s/.local/share/quiver", home);
	else
		return -ENOENT;
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int open_dbs(qv_store *s, char *errbuf, size_t errlen)
{
	static const struct {
		const char *name;
		size_t off;
	} dbs[] = {
		{"meta", offsetof(qv_store, db_meta)},
		{"models", offsetof(qv_store, db_models)},
		{"versions", offsetof(qv_store, db_versions)},
		{"manifests", offsetof(qv_store, db_manifests)},
		{"aliases", offsetof(qv_store, db_aliases)},
		{"history", offsetof(qv_store, db_history)},
		{"shards", offsetof(qv_store, db_shards)},
	};
	MDB_txn *txn = NULL;
	int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rc)
		goto fail;
	for (size_t i = 0; i < QV_ARRAY_LEN(dbs); i++) {
		rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, (MDB_dbi *)((char *)s + dbs[i].off));
		if (rc)
			goto fail;
	}
	MDB_val k = {6, "schema"}, v;
	rc = mdb_get(txn, s->db_meta, &k, &v);
	if (rc == MDB_NOTFOUND) {
		char num[16];
		int n = snprintf(num, sizeof(num), "%d", QV_SCHEMA_VERSION);
		v.mv_size = (size_t)n;
		v.mv_data = num;
		rc = mdb_put(txn, s->db_meta, &k, &v, 0);
	} else if (rc == 0) {
		char num[16] = {0};
		memcpy(num, v.mv_data, v.mv_size < 15 ? v.mv_size : 15);
		if (atoi(num) != QV_SCHEMA_VERSION) {
			mdb_txn_abort(txn);
			snprintf(errbuf, errlen, "%s: store schema %s, this quiver reads schema %d",
			         s->root, num, QV_SCHEMA_VERSION);
			return QV_ESCHEMA;
		}
	}
	if (rc)
		goto fail;
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc)
		goto fail;
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	snprintf(errbuf, errlen, "%s: cannot open index: %s", s->root, mdb_strerror(rc));
	return qv__mdb_err(rc);
}

int qv_store_open(const char *root, qv_store **out, char *errbuf, size_t errlen)
{
	char rootbuf[4096], dummy[8];
	int rc;
	qv_store *s = NULL;
	char *index_dir = NULL, *lock_path = NULL;

	if (!errbuf) {
		errbuf = dummy;
		errlen = sizeof(dummy);
	}
	*out = NULL;
	if (!root) {
		rc = qv_store_default_root(rootbuf, sizeof(rootbuf));
		if (rc) {
			snprintf(errbuf, errlen, "%s",
			         rc == -ENOENT ? "no store root: set --root, QUIVER_ROOT or HOME"
			                       : "no store root: QUIVER_ROOT or HOME is too long");
			return rc;
		}
		root = rootbuf;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lock_fd = -1;
	s->wait_fn = default_wait_fn;
	s->wait_arg = default_wait_arg;
	s->root = strdup(root);
	index_dir = path_join(root, "index");
	lock_path = path_join(root, "lock");
	if (!s->root || !index_dir || !lock_path) {
		rc = -ENOMEM;
		goto fail;
	}
	const char *dirs[] = {s->root, index_dir};
	for (size_t i = 0; i < QV_ARRAY_LEN(dirs); i++) {
		rc = qv__mkdir_p(dirs[i], 0755);
		if (rc) {
			snprintf(errbuf, errlen, "%s: cannot create: %s", dirs[i], qv_strerror(rc));
			goto fail;
		}
	}
	rc = qv__config_load(s, errbuf, errlen);
	if (rc)
		goto fail;
	s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (s->lock_fd < 0) {
		rc = -errno;
		snprintf(errbuf, errlen, "%s: %s", lock_path, strerror(errno));
		goto fail;
	}
	rc = mdb_env_create(&s->env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(s->env, 16);
	if (rc == 0)
		rc = mdb_env_set_mapsize(s->env, QV_MAP_SIZE);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(s->env, 1024);
	if (rc == 0)
		rc = mdb_env_open(s->env, index_dir, MDB_NOTLS, 0644);
	if (rc) {
		snprintf(errbuf, errlen, "%s: cannot open index: %s", index_dir, mdb_strerror(rc));
		rc = qv__mdb_err(rc);
		goto fail;
	}
	/* Clear reader slots left by crashed processes, so they pin no pages. */
	int dead = 0;
	mdb_reader_check(s->env, &dead);
	rc = open_dbs(s, errbuf, errlen);
	if (rc)
		goto fail;
	free(index_dir);
	free(lock_path);
	*out = s;
	return 0;
fail:
	free(index_dir);
	free(lock_path);
	qv_store_close(s);
	return rc;
}

void qv_store_close(qv_store *s)
{
	if (!s)
		return;
	if (s->env)
		mdb_env_close(s->env);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	qv__config_free(s);
	free(s->root);
	free(s);
}

const char *qv_store_root(const qv_store *s)
{
	return s->root;
}

int qv__txn_begin(qv_store *s, unsigned flags, MDB_txn **txn)
{
	int rc = mdb_txn_begin(s->env, NULL, flags, txn);
	return rc ? qv__mdb_fail(s, rc, "begin transaction") : 0;
}

int qv__txn_end(qv_store *s, MDB_txn *txn, int rc)
{
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	rc = mdb_txn_commit(txn);
	return rc ? qv__mdb_fail(s, rc, "commit") : 0;
}

/* ---- locks ----------------------------------------------------------------- */
void qv_store_set_wait_notice(qv_store *s, qv_wait_fn fn, void *arg)
{
	if (s == NULL) {
		default_wait_fn = fn;
		default_wait_arg = arg;
		return;
	}
	s->wait_fn = fn;
	s->wait_arg = arg;
}

int qv_store_flock(qv_store *s, int fd, int how, const char *what)
{
	if (flock(fd, how | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK && errno != EINTR)
		return -errno;
	if (errno == EWOULDBLOCK && s && s->wait_fn)
		s->wait_fn(s->wait_arg, what);
	while (flock(fd, how) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

/* Takes the lock (LOCK_SH or LOCK_EX), then checks that the tiers this
 * handle writes to are still the configured ones: init changes config.ini
 * under the exclusive lock, and a writer that opened before it would put
 * shards where no one looks any more. */
static int lock_as(qv_store *s, int how)
{
	int rc = qv_store_flock(s, s->lock_fd, how, "the store's lock");
	if (rc)
		return qv__err(s, rc, "%s/lock: %s", s->root, strerror(-rc));
	rc = qv__config_check(s);
	if (rc)
		flock(s->lock_fd, LOCK_UN);
	return rc;
}

int qv__lock_shared(qv_store *s)
{
	return lock_as(s, LOCK_SH);
}

int qv__lock_exclusive(qv_store *s)
{
	return lock_as(s, LOCK_EX);
}

void qv__unlock(qv_store *s)
{
	flock(s->lock_fd, LOCK_UN);
}

/* ---- version records ----------------------------------------------------------- */
int qv__version_rec_get(qv_store *s, MDB_txn *txn, const char *model, const char *label,
                        qv__version_rec *rec)
{
	char kb[QV_KEY_MAX];
	MDB_val k = {qv__key2(kb, model, label), kb}, v;
	int rc = mdb_get(txn, s->db_versions, &k, &v);
	if (rc == MDB_NOTFOUND)
		return qv__err(s, QV_ENOTFOUND, "%s@%s: no such version", model, label);
	if (rc)
		return qv__mdb_fail(s, rc, "read version");
	json_error_t jerr;
	json_t *j = json_loadb(v.mv_data, v.mv_size, 0, &jerr);
	const char *digest = NULL, *parent = "", *message = "";
	json_int_t created = 0, bytes = 0, tensors = 0, seq = 0, last_load = 0;
	int single = 0, pinned = 0;
	rc = QV_ECORRUPT;
	memset(rec, 0, sizeof(*rec));
	if (j && json_unpack(j, "{s:s, s:I, s:I, s:I, s:I, s:b, s?s, s?s, s?b, s?I}", "digest", &digest,
	                     "created_ns", &created, "bytes", &bytes, "tensors", &tensors, "seq",
	                     &seq, "single_file", &single, "parent", &parent, "message",
	                     &message, "pinned", &pinned, "last_load_ns", &last_load) == 0 &&
	    qv__hex_parse(digest, rec->digest) == 0) {
		rec->created_ns = created;
		rec->bytes = (uint64_t)bytes;
		rec->n_tensors = (uint64_t)tensors;
		rec->seq = (uint64_t)seq;
		rec->single_file = single;
		rec->pinned = pinned;
		rec->last_load_ns = last_load;
		snprintf(rec->parent, sizeof(rec->parent), "%s", parent);
		snprintf(rec->message, sizeof(rec->message), "%s", message);
		rc = 0;
	} else {
		qv__err(s, rc, "%s@%s: damaged version record in the index", model, label);
	}
	json_decref(j);
	return rc;
}

int qv__version_rec_put(qv_store *s, MDB_txn *txn, const char *model, const char *label,
                        const qv__version_rec *rec)
{
	char kb[QV_KEY_MAX], hex[QV_HEX_LEN + 1];
	qv_digest_hex(rec->digest, hex);
	json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:b, s:s, s:s, s:b, s:I}", "digest", hex,
	                      "created_ns", (json_int_t)rec->created_ns, "bytes",
	                      (json_int_t)rec->bytes, "tensors", (json_int_t)rec->n_tensors, "seq",
	                      (json_int_t)rec->seq, "single_file", rec->single_file, "parent",
	                      rec->parent, "message", rec->message, "pinned", rec->pinned,
	                      "last_load_ns", (json_int_t)rec->last_load_ns);
	char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!txt)
		return qv__err(s, -ENOMEM, "out of memory");
	MDB_val k = {qv__key2(kb, model, label), kb}, v = {strlen(txt), txt};
	int rc = mdb_put(txn, s->db_versions, &k, &v, 0);
	free(txt);
	return rc ? qv__mdb_fail(s, rc, "write version") : 0;
}

/* ---- aliases and resolution ------------------------------------------------------ */
int qv__alias_get(qv_store *s, MDB_txn *txn, const char *model, const char *name,
                  char out[QV_NAME_MAX + 1])
{
	char kb[QV_KEY_MAX];
	MDB_val k = {qv__key2(kb, model, name), kb}, v;
	int rc = mdb_get(txn, s->db_aliases, &k, &v);
	if (rc == MDB_NOTFOUND)
		return QV_ENOTFOUND;
	if (rc)
		return qv__mdb_fail(s, rc, "read alias");
	if (v.mv_size > QV_NAME_MAX)
		return qv__err(s, QV_ECORRUPT, "%s: damaged alias '%s' in the index", model, name);
	memcpy(out, v.mv_data, v.mv_size);
	out[v.mv_size] = 0;
	return 0;
}

static int is_hex_prefix(const char *p)
{
	size_t n = strlen(p);
	if (n < 4 || n > QV_HEX_LEN)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return 0;
	return 1;
}

/* Walks the versions of model: fn(label, value) for each; stops on non-zero. */
typedef int (*version_visit_fn)(void *arg, const char *label, const MDB_val *val);
static int versions_walk(qv_store *s, MDB_txn *txn, const char *model, version_visit_fn fn,
                         void *arg)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, s->db_versions, &c);
	if (rc)
		return qv__mdb_fail(s, rc, "cursor");
	char kb[QV_KEY_MAX];
	size_t plen = qv__key2(kb, model, "");
	MDB_val k = {plen, kb}, v;
	rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	while (rc == 0) {
		if (k.mv_size <= plen || memcmp(k.mv_data, kb, plen) != 0)
			break;
		char label[QV_NAME_MAX + 1];
		size_t ln = k.mv_size - plen;
		if (ln > QV_NAME_MAX)
			ln = QV_NAME_MAX;
		memcpy(label, (char *)k.mv_data + plen, ln);
		label[ln] = 0;
		int r = fn(arg, label, &v);
		if (r) {
			mdb_cursor_close(c);
			return r > 0 ? 0 : r;
		}
		rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (rc && rc != MDB_NOTFOUND)
		return qv__mdb_fail(s, rc, "cursor");
	return 0;
}

struct prefix_match {
	const char *prefix;
	int matches;
	char label[QV_NAME_MAX + 1];
	char first_digest[QV_HEX_LEN + 1];
};

static int match_prefix(void *arg, const char *label, const MDB_val *val)
{
	struct prefix_match *m = arg;
	/* the digest is the first field of the JSON record: {"digest":"<hex>",... */
	const char *p = memmem(val->mv_data, val->mv_size, "\"digest\":\"", 10);
	if (!p || (size_t)(p - (char *)val->mv_data) + 10 + QV_HEX_LEN > val->mv_size)
		return 0;
	p += 10;
	if (strncmp(p, m->prefix, strlen(m->prefix)) != 0)
		return 0;
	/* Two labels on one manifest are one content; still ambiguous as a ref. */
	if (m->matches++ == 0)
		snprintf(m->label, sizeof(m->label), "%s", label);
	return 0;
}

int qv__resolve(qv_store *s, MDB_txn *txn, const char *model, const char *ref,
                char label[QV_NAME_MAX + 1])
{
	qv__version_rec rec;
	int rc;

	if (qv_name_check_model(model))
		return qv__err(s, QV_ENAME, "invalid model name '%.200s'", model);
	if (!ref || !*ref)
		ref = "current";
	if (qv_name_check_label(ref) == 0) {
		/* a label? */
		char kb[QV_KEY_MAX];
		MDB_val k = {qv__key2(kb, model, ref), kb}, v;
		rc = mdb_get(txn, s->db_versions, &k, &v);
		if (rc == 0) {
			snprintf(label, QV_NAME_MAX + 1, "%s", ref);
			return 0;
		}
		if (rc != MDB_NOTFOUND)
			return qv__mdb_fail(s, rc, "read version");
		/* an alias? */
		rc = qv__alias_get(s, txn, model, ref, label);
		if (rc != QV_ENOTFOUND)
			return rc;
	}
	const char *hex = ref;
	if (strncmp(hex, "sha256:", 7) == 0)
		hex += 7;
	if (is_hex_prefix(hex)) {
		struct prefix_match m = {.prefix = hex};
		rc = versions_walk(s, txn, model, match_prefix, &m);
		if (rc)
			return rc;
		if (m.matches == 1) {
			snprintf(label, QV_NAME_MAX + 1, "%s", m.label);
			return 0;
		}
		if (m.matches > 1)
			return qv__err(s, QV_EAMBIGUOUS, "%s@%s: digest prefix matches %d versions",
			               model, ref, m.matches);
	}
	(void)rec;
	if (strcmp(ref, "current") == 0)
		return qv__err(s, QV_ENOTFOUND, "%s: no current version (model unknown or none active)",
		               model);
	return qv__err(s, QV_ENOTFOUND, "%s@%.200s: no such version, alias or digest", model, ref);
}

/* ---- models and history ------------------------------------------------------------ */
static int model_counters(qv_store *s, MDB_txn *txn, const char *model, json_int_t *seq,
                          json_int_t *hist)
{
	MDB_val k = {strlen(model), (void *)model}, v;
	int rc = mdb_get(txn, s->db_models, &k, &v);
	*seq = 1;
	*hist = 1;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return qv__mdb_fail(s, rc, "read model");
	json_error_t jerr;
	json_t *j = json_loadb(v.mv_data, v.mv_size, 0, &jerr);
	rc = (j && json_unpack(j, "{s:I, s:I}", "seq", seq, "hist", hist) == 0)
		? 0
		: qv__err(s, QV_ECORRUPT, "%s: damaged model record in the index", model);
	json_decref(j);
	return rc;
}

static int model_counters_put(qv_store *s, MDB_txn *txn, const char *model, json_int_t seq,
                              json_int_t hist)
{
	char buf[96];
	int n = snprintf(buf, sizeof(buf), "{\"seq\":%lld,\"hist\":%lld}", (long long)seq,
	                 (long long)hist);
	MDB_val k = {strlen(model), (void *)model}, v = {(size_t)n, buf};
	int rc = mdb_put(txn, s->db_models, &k, &v, 0);
	return rc ? qv__mdb_fail(s, rc, "write model") : 0;
}

int qv__model_next_seq(qv_store *s, MDB_txn *txn, const char *model, uint64_t *seq)
{
	json_int_t sq, hist;
	int rc = model_counters(s, txn, model, &sq, &hist);
	if (rc)
		return rc;
	*seq = (uint64_t)sq;
	return model_counters_put(s, txn, model, sq + 1, hist);
}

int qv__history_add(qv_store *s, MDB_txn *txn, const char *model, const char *action,
                    const char *from, const char *to)
{
	json_int_t sq, hist;
	int rc = model_counters(s, txn, model, &sq, &hist);
	if (rc)
		return rc;
	char kb[QV_KEY_MAX];
	size_t klen = qv__key2(kb, model, "");
	for (int i = 7; i >= 0; i--)
		kb[klen++] = (char)((uint64_t)hist >> (8 * i));
	json_t *j = json_pack("{s:I, s:s, s:s, s:s}", "t", (json_int_t)qv__now_ns(), "action",
	                      action, "from", from, "to", to);
	char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!txt)
		return qv__err(s, -ENOMEM, "out of memory");
	MDB_val k = {klen, kb}, v = {strlen(txt), txt};
	rc = mdb_put(txn, s->db_history, &k, &v, 0);
	free(txt);
	if (rc)
		return qv__mdb_fail(s, rc, "write history");
	return model_counters_put(s, txn, model, sq, hist + 1);
}

/* ---- the protection epoch (meta "protect_epoch", u64 LE) ------------------------ */
static const char epoch_key[] = "protect_epoch";

int qv__protect_epoch_get(qv_store *s, MDB_txn *txn, uint64_t *epoch)
{
	MDB_val k = {sizeof(epoch_key) - 1, (void *)epoch_key}, v;
	int rc = mdb_get(txn, s->db_meta, &k, &v);
	*epoch = 0;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return qv__mdb_fail(s, rc, "read protection epoch");
	if (v.mv_size != sizeof(*epoch))
		return qv__err(s, QV_ECORRUPT, "the index's protection epoch is damaged");
	memcpy(epoch, v.mv_data, sizeof(*epoch));
	return 0;
}

int qv__protect_bump(qv_store *s, MDB_txn *txn)
{
	uint64_t e;
	int rc = qv__protect_epoch_get(s, txn, &e);
	if (rc)
		return rc;
	e++;
	MDB_val k = {sizeof(epoch_key) - 1, (void *)epoch_key}, v = {sizeof(e), &e};
	rc = mdb_put(txn, s->db_meta, &k, &v, 0);
	return rc ? qv__mdb_fail(s, rc, "write protection epoch") : 0;
}

int qv_store_protect_epoch(qv_store *s, uint64_t *epoch)
{
	MDB_txn *txn;
	int rc = qv__txn_begin(s, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	rc = qv__protect_epoch_get(s, txn, epoch);
	mdb_txn_abort(txn);
	return rc;
}

int qv__alias_put(qv_store *s, MDB_txn *txn, const char *model, const char *name,
                  const char *label, const char *action)
{
	char kb[QV_KEY_MAX], prev[QV_NAME_MAX + 1] = "";
	int rc = qv__alias_get(s, txn, model, name, prev);
	if (rc && rc != QV_ENOTFOUND)
		return rc;
	MDB_val k = {qv__key2(kb, model, name), kb};
	if (*label && strcmp(name, label) != 0) {
		/* an alias named like a version would shadow it in MODEL@REF */
		MDB_val v;
		rc = mdb_get(txn, s->db_versions, &k, &v);
		if (rc == 0)
			return qv__err(s, QV_EEXIST, "%s: '%s' is a version label; an alias may not shadow it",
			               model, name);
		if (rc != MDB_NOTFOUND)
			return qv__mdb_fail(s, rc, "read version");
	}
	if (*label) {
		MDB_val v = {strlen(label), (void *)label};
		rc = mdb_put(txn, s->db_aliases, &k, &v, 0);
		if (rc == 0 && strcmp(prev, label) != 0) {
			rc = qv__protect_bump(s, txn); /* label's version is protected now */
			if (rc)
				return rc;
		}
	} else {
		rc = mdb_del(txn, s->db_aliases, &k, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	if (rc)
		return qv__mdb_fail(s, rc, "write alias");
	if (strcmp(name, "current") == 0 && strcmp(prev, label) != 0)
		return qv__history_add(s, txn, model, action, prev, label);
	return 0;
}

int qv__manifest_load(qv_store *s, MDB_txn *txn, const uint8_t digest[QV_DIGEST_LEN],
                      qv__arena *a, qv_file **files, size_t *n_files, int *single_file)
{
	MDB_val k = {QV_DIGEST_LEN, (void *)digest}, v;
	char hex[QV_HEX_LEN + 1];
	int rc = mdb_get(txn, s->db_manifests, &k, &v);
	qv_digest_hex(digest, hex);
	if (rc == MDB_NOTFOUND)
		return qv__err(s, QV_ECORRUPT, "manifest %s is missing from the index", hex);
	if (rc)
		return qv__mdb_fail(s, rc, "read manifest");
	if (v.mv_size < 8)
		return qv__err(s, QV_ECORRUPT, "manifest %s is damaged", hex);
	rc = qv__manifest_decode((char *)v.mv_data + 8, v.mv_size - 8, a, files, n_files,
	                         single_file);
	if (rc)
		return qv__err(s, rc, "manifest %s: %s", hex,
		               rc == QV_ECORRUPT ? "damaged" : qv_strerror(rc));
	return 0;
}
