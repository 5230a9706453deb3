/* The safetensors parser: untrusted bytes in, a validated tensor table out.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON
 * (an object: tensor name -> {dtype, shape, data_offsets}, plus an optional
 * "__metadata__" map), then the data section. We accept a file only if the
 * tensors tile the data section exactly: no byte out of range, no overlap,
 * no gap, and every tensor's shape x dtype size equals its byte length. That
 * is what lets export rebuild the file byte for byte from the header and the
 * tensors alone. Everything is bounded: header size, dimensions, tensors. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "store_int.h"

static const struct {
	const char *name;
	unsigned size;
} dtypes[] = {
	{"BOOL", 1}, {"U8", 1},  {"I8", 1},   {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
	{"I16", 2},  {"U16", 2}, {"F16", 2},  {"BF16", 2},    {"I32", 4},     {"U32", 4},
	{"F32", 4},  {"F64", 8}, {"I64", 8},  {"U64", 8},     {"C64", 8},
};

unsigned qv__dtype_size(const char *dtype)
{
	for (size_t i = 0; i < QV_ARRAY_LEN(dtypes); i++)
		if (strcmp(dtypes[i].name, dtype) == 0)
			return dtypes[i].size;
	return 0;
}

static int get_u64(json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int cmp_tensor(const void *a, const void *b)
{
	const qv_tensor *x = a, *y = b;
	if (x->data_offset != y->data_offset)
		return x->data_offset < y->data_offset ? -1 : 1;
	if (x->bytes != y->bytes)
		return x->bytes < y->bytes ? -1 : 1;
	return strcmp(x->name, y->name);
}

#define FAIL(code, ...)                                   \
	do {                                              \
		snprintf(err, errlen, __VA_ARGS__);       \
		rc = (code);                              \
		goto out;                                 \
	} while (0)

static int parse_tensor(const char *key, json_t *val, uint64_t data_len, const char *name,
                        qv__arena *a, qv_tensor *t, char *err, size_t errlen)
{
	int rc = 0;
	json_t *jd, *js, *jo;
	uint64_t begin, end;

	if (strlen(key) == 0 || strlen(key) > 4096)
		FAIL(QV_EFORMAT, "%s: tensor name is empty or over 4096 bytes", name);
	if (!json_is_object(val))
		FAIL(QV_EFORMAT, "%s: tensor '%s': entry is not a JSON object", name, key);
	jd = json_object_get(val, "dtype");
	js = json_object_get(val, "shape");
	jo = json_object_get(val, "data_offsets");
	if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
		FAIL(QV_EFORMAT, "%s: tensor '%s': needs dtype, shape and data_offsets", name, key);
	unsigned esize = qv__dtype_size(json_string_value(jd));
	if (esize == 0)
		FAIL(QV_EFORMAT, "%s: tensor '%s': unknown dtype '%.20s'", name, key,
		     json_string_value(jd));
	if (json_array_size(js) > QV_MAX_DIMS)
		FAIL(QV_ELIMIT, "%s: tensor '%s': %zu dimensions (limit %d)", name, key,
		     json_array_size(js), QV_MAX_DIMS);
	if (json_array_size(jo) != 2 || get_u64(json_array_get(jo, 0), &begin) ||
	    get_u64(json_array_get(jo, 1), &end) || begin > end)
		FAIL(QV_EFORMAT, "%s: tensor '%s': data_offsets must be [begin, end] with begin <= end",
		     name, key);
	if (end > data_len)
		FAIL(QV_EFORMAT,
		     "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data section is %llu bytes)",
		     name, key, (unsigned long long)begin, (unsigned long long)end,
		     (unsigned long long)data_len);
	uint64_t n = 1;
	for (size_t i = 0; i < json_array_size(js); i++) {
		uint64_t d;
		if (get_u64(json_array_get(js, i), &d))
			FAIL(QV_EFORMAT, "%s: tensor '%s': shape must hold non-negative integers", name,
			     key);
		t->shape[i] = (int64_t)d;
		if (d != 0 && n > UINT64_MAX / d)
			FAIL(QV_EFORMAT, "%s: tensor '%s': shape overflows", name, key);
		n *= d;
	}
	if (n > UINT64_MAX / esize || n * esize != end - begin)
		FAIL(QV_EFORMAT,
		     "%s: tensor '%s': shape x dtype size is %llu elements x %u bytes but data_offsets span %llu bytes",
		     name, key, (unsigned long long)n, esize, (unsigned long long)(end - begin));
	t->name = qv__arena_strdup(a, key);
	if (!t->name)
		FAIL(-ENOMEM, "out of memory");
	snprintf(t->dtype, sizeof(t->dtype), "%s", json_string_value(jd));
	t->ndim = (uint32_t)json_array_size(js);
	t->bytes = end - begin;
	t->data_offset = begin;
out:
	return rc;
}

int qv__st_parse_header(const char *hdr, size_t hdr_len, uint64_t data_len, const char *name,
                        qv__arena *a, qv_file *f, char *err, size_t errlen)
{
	int rc = 0;
	json_error_t jerr;
	json_t *root = json_loadb(hdr, hdr_len, JSON_REJECT_DUPLICATES, &jerr);
	qv_tensor *ts = NULL;
	size_t n = 0;

	if (!root) {
		if (strstr(jerr.text, "duplicate object key"))
			FAIL(QV_EFORMAT, "%s: duplicate tensor name in header (%s)", name, jerr.text);
		FAIL(QV_EFORMAT, "%s: invalid JSON header: %s at byte %d", name, jerr.text,
		     jerr.position);
	}
	if (!json_is_object(root))
		FAIL(QV_EFORMAT, "%s: header is not a JSON object", name);
	size_t count = json_object_size(root);
	if (count > QV_TENSORS_MAX)
		FAIL(QV_ELIMIT, "%s: %zu tensors (limit %u)", name, count, QV_TENSORS_MAX);
	ts = count ? qv__arena_alloc(a, count * sizeof(*ts)) : NULL;
	if (count && !ts)
		FAIL(-ENOMEM, "out of memory");

	const char *key;
	json_t *val;
	json_object_foreach(root, key, val)
	{
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(val))
				FAIL(QV_EFORMAT, "%s: __metadata__ is not a JSON object", name);
			continue;
		}
		rc = parse_tensor(key, val, data_len, name, a, &ts[n], err, errlen);
		if (rc)
			goto out;
		n++;
	}
	if (n)
		qsort(ts, n, sizeof(*ts), cmp_tensor);

	/* The tensors must tile [0, data_len) exactly; empty tensors may sit at
	 * any offset inside it. */
	uint64_t expect = 0;
	const qv_tensor *prev = NULL;
	for (size_t i = 0; i < n; i++) {
		const qv_tensor *t = &ts[i];
		if (t->bytes == 0)
			continue;
		if (t->data_offset < expect)
			FAIL(QV_EFORMAT, "%s: tensors '%s' and '%s' overlap at data offset %llu", name,
			     prev->name, t->name, (unsigned long long)t->data_offset);
		if (t->data_offset > expect)
			FAIL(QV_EFORMAT, "%s: data bytes [%llu, %llu) are not covered by any tensor",
			     name, (unsigned long long)expect, (unsigned long long)t->data_offset);
		expect = t->data_offset + t->bytes;
		prev = t;
	}
	if (expect != data_len)
		FAIL(QV_EFORMAT, "%s: data bytes [%llu, %llu) are not covered by any tensor", name,
		     (unsigned long long)expect, (unsigned long long)data_len);

	f->header = qv__arena_strndup(a, hdr, hdr_len);
	if (!f->header)
		FAIL(-ENOMEM, "out of memory");
	f->header_len = hdr_len;
	f->safetensors = 1;
	f->n_tensors = n;
	f->tensors = ts;
	f->size = 8 + hdr_len + data_len;
