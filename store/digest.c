/* Digest formatting and parsing. Shards and manifests are named by SHA-256
 * (OpenSSL's libcrypto computes it); this file only converts to and from the
 * 64-digit lowercase hex form users see. */
#include <string.h>

#include "store_int.h"

void qv_digest_hex(const uint8_t d[QV_DIGEST_LEN], char hex[QV_HEX_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < QV_DIGEST_LEN; i++) {
		hex[2 * i] = digits[d[i] >> 4];
		hex[2 * i + 1] = digits[d[i] & 15];
	}
	hex[QV_HEX_LEN] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int qv__hex_parse(const char *hex, uint8_t d[QV_DIGEST_LEN])
{
	if (!hex || strlen(hex) != QV_HEX_LEN)
		return QV_EFORMAT;
	for (int i = 0; i < QV_DIGEST_LEN; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return QV_EFORMAT;
		d[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}
