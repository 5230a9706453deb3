/* Unit tests of digests and manifests (store/digest.c, store/manifest.c).
 *
 * A version is named by the SHA-256 of its encoded manifest, so the encoding
 * must be a pure function of its input (same files -> same bytes) and must
 * round-trip everything export needs: the verbatim header, every tensor's
 * shard and offset, every blob. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store_int.h"

static void fill_digest(uint8_t d[QV_DIGEST_LEN], unsigned seed)
{
	for (int i = 0; i < QV_DIGEST_LEN; i++)
		d[i] = (uint8_t)(seed * 131u + (unsigned)i * 29u + 7u);
}

static void test_hex_known(void **state)
{
	(void)state;
	uint8_t d[QV_DIGEST_LEN];
	char hex[QV_HEX_LEN + 1];
	for (int i = 0; i < QV_DIGEST_LEN; i++)
		d[i] = (uint8_t)(i * 8 + 1); /* 01 09 11 ... f9 */
	memset(hex, 'X', sizeof(hex));
	qv_digest_hex(d, hex);
	assert_int_equal(strlen(hex), QV_HEX_LEN);
	assert_string_equal(hex, "0109111921293139414951596169717981899199a1a9b1b9c1c9d1d9e1e9f1f9");

	memset(d, 0, sizeof(d));
	qv_digest_hex(d, hex);
	assert_string_equal(hex, "0000000000000000000000000000000000000000000000000000000000000000");
	memset(d, 0xff, sizeof(d));
	qv_digest_hex(d, hex);
	assert_string_equal(hex, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
}

static void test_hex_round_trip(void **state)
{
	(void)state;
	for (unsigned seed = 0; seed < 64; seed++) {
		uint8_t d[QV_DIGEST_LEN], back[QV_DIGEST_LEN];
		char hex[QV_HEX_LEN + 1];
		fill_digest(d, seed);
		qv_digest_hex(d, hex);
		memset(back, 0, sizeof(back));
		assert_int_equal(qv__hex_parse(hex, back), 0);
		assert_memory_equal(d, back, QV_DIGEST_LEN);
	}
	/* upper case parses to the same bytes */
	uint8_t a[QV_DIGEST_LEN], b[QV_DIGEST_LEN];
	assert_int_equal(qv__hex_parse("ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789", a), 0);
	assert_int_equal(qv__hex_parse("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789", b), 0);
	assert_memory_equal(a, b, QV_DIGEST_LEN);
	assert_int_equal(a[0], 0xab);
	assert_int_equal(a[31], 0x89);
}

static void test_hex_invalid(void **state)
{
	(void)state;
	static const char *bad[] = {
		"",
		"00",
		"000000000000000000000000000000000000000000000000000000000000000",   /* 63 */
		"00000000000000000000000000000000000000000000000000000000000000000", /* 65 */
		"g000000000000000000000000000000000000000000000000000000000000000",
		"000000000000000000000000000000000000000000000000000000000000000g",
		"0000000000000000000000000000000 0000000000000000000000000000000",
		"sha256:00000000000000000000000000000000000000000000000000000000",
		"-000000000000000000000000000000000000000000000000000000000000000",
		"0x00000000000000000000000000000000000000000000000000000000000000",
	};
	uint8_t d[QV_DIGEST_LEN];
	for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++)
		if (qv__hex_parse(bad[i], d) != QV_EFORMAT)
			fail_msg("'%s' was accepted", bad[i]);
	assert_int_equal(qv__hex_parse(NULL, d), QV_EFORMAT);
}

/* ---- manifests ----------------------------------------------------------------------- */

/* A header with everything a JSON encoder might be tempted to normalise:
 * escapes, non-ASCII UTF-8, odd spacing, trailing padding. */
static const char HEADER[] =
	"{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9 \\\"q\\\" \\\\ \\u00e9\"},  "
	"\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]} , "
	"\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]}}\t\n      ";

struct sample {
	qv_tensor t[3];
	qv_file f[3];
};