out:
	json_decref(root);
	return rc;
}

int qv__st_parse_fd(int fd, uint64_t size, const char *name, qv__arena *a, qv_file *f,
                    char *err, size_t errlen)
{
	int rc = 0;
	uint8_t lenbuf[8];
	char *hdr = NULL;
	uint64_t hlen = 0;

	if (size < 8)
		FAIL(QV_EFORMAT, "%s: truncated: %llu bytes, too short for a safetensors header", name,
		     (unsigned long long)size);
	rc = qv__pread_full(fd, lenbuf, 8, 0);
	if (rc)
		FAIL(rc, "%s: read: %s", name, qv_strerror(rc));
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | lenbuf[i];
	if (hlen > QV_HEADER_MAX)
		FAIL(QV_ELIMIT, "%s: header length %llu exceeds the %llu-byte bound", name,
		     (unsigned long long)hlen, QV_HEADER_MAX);
	if (hlen > size - 8)
		FAIL(QV_EFORMAT, "%s: truncated: header length %llu is beyond the end of the file (%llu bytes)",
		     name, (unsigned long long)hlen, (unsigned long long)size);
	if (hlen < 2)
		FAIL(QV_EFORMAT, "%s: header length %llu is too short for a JSON object", name,
		     (unsigned long long)hlen);
	hdr = malloc(hlen);
	if (!hdr)
		FAIL(-ENOMEM, "%s: out of memory for a %llu-byte header", name,
		     (unsigned long long)hlen);
	rc = qv__pread_full(fd, hdr, hlen, 8);
	if (rc)
		FAIL(rc, "%s: read: %s", name, qv_strerror(rc));
	rc = qv__st_parse_header(hdr, hlen, size - 8 - hlen, name, a, f, err, errlen);
out:
	free(hdr);
	return rc;
}
