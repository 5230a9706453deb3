/* Unit tests of the safetensors parser (store/safetensors.c).
 *
 * The parser sees untrusted bytes, so most cases here are rejections: each
 * must return the right code and a message that names the problem, because
 * that message is all a user sees when a publish is refused. The accepted
 * cases check every field of the tensor table, not just the return code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store_int.h"

#define NAME "m.safetensors"

/* Parses json over data_len bytes of data into a fresh arena and file. */
struct parsed {
	qv__arena a;
	qv_file f;
	char err[512];
	int rc;
};

static void parse(struct parsed *p, const char *json, uint64_t data_len)
{
	memset(p, 0, sizeof(*p));
	p->rc = qv__st_parse_header(json, strlen(json), data_len, NAME, &p->a, &p->f, p->err,
	                            sizeof(p->err));
}

static void expect_err(const struct parsed *p, int code, const char *word)
{
	if (p->rc != code)
		fail_msg("rc %d (%s), want %d; message: '%s'", p->rc, qv_strerror(p->rc), code,
		         p->err);
	if (!strstr(p->err, word))
		fail_msg("message '%s' lacks '%s'", p->err, word);
	if (!strstr(p->err, NAME))
		fail_msg("message '%s' does not name the file", p->err);
}

static void test_dtype_size(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		unsigned size;
	} cases[] = {
		{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
		{"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
		{"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},     {"C64", 8},
		{"f32", 0},  {"", 0},    {"F128", 0}, {"F32 ", 0},   {"BF", 0},
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(cases); i++)
		if (qv__dtype_size(cases[i].name) != cases[i].size)
			fail_msg("dtype '%s': size %u, want %u", cases[i].name,
			         qv__dtype_size(cases[i].name), cases[i].size);
}

static void test_valid_with_metadata(void **state)
{
	(void)state;
	/* written out of order on purpose, padded with spaces like real files */
	const char *json = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
	                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,32]},"
	                   "\"a\":{\"dtype\":\"BF16\",\"shape\":[8],\"data_offsets\":[0,16]},"
	                   "\"c\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[32,40]}}     ";
	struct parsed p;
	parse(&p, json, 40);
	if (p.rc)
		fail_msg("rc %d: %s", p.rc, p.err);
	assert_int_equal(p.f.safetensors, 1);
	assert_int_equal(p.f.n_tensors, 3);
	assert_int_equal(p.f.header_len, strlen(json));
	assert_memory_equal(p.f.header, json, strlen(json));
	assert_int_equal(p.f.size, 8 + strlen(json) + 40);

	const qv_tensor *t = p.f.tensors;
	assert_string_equal(t[0].name, "a");
	assert_string_equal(t[0].dtype, "BF16");
	assert_int_equal(t[0].ndim, 1);
	assert_int_equal(t[0].shape[0], 8);
	assert_int_equal(t[0].bytes, 16);
	assert_int_equal(t[0].data_offset, 0);

	assert_string_equal(t[1].name, "b");
	assert_string_equal(t[1].dtype, "F32");
	assert_int_equal(t[1].ndim, 2);
	assert_int_equal(t[1].shape[0], 2);
	assert_int_equal(t[1].shape[1], 2);
	assert_int_equal(t[1].bytes, 16);
	assert_int_equal(t[1].data_offset, 16);

	assert_string_equal(t[2].name, "c"); /* a scalar: one element */
	assert_string_equal(t[2].dtype, "F64");
	assert_int_equal(t[2].ndim, 0);
	assert_int_equal(t[2].bytes, 8);
	assert_int_equal(t[2].data_offset, 32);
	qv__arena_free(&p.a);
}

static void test_sorted_by_offset(void **state)
{
	(void)state;
	/* names in reverse alphabetical order of their offsets */
	const char *json = "{\"z\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
	                   "\"y\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
	                   "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[12,16]},"
	                   "\"m\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}";
	struct parsed p;
	parse(&p, json, 16);
	if (p.rc)
		fail_msg("rc %d: %s", p.rc, p.err);
	assert_int_equal(p.f.n_tensors, 4);
	static const char *order[] = {"z", "y", "m", "a"};
	for (size_t i = 0; i < 4; i++) {
		assert_string_equal(p.f.tensors[i].name, order[i]);
		assert_int_equal(p.f.tensors[i].data_offset, 4 * i);
	}
	qv__arena_free(&p.a);
}