static void make_sample(struct sample *s)
{
	memset(s, 0, sizeof(*s));
	qv_tensor *t = s->t;
	t[0].name = "a";
	strcpy(t[0].dtype, "F32");
	t[0].ndim = 2;
	t[0].shape[0] = 2;
	t[0].shape[1] = 3;
	t[0].bytes = 24;
	t[0].data_offset = 0;
	fill_digest(t[0].shard, 1);
	t[0].shard_offset = 0;
	t[1].name = "b";
	strcpy(t[1].dtype, "BF16");
	t[1].ndim = 0;
	t[1].bytes = 2;
	t[1].data_offset = 24;
	fill_digest(t[1].shard, 1);
	t[1].shard_offset = 4096;
	t[2].name = "model.layers.0.\xc3\xa9";
	strcpy(t[2].dtype, "F8_E4M3");
	t[2].ndim = QV_MAX_DIMS;
	for (int i = 0; i < QV_MAX_DIMS; i++)
		t[2].shape[i] = i == 3 ? 5000000000ll : 1;
	t[2].bytes = 5000000000ull;
	t[2].data_offset = 26;
	fill_digest(t[2].shard, 2);
	t[2].shard_offset = 1ull << 40;

	s->f[0].name = "model.safetensors";
	s->f[0].size = 8 + sizeof(HEADER) - 1 + 26 + 5000000000ull;
	s->f[0].safetensors = 1;
	s->f[0].header = HEADER;
	s->f[0].header_len = sizeof(HEADER) - 1;
	s->f[0].n_tensors = 3;
	s->f[0].tensors = t;

	s->f[1].name = "config.json";
	s->f[1].size = 123;
	fill_digest(s->f[1].blob, 3);

	s->f[2].name = "sub/dir/tokenizer.json";
	s->f[2].size = 0;
	fill_digest(s->f[2].blob, 4);
}

static void assert_files_equal(const qv_file *a, const qv_file *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(a[i].name, b[i].name);
		assert_int_equal(a[i].size, b[i].size);
		assert_int_equal(a[i].safetensors, b[i].safetensors);
		if (!a[i].safetensors) {
			assert_memory_equal(a[i].blob, b[i].blob, QV_DIGEST_LEN);
			continue;
		}
		assert_int_equal(a[i].header_len, b[i].header_len);
		assert_memory_equal(a[i].header, b[i].header, a[i].header_len);
		assert_int_equal(a[i].n_tensors, b[i].n_tensors);
		for (size_t k = 0; k < a[i].n_tensors; k++) {
			const qv_tensor *x = &a[i].tensors[k], *y = &b[i].tensors[k];
			assert_string_equal(x->name, y->name);
			assert_string_equal(x->dtype, y->dtype);
			assert_int_equal(x->ndim, y->ndim);
			for (uint32_t d = 0; d < x->ndim; d++)
				assert_int_equal(x->shape[d], y->shape[d]);
			assert_int_equal(x->bytes, y->bytes);
			assert_int_equal(x->data_offset, y->data_offset);
			assert_memory_equal(x->shard, y->shard, QV_DIGEST_LEN);
			assert_int_equal(x->shard_offset, y->shard_offset);
		}
	}
}

static void test_manifest_round_trip(void **state)
{
	(void)state;
	struct sample s;
	make_sample(&s);
	for (int single = 0; single <= 1; single++) {
		size_t n_in = single ? 1 : 3;
		char *buf = NULL;
		size_t len = 0;
		assert_int_equal(qv__manifest_encode(s.f, n_in, single, &buf, &len), 0);
		assert_non_null(buf);
		assert_int_equal(len, strlen(buf));
		/* ENSURE_ASCII: the stored manifest is plain ASCII */
		for (size_t i = 0; i < len; i++)
			if ((unsigned char)buf[i] >= 0x80)
				fail_msg("byte %zu of the manifest is not ASCII", i);

		qv__arena a = {0};
		qv_file *files = NULL;
		size_t n = 0;
		int sf = -1;
		assert_int_equal(qv__manifest_decode(buf, len, &a, &files, &n, &sf), 0);
		assert_int_equal(n, n_in);
		assert_int_equal(sf, single);
		assert_files_equal(s.f, files, n);
		/* the verbatim header, byte for byte, with its padding */
		assert_int_equal(files[0].header_len, sizeof(HEADER) - 1);
		assert_memory_equal(files[0].header, HEADER, sizeof(HEADER) - 1);

		/* re-encoding the decoded manifest gives the same bytes */
		char *buf2 = NULL;
		size_t len2 = 0;
		assert_int_equal(qv__manifest_encode(files, n, sf, &buf2, &len2), 0);
		assert_int_equal(len2, len);
		assert_memory_equal(buf2, buf, len);
		free(buf2);
		qv__arena_free(&a);
		free(buf);
	}
}

