/* Manifests: the complete recipe of a version, as canonical JSON.
 *
 * A manifest lists every file of the published input. A safetensors file
 * keeps its verbatim header and, per tensor, the shard and offset holding its
 * bytes; any other file is one blob shard. Encoding is deterministic (fixed
 * key order, compact), so the SHA-256 of the encoded bytes names the version:
 * publishing identical input twice yields the same digest. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "store_int.h"

#define MANIFEST_FORMAT 1

static json_t *hex_json(const uint8_t d[QV_DIGEST_LEN])
{
	char hex[QV_HEX_LEN + 1];
	qv_digest_hex(d, hex);
	return json_string(hex);
}

static json_t *tensor_json(const qv_tensor *t)
{
	json_t *shape = json_array();
	for (uint32_t i = 0; i < t->ndim; i++)
		json_array_append_new(shape, json_integer(t->shape[i]));
	return json_pack("{s:s, s:s, s:o, s:I, s:I, s:o, s:I}", "name", t->name, "dtype", t->dtype,
	                 "shape", shape, "begin", (json_int_t)t->data_offset, "end",
	                 (json_int_t)(t->data_offset + t->bytes), "shard", hex_json(t->shard),
	                 "offset", (json_int_t)t->shard_offset);
}

int qv__manifest_encode(const qv_file *files, size_t n_files, int single_file, char **out,
                        size_t *len)
{
	int rc = -ENOMEM;
	json_t *jfiles = json_array();
	json_t *root = NULL;

	if (!jfiles)
		goto out;
	for (size_t i = 0; i < n_files; i++) {
		const qv_file *f = &files[i];
		json_t *jf;
		if (f->safetensors) {
			json_t *jt = json_array();
			for (size_t k = 0; k < f->n_tensors; k++)
				if (!jt || json_array_append_new(jt, tensor_json(&f->tensors[k])))
					goto out;
			jf = json_pack("{s:s, s:I, s:s, s:s%, s:o}", "name", f->name, "size",
			               (json_int_t)f->size, "type", "safetensors", "header", f->header,
			               (size_t)f->header_len, "tensors", jt);
		} else {
			jf = json_pack("{s:s, s:I, s:s, s:o}", "name", f->name, "size",
			               (json_int_t)f->size, "type", "blob", "shard", hex_json(f->blob));
		}
		if (!jf || json_array_append_new(jfiles, jf))
			goto out;
	}
	root = json_pack("{s:i, s:b, s:o}", "quiver_manifest", MANIFEST_FORMAT, "single_file",
	                 single_file, "files", jfiles);
	jfiles = NULL;
	if (!root)
		goto out;
	*out = json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (!*out)
		goto out;
	*len = strlen(*out);
	rc = 0;
out:
	json_decref(jfiles);
	json_decref(root);
	return rc;
}

static int get_digest(json_t *v, uint8_t d[QV_DIGEST_LEN])
{
	return json_is_string(v) ? qv__hex_parse(json_string_value(v), d) : QV_ECORRUPT;
}

static int decode_tensor(json_t *jt, qv__arena *a, qv_tensor *t)
{
	json_t *shape = json_object_get(jt, "shape");
	json_int_t begin, end, off;
	const char *name, *dtype;
	if (json_unpack(jt, "{s:s, s:s, s:I, s:I, s:I}", "name", &name, "dtype", &dtype, "begin",
	                &begin, "end", &end, "offset", &off) ||
	    !json_is_array(shape) || json_array_size(shape) > QV_MAX_DIMS || begin < 0 || end < begin ||
	    off < 0 || strlen(dtype) >= sizeof(t->dtype) ||
	    get_digest(json_object_get(jt, "shard"), t->shard))
		return QV_ECORRUPT;
	t->name = qv__arena_strdup(a, name);
	if (!t->name)
		return -ENOMEM;
	strcpy(t->dtype, dtype);
	t->ndim = (uint32_t)json_array_size(shape);
	for (uint32_t i = 0; i < t->ndim; i++)
		t->shape[i] = json_integer_value(json_array_get(shape, i));
	t->data_offset = (uint64_t)begin;
	t->bytes = (uint64_t)(end - begin);
	t->shard_offset = (uint64_t)off;
	return 0;
}

int qv__manifest_decode(const char *buf, size_t len, qv__arena *a, qv_file **files,
                        size_t *n_files, int *single_file)
{
	int rc = QV_ECORRUPT;
	json_error_t jerr;
	json_t *root = json_loadb(buf, len, 0, &jerr);
	json_t *jfiles;
	int fmt = 0, single = 0;

	if (!root || json_unpack(root, "{s:i, s:b, s:o}", "quiver_manifest", &fmt, "single_file",
	                         &single, "files", &jfiles) ||
	    fmt != MANIFEST_FORMAT || !json_is_array(jfiles))
		goto out;
	size_t n = json_array_size(jfiles);
	qv_file *fs = qv__arena_alloc(a, (n ? n : 1) * sizeof(*fs));
	if (!fs) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *jf = json_array_get(jfiles, i);
		const char *name, *type;
		json_int_t size;
		if (json_unpack(jf, "{s:s, s:I, s:s}", "name", &name, "size", &size, "type", &type) ||
		    size < 0)
			goto out;
		fs[i].name = qv__arena_strdup(a, name);
		fs[i].size = (uint64_t)size;
		if (strcmp(type, "blob") == 0) {
			if (get_digest(json_object_get(jf, "shard"), fs[i].blob))
				goto out;
			continue;
		}
		json_t *jh = json_object_get(jf, "header"), *jt = json_object_get(jf, "tensors");
		if (strcmp(type, "safetensors") || !json_is_string(jh) || !json_is_array(jt))
			goto out;
		fs[i].safetensors = 1;
		fs[i].header_len = json_string_length(jh);
		fs[i].header = qv__arena_strndup(a, json_string_value(jh), fs[i].header_len);
		fs[i].n_tensors = json_array_size(jt);
		qv_tensor *ts = qv__arena_alloc(a, (fs[i].n_tensors ? fs[i].n_tensors : 1) * sizeof(*ts));
		if (!fs[i].name || !fs[i].header || !ts) {
			rc = -ENOMEM;
			goto out;
		}
		for (size_t k = 0; k < fs[i].n_tensors; k++) {
			rc = decode_tensor(json_array_get(jt, k), a, &ts[k]);
			if (rc)
				goto out;
		}
		rc = QV_ECORRUPT;
		fs[i].tensors = ts;
	}
	*files = fs;
	*n_files = n;
	*single_file = single;
	rc = 0;
out:
	json_decref(root);
	return rc;
}

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, QV_DIGEST_LEN);
}

int qv__manifest_shards(const qv_file *files, size_t n_files, uint8_t (**out)[QV_DIGEST_LEN],
                        size_t *n)
{
	size_t total = 0;
	for (size_t i = 0; i < n_files; i++)
		total += files[i].safetensors ? files[i].n_tensors : 1;
	uint8_t (*ds)[QV_DIGEST_LEN] = malloc((total ? total : 1) * QV_DIGEST_LEN);
	if (!ds)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < n_files; i++) {
		if (!files[i].safetensors) {
			memcpy(ds[k++], files[i].blob, QV_DIGEST_LEN);
			continue;
		}
		for (size_t t = 0; t < files[i].n_tensors; t++)
			memcpy(ds[k++], files[i].tensors[t].shard, QV_DIGEST_LEN);
	}
	qsort(ds, k, QV_DIGEST_LEN, cmp_digest);
	size_t u = 0;
	for (size_t i = 0; i < k; i++)
		if (u == 0 || memcmp(ds[u - 1], ds[i], QV_DIGEST_LEN) != 0)
			memmove(ds[u++], ds[i], QV_DIGEST_LEN);
	*out = ds;
	*n = u;
	return 0;
}