static void test_zero_size(void **state)
{
	(void)state;
	struct parsed p;
	/* empty tensors anywhere inside [0, data_len], including the very end */
	const char *json = "{\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[4,4]},"
	                   "\"x\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
	                   "\"z\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[8,8]}}";
	parse(&p, json, 8);
	if (p.rc)
		fail_msg("rc %d: %s", p.rc, p.err);
	assert_int_equal(p.f.n_tensors, 3);
	assert_string_equal(p.f.tensors[0].name, "x");
	assert_string_equal(p.f.tensors[1].name, "e");
	assert_int_equal(p.f.tensors[1].bytes, 0);
	assert_int_equal(p.f.tensors[1].data_offset, 4);
	assert_int_equal(p.f.tensors[1].ndim, 2);
	assert_int_equal(p.f.tensors[1].shape[0], 0);
	assert_int_equal(p.f.tensors[1].shape[1], 4);
	assert_string_equal(p.f.tensors[2].name, "z");
	assert_int_equal(p.f.tensors[2].bytes, 0);
	assert_int_equal(p.f.tensors[2].data_offset, 8);
	qv__arena_free(&p.a);

	/* only empty tensors, no data */
	parse(&p, "{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0);
	if (p.rc)
		fail_msg("rc %d: %s", p.rc, p.err);
	assert_int_equal(p.f.n_tensors, 1);
	assert_int_equal(p.f.tensors[0].bytes, 0);
	qv__arena_free(&p.a);

	/* no tensors at all */
	parse(&p, "{}", 0);
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.f.n_tensors, 0);
	assert_int_equal(p.f.size, 10);
	qv__arena_free(&p.a);
	parse(&p, "{\"__metadata__\":{}}", 0);
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.f.n_tensors, 0);
	qv__arena_free(&p.a);

	/* an empty tensor past the end of the data is out of range */
	parse(&p,
	      "{\"x\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
	      "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9,9]}}",
	      8);
	expect_err(&p, QV_EFORMAT, "out of range");
	qv__arena_free(&p.a);
}

#define T(name, dtype, shape, b, e)                                                    \
	"\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e \
	"]}"