static void test_manifest_empty(void **state)
{
	(void)state;
	char *buf = NULL;
	size_t len = 0;
	qv_file f = {.name = "empty.safetensors", .size = 10, .safetensors = 1, .header = "{}",
	             .header_len = 2};
	assert_int_equal(qv__manifest_encode(&f, 1, 1, &buf, &len), 0);
	qv__arena a = {0};
	qv_file *files;
	size_t n;
	int sf;
	assert_int_equal(qv__manifest_decode(buf, len, &a, &files, &n, &sf), 0);
	assert_int_equal(n, 1);
	assert_int_equal(files[0].n_tensors, 0);
	assert_int_equal(files[0].header_len, 2);
	assert_memory_equal(files[0].header, "{}", 2);
	qv__arena_free(&a);
	free(buf);

	assert_int_equal(qv__manifest_encode(NULL, 0, 0, &buf, &len), 0);
	a = (qv__arena){0};
	assert_int_equal(qv__manifest_decode(buf, len, &a, &files, &n, &sf), 0);
	assert_int_equal(n, 0);
	qv__arena_free(&a);
	free(buf);
}

static void test_manifest_deterministic(void **state)
{
	(void)state;
	struct sample s1, s2;
	make_sample(&s1);
	make_sample(&s2);
	/* the same content in different memory: different pointers, same bytes */
	char hdr_copy[sizeof(HEADER)];
	memcpy(hdr_copy, HEADER, sizeof(HEADER));
	s2.f[0].header = hdr_copy;
	s2.f[0].tensors = s2.t;

	char *b1, *b2, *b3;
	size_t l1, l2, l3;
	assert_int_equal(qv__manifest_encode(s1.f, 3, 0, &b1, &l1), 0);
	assert_int_equal(qv__manifest_encode(s2.f, 3, 0, &b2, &l2), 0);
	assert_int_equal(l1, l2);
	assert_memory_equal(b1, b2, l1);
	free(b2);

	/* any change shows: a shard offset, a blob digest, the single_file flag,
	 * one byte of the header */
	s2.t[1].shard_offset += QV_ALIGN;
	assert_int_equal(qv__manifest_encode(s2.f, 3, 0, &b2, &l2), 0);
	assert_true(l1 != l2 || memcmp(b1, b2, l1) != 0);
	free(b2);
	s2.t[1].shard_offset -= QV_ALIGN;

	s2.f[1].blob[31] ^= 1;
	assert_int_equal(qv__manifest_encode(s2.f, 3, 0, &b2, &l2), 0);
	assert_true(l1 != l2 || memcmp(b1, b2, l1) != 0);
	free(b2);
	s2.f[1].blob[31] ^= 1;

	assert_int_equal(qv__manifest_encode(s2.f, 3, 1, &b3, &l3), 0);
	assert_true(l1 != l3 || memcmp(b1, b3, l1) != 0);
	free(b3);

	hdr_copy[sizeof(HEADER) - 2] = '\t';
	assert_int_equal(qv__manifest_encode(s2.f, 3, 0, &b2, &l2), 0);
	assert_true(l1 != l2 || memcmp(b1, b2, l1) != 0);
	free(b2);
	hdr_copy[sizeof(HEADER) - 2] = ' ';

	assert_int_equal(qv__manifest_encode(s2.f, 3, 0, &b2, &l2), 0);
	assert_int_equal(l1, l2);
	assert_memory_equal(b1, b2, l1);
	free(b2);
	free(b1);
}

