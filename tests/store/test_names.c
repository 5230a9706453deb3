/* Unit tests of the naming rules (store/names.c).
 *
 * Names become LMDB keys, export paths and command-line words, so the
 * rejections matter more than the acceptances: each one below is a way to
 * escape a folder, hide a file, or break the MODEL@REF syntax. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "store_int.h"

static void check(int (*fn)(const char *), const char *kind, const char *name, int want)
{
	int rc = fn(name);
	if (rc != want)
		fail_msg("%s '%s' (%zu bytes): rc %d, want %d", kind, name ? name : "(null)",
		         name ? strlen(name) : 0, rc, want);
}

static void test_model_accepted(void **state)
{
	(void)state;
	static const char *ok[] = {
		"llama", "org/name", "a.b-c_d+e", "Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct",
		"a/b/c", "x", "0", "v1.0", "a.b",
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(ok); i++)
		check(qv_name_check_model, "model", ok[i], 0);

	char n128[QV_NAME_MAX + 1];
	memset(n128, 'a', QV_NAME_MAX);
	n128[QV_NAME_MAX] = 0;
	check(qv_name_check_model, "model", n128, 0);
	n128[60] = '/'; /* still 128 bytes, two parts */
	check(qv_name_check_model, "model", n128, 0);
}

static void test_model_rejected(void **state)
{
	(void)state;
	static const char *bad[] = {
		"", "..", ".", "a/../b", "../a", "a/..", "/abs", ".hidden", "org/.x", "a//b", "a/",
		"/", "\x01", "a\x01" "b", "\x7f", "a\x7f", "a b", " a", "a ", "a@b", "@", "a:b",
		"a\\b", "a\tb", "a\nb", "caf\xc3\xa9", "a*", "a?b", "a..b", "a%2fb",
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++)
		check(qv_name_check_model, "model", bad[i], QV_ENAME);
	check(qv_name_check_model, "model", NULL, QV_ENAME);

	char n129[QV_NAME_MAX + 2];
	memset(n129, 'a', QV_NAME_MAX + 1);
	n129[QV_NAME_MAX + 1] = 0;
	check(qv_name_check_model, "model", n129, QV_ENAME);
	n129[60] = '/';
	check(qv_name_check_model, "model", n129, QV_ENAME);
}

static void test_label_accepted(void **state)
{
	(void)state;
	static const char *ok[] = {
		"v1", "prod", "a.b-c_d+e", "current", "2024-06-01", "V2", "rc+1", "a.b",
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(ok); i++)
		check(qv_name_check_label, "label", ok[i], 0);

	char n128[QV_NAME_MAX + 1];
	memset(n128, 'z', QV_NAME_MAX);
	n128[QV_NAME_MAX] = 0;
	check(qv_name_check_label, "label", n128, 0);
}

static void test_label_rejected(void **state)
{
	(void)state;
	static const char *bad[] = {
		"", "..", ".", ".hidden", "a/b", "/", "a/", "/a", "org/name", "a..b", "\x01", "\x7f",
		"a b", "@", "a@b", "a:b", "sha256:abcd", "caf\xc3\xa9", "a\\b", "a\nb",
	};
	for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++)
		check(qv_name_check_label, "label", bad[i], QV_ENAME);
	check(qv_name_check_label, "label", NULL, QV_ENAME);

	char n129[QV_NAME_MAX + 2];
	memset(n129, 'z', QV_NAME_MAX + 1);
	n129[QV_NAME_MAX + 1] = 0;
	check(qv_name_check_label, "label", n129, QV_ENAME);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_model_accepted),
		cmocka_unit_test(test_model_rejected),
		cmocka_unit_test(test_label_accepted),
		cmocka_unit_test(test_label_rejected),
	};
	return cmocka_run_group_tests_name("names", tests, NULL, NULL);
}