static void test_rejections(void **state)
{
	(void)state;
	static const struct {
		const char *what;
		const char *json;
		uint64_t data_len;
		int code;
		const char *word;
	} cases[] = {
		{"not JSON", "not json at all", 0, QV_EFORMAT, "invalid JSON"},
		{"truncated JSON", "{\"a\":{\"dtype\":", 0, QV_EFORMAT, "invalid JSON"},
		{"empty header", "", 0, QV_EFORMAT, "invalid JSON"},
		{"array header", "[1,2,3]", 0, QV_EFORMAT, "not a JSON object"},
		{"string header", "\"x\"", 0, QV_EFORMAT, "JSON"},
		{"number header", "42", 0, QV_EFORMAT, "JSON"},
		{"unknown dtype", "{" T("a", "F128", "[2]", 0, 32) "}", 32, QV_EFORMAT,
		 "unknown dtype"},
		{"lowercase dtype", "{" T("a", "f32", "[2]", 0, 8) "}", 8, QV_EFORMAT,
		 "unknown dtype"},
		{"dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
		 4, QV_EFORMAT, "dtype"},
		{"shape x dtype too small", "{" T("a", "F32", "[3]", 0, 8) "}", 8, QV_EFORMAT,
		 "shape x dtype"},
		{"shape x dtype too big", "{" T("a", "F32", "[2,2]", 0, 8) "}", 8, QV_EFORMAT,
		 "shape x dtype"},
		{"scalar with no bytes", "{" T("a", "F32", "[]", 0, 0) "}", 0, QV_EFORMAT,
		 "shape x dtype"},
		{"end beyond data", "{" T("a", "U8", "[16]", 0, 16) "}", 8, QV_EFORMAT,
		 "out of range"},
		{"overlap", "{" T("a", "U8", "[8]", 0, 8) "," T("b", "U8", "[8]", 4, 12) "}", 12,
		 QV_EFORMAT, "overlap"},
		{"same range twice",
		 "{" T("a", "U8", "[8]", 0, 8) "," T("b", "U8", "[8]", 0, 8) "}", 8, QV_EFORMAT,
		 "overlap"},
		{"gap", "{" T("a", "U8", "[4]", 0, 4) "," T("b", "U8", "[4]", 8, 12) "}", 12,
		 QV_EFORMAT, "not covered"},
		{"gap at start", "{" T("a", "U8", "[4]", 4, 8) "}", 8, QV_EFORMAT, "not covered"},
		{"trailing bytes", "{" T("a", "U8", "[4]", 0, 4) "}", 8, QV_EFORMAT, "not covered"},
		{"data but no tensors", "{}", 4, QV_EFORMAT, "not covered"},
		{"duplicate name", "{" T("a", "U8", "[4]", 0, 4) "," T("a", "U8", "[4]", 4, 8) "}",
		 8, QV_EFORMAT, "duplicate"},
		{"17 dims",
		 "{" T("a", "U8", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, QV_ELIMIT,
		 "dimensions"},
		{"begin > end", "{" T("a", "U8", "[0]", 8, 4) "}", 8, QV_EFORMAT, "begin <= end"},
		{"negative begin", "{" T("a", "U8", "[4]", -4, 0) "}", 4, QV_EFORMAT,
		 "data_offsets"},
		{"negative end", "{" T("a", "U8", "[0]", 0, -1) "}", 4, QV_EFORMAT, "data_offsets"},
		{"negative dim", "{" T("a", "U8", "[-4]", 0, 4) "}", 4, QV_EFORMAT, "non-negative"},
		{"negative dims cancel", "{" T("a", "U8", "[-2,-2]", 0, 4) "}", 4, QV_EFORMAT,
		 "non-negative"},
		{"float dim", "{" T("a", "U8", "[4.0]", 0, 4) "}", 4, QV_EFORMAT, "non-negative"},
		{"float offsets", "{" T("a", "U8", "[4]", 0.0, 4.0) "}", 4, QV_EFORMAT,
		 "data_offsets"},
		{"three offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,4]}}",
		 4, QV_EFORMAT, "data_offsets"},
		{"shape overflow",
		 "{" T("a", "U8", "[4294967296,4294967296,4294967296]", 0, 0) "}", 0, QV_EFORMAT,
		 "overflow"},
		{"bytes overflow", "{" T("a", "F64", "[4611686018427387904]", 0, 0) "}", 0,
		 QV_EFORMAT, "shape x dtype"},
		{"entry not an object", "{\"a\":[1,2]}", 0, QV_EFORMAT, "not a JSON object"},
		{"missing shape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", 4, QV_EFORMAT,
		 "shape"},
		{"missing data_offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4, QV_EFORMAT,
		 "data_offsets"},
		{"empty tensor name", "{" T("", "U8", "[4]", 0, 4) "}", 4, QV_EFORMAT, "empty"},
		{"metadata not an object",
		 "{\"__metadata__\":\"x\"," T("a", "U8", "[4]", 0, 4) "}", 4, QV_EFORMAT,
		 "__metadata__"},
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(cases); i++) {
		struct parsed p;
		parse(&p, cases[i].json, cases[i].data_len);
		if (p.rc != cases[i].code || !strstr(p.err, cases[i].word) || !strstr(p.err, NAME))
			fail_msg("case '%s': rc %d (want %d), message '%s' (want '%s')",
			         cases[i].what, p.rc, cases[i].code, p.err, cases[i].word);
		qv__arena_free(&p.a);
	}
}

/* ---- qv__st_parse_fd over temp files ------------------------------------------ */

static int tmp_file(const void *bytes, size_t n)
{
	char path[] = "/tmp/qv-st-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(unlink(path), 0);
	if (n)
		assert_int_equal(write(fd, bytes, n), (ssize_t)n);
	return fd;
}

/* 8-byte little-endian hlen, then json (its real length), then data_len zero bytes. */
static int st_file(uint64_t hlen, const char *json, size_t data_len, size_t *size)
{
	size_t jl = json ? strlen(json) : 0;
	size_t n = 8 + jl + data_len;
	unsigned char *buf = calloc(1, n);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)(hlen >> (8 * i));
	if (jl)
		memcpy(buf + 8, json, jl);
	for (size_t i = 0; i < data_len; i++)
		buf[8 + jl + i] = (unsigned char)(i * 37 + 1);
	int fd = tmp_file(buf, n);
	free(buf);
	*size = n;
	return fd;
}