static void test_manifest_decode_rejects(void **state)
{
	(void)state;
	static const char *bad[] = {
		"",
		"not json",
		"[]",
		"{}",
		"{\"quiver_manifest\":2,\"single_file\":false,\"files\":[]}",
		"{\"quiver_manifest\":1,\"single_file\":false}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":{}}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":[{\"name\":\"x\",\"size\":1,"
		"\"type\":\"blob\",\"shard\":\"00\"}]}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":[{\"name\":\"x\",\"size\":-1,"
		"\"type\":\"blob\",\"shard\":"
		"\"0000000000000000000000000000000000000000000000000000000000000000\"}]}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":[{\"name\":\"x\",\"size\":1,"
		"\"type\":\"tarball\"}]}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":[{\"name\":\"x\",\"size\":1,"
		"\"type\":\"safetensors\",\"header\":\"{}\",\"tensors\":[{\"name\":\"a\",\"dtype\":"
		"\"U8\",\"shape\":[1],\"begin\":1,\"end\":0,\"offset\":0,\"shard\":"
		"\"0000000000000000000000000000000000000000000000000000000000000000\"}]}]}",
		"{\"quiver_manifest\":1,\"single_file\":false,\"files\":[{\"name\":\"x\",\"size\":1,"
		"\"type\":\"safetensors\",\"header\":\"{}\",\"tensors\":[{\"name\":\"a\",\"dtype\":"
		"\"U8\",\"shape\":[1],\"begin\":0,\"end\":1,\"offset\":0,\"shard\":\"zz\"}]}]}",
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
		qv__arena a = {0};
		qv_file *files;
		size_t n;
		int sf;
		int rc = qv__manifest_decode(bad[i], strlen(bad[i]), &a, &files, &n, &sf);
		qv__arena_free(&a);
		if (rc != QV_ECORRUPT)
			fail_msg("case %zu: rc %d, want QV_ECORRUPT", i, rc);
	}
}

static void test_manifest_shards(void **state)
{
	(void)state;
	uint8_t d[5][QV_DIGEST_LEN];
	for (unsigned i = 0; i < 5; i++)
		memset(d[i], (int)(0x10 * (i + 1)), QV_DIGEST_LEN); /* d[0] < d[1] < ... */
	d[2][31] = 0; /* differs from d[2] pattern only at the end; still between d[1] and d[3] */

	qv_tensor t1[4] = {0}, t2[2] = {0};
	memcpy(t1[0].shard, d[3], QV_DIGEST_LEN);
	memcpy(t1[1].shard, d[0], QV_DIGEST_LEN);
	memcpy(t1[2].shard, d[3], QV_DIGEST_LEN);
	memcpy(t1[3].shard, d[2], QV_DIGEST_LEN);
	memcpy(t2[0].shard, d[0], QV_DIGEST_LEN);
	memcpy(t2[1].shard, d[4], QV_DIGEST_LEN);
	qv_file f[4] = {0};
	f[0].safetensors = 1;
	f[0].tensors = t1;
	f[0].n_tensors = 4;
	memcpy(f[1].blob, d[1], QV_DIGEST_LEN);
	f[2].safetensors = 1;
	f[2].tensors = t2;
	f[2].n_tensors = 2;
	memcpy(f[3].blob, d[3], QV_DIGEST_LEN);

	uint8_t (*out)[QV_DIGEST_LEN] = NULL;
	size_t n = 0;
	assert_int_equal(qv__manifest_shards(f, 4, &out, &n), 0);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < n; i++)
		assert_memory_equal(out[i], d[i], QV_DIGEST_LEN);
	free(out);

	/* no shards at all: an empty safetensors file, or no files */
	qv_file e = {.safetensors = 1};
	out = NULL;
	assert_int_equal(qv__manifest_shards(&e, 1, &out, &n), 0);
	assert_int_equal(n, 0);
	free(out);
	out = NULL;
	assert_int_equal(qv__manifest_shards(NULL, 0, &out, &n), 0);
	assert_int_equal(n, 0);
	free(out);

	/* every tensor in one shard */
	qv_tensor t3[3] = {0};
	for (int i = 0; i < 3; i++)
		memcpy(t3[i].shard, d[1], QV_DIGEST_LEN);
	qv_file g = {.safetensors = 1, .tensors = t3, .n_tensors = 3};
	assert_int_equal(qv__manifest_shards(&g, 1, &out, &n), 0);
	assert_int_equal(n, 1);
	assert_memory_equal(out[0], d[1], QV_DIGEST_LEN);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hex_known),
		cmocka_unit_test(test_hex_round_trip),
		cmocka_unit_test(test_hex_invalid),
		cmocka_unit_test(test_manifest_round_trip),
		cmocka_unit_test(test_manifest_empty),
		cmocka_unit_test(test_manifest_deterministic),
		cmocka_unit_test(test_manifest_decode_rejects),
		cmocka_unit_test(test_manifest_shards),
	};
	return cmocka_run_group_tests_name("digest", tests, NULL, NULL);
}
