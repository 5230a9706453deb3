/* Naming rules for models, version labels and aliases.
 *
 * Names become LMDB keys, appear in file names on export and are typed on
 * command lines, so they are kept to a safe, printable subset: no path
 * traversal, no control characters, nothing that collides with the
 * MODEL@REF syntax. */
#include <string.h>

#include "store_int.h"

static int name_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || c == '+';
}

/* One component: non-empty, not starting with '.', only name_char_ok. */
static int component_ok(const char *p, size_t n)
{
	if (n == 0 || p[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!name_char_ok((unsigned char)p[i]))
			return 0;
	return 1;
}

int qv_name_check_model(const char *name)
{
	if (!name)
		return QV_ENAME;
	size_t len = strlen(name);
	if (len == 0 || len > QV_NAME_MAX || strstr(name, ".."))
		return QV_ENAME;
	const char *p = name;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (!component_ok(p, n))
			return QV_ENAME;
		if (!slash)
			break;
		p = slash + 1;
	}
	return 0;
}

int qv_name_check_label(const char *name)
{
	if (!name)
		return QV_ENAME;
	size_t len = strlen(name);
	if (len == 0 || len > QV_NAME_MAX || strstr(name, ".."))
		return QV_ENAME;
	return component_ok(name, len) ? 0 : QV_ENAME;
}

int qv__utf8_valid(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	while (*s) {
		unsigned c = *s, n, min;
		if (c < 0x80) {
			s++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, min = 0x80;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, min = 0x800;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, min = 0x10000;
		else
			return 0;
		unsigned cp = c & (0x3f >> n);
		for (unsigned i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		s += n + 1;
	}
	return 1;
}