static void parse_fd(struct parsed *p, int fd, uint64_t size)
{
	memset(p, 0, sizeof(*p));
	p->rc = qv__st_parse_fd(fd, size, NAME, &p->a, &p->f, p->err, sizeof(p->err));
}

static void test_fd_valid(void **state)
{
	(void)state;
	const char *json = "{" T("w", "F32", "[2,3]", 0, 24) "," T("b", "U8", "[5]", 24, 29) "}  ";
	size_t size;
	int fd = st_file(strlen(json), json, 29, &size);
	struct parsed p;
	parse_fd(&p, fd, size);
	if (p.rc)
		fail_msg("rc %d: %s", p.rc, p.err);
	assert_int_equal(p.f.size, size);
	assert_int_equal(p.f.header_len, strlen(json));
	assert_memory_equal(p.f.header, json, strlen(json));
	assert_int_equal(p.f.n_tensors, 2);
	assert_string_equal(p.f.tensors[0].name, "w");
	assert_int_equal(p.f.tensors[0].bytes, 24);
	assert_string_equal(p.f.tensors[1].name, "b");
	assert_int_equal(p.f.tensors[1].data_offset, 24);
	qv__arena_free(&p.a);
	close(fd);
}

static void test_fd_rejections(void **state)
{
	(void)state;
	struct parsed p;
	size_t size;
	int fd;

	/* fewer than 8 bytes */
	fd = tmp_file("\x02\x00\x00\x00\x00", 5);
	parse_fd(&p, fd, 5);
	expect_err(&p, QV_EFORMAT, "truncated");
	qv__arena_free(&p.a);
	close(fd);
	fd = tmp_file("", 0);
	parse_fd(&p, fd, 0);
	expect_err(&p, QV_EFORMAT, "truncated");
	qv__arena_free(&p.a);
	close(fd);

	/* header length beyond the file */
	fd = st_file(1000, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "beyond the end");
	qv__arena_free(&p.a);
	close(fd);
	/* one byte beyond */
	fd = st_file(3, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "beyond the end");
	qv__arena_free(&p.a);
	close(fd);
	/* exactly at the bound: not a limit error, just beyond this small file */
	fd = st_file(QV_HEADER_MAX, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "beyond the end");
	qv__arena_free(&p.a);
	close(fd);

	/* over the 100 MB bound: QV_ELIMIT, before any allocation */
	fd = st_file(QV_HEADER_MAX + 1, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_ELIMIT, "bound");
	qv__arena_free(&p.a);
	close(fd);
	fd = st_file(UINT64_MAX, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_ELIMIT, "bound");
	qv__arena_free(&p.a);
	close(fd);

	/* header length 0 and 1 */
	fd = st_file(0, "{}", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "too short");
	qv__arena_free(&p.a);
	close(fd);

	/* data section shorter than the header says */
	const char *json = "{" T("w", "U8", "[16]", 0, 16) "}";
	fd = st_file(strlen(json), json, 8, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "out of range");
	qv__arena_free(&p.a);
	close(fd);

	/* the caller's size is what counts: a file cut short under a claimed size */
	fd = st_file(strlen(json), json, 16, &size);
	parse_fd(&p, fd, size + 8);
	expect_err(&p, QV_EFORMAT, "not covered");
	qv__arena_free(&p.a);
	close(fd);

	/* header JSON errors surface through the fd path too */
	fd = st_file(5, "{\"a\":", 0, &size);
	parse_fd(&p, fd, size);
	expect_err(&p, QV_EFORMAT, "invalid JSON");
	qv__arena_free(&p.a);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dtype_size),
		cmocka_unit_test(test_valid_with_metadata),
		cmocka_unit_test(test_sorted_by_offset),
		cmocka_unit_test(test_zero_size),
		cmocka_unit_test(test_rejections),
		cmocka_unit_test(test_fd_valid),
		cmocka_unit_test(test_fd_rejections),
	};
	return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
