/* libFuzzer target over the daemon protocol's parsers (cli/proto.c):
 * qv__proto_header_parse on the first 16 bytes, then, as the daemon does,
 * qv__proto_request_parse on the payload the header announces (or on the
 * rest of the input when the header is not valid, so the JSON parser sees
 * arbitrary bytes too).
 *
 * Built with -fsanitize=fuzzer when the compiler is clang (fuzz_proto);
 * fuzz_proto_replay (replay_main.c) feeds every file of corpus/ to the same
 * function under any compiler, and CTest runs it. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parse_payload(const uint8_t *p, size_t n)
{
	char err[256] = ""; /* a failure must write its reason here: checked below */
	/* a private copy: the parser must not read past n (ASan sees it) */
	char *buf = malloc(n ? n : 1);
	if (!buf)
		return;
	if (n)
		memcpy(buf, p, n);
	json_t *j = qv__proto_request_parse(buf, n, err, sizeof(err));
	if (j) {
		/* the contract: an object with a string "op" of <= 32 bytes */
		json_t *op = json_object_get(j, "op");
		if (!json_is_object(j) || !json_is_string(op) || json_string_length(op) > 32)
			abort();
		json_decref(j);
	} else if (!memchr(err, 0, sizeof(err)) || !err[0]) {
		abort(); /* a failure must say why */
	}
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t len = 0xdeadbeef;
	int has_fd = -1;
	/* the header parser over every prefix length up to 16 and two limits */
	for (size_t n = 0; n <= QV_PROTO_HEADER && n <= size; n++) {
		int rc = qv__proto_header_parse(data, n, QV_PROTO_REQUEST_MAX, &len, &has_fd);
		if (n < QV_PROTO_HEADER && rc == 0)
			abort(); /* a short header must be refused */
	}
	if (size < QV_PROTO_HEADER) {
		parse_payload(data, size);
		return 0;
	}
	len = 0xdeadbeef;
	has_fd = -1;
	int rc = qv__proto_header_parse(data, size, QV_PROTO_REQUEST_MAX, &len, &has_fd);
	if (rc == 0) {
		if (len > QV_PROTO_REQUEST_MAX || (has_fd != 0 && has_fd != 1))
			abort();
		size_t avail = size - QV_PROTO_HEADER;
		/* a truncated payload is what the daemon would wait on; parse what came */
		parse_payload(data + QV_PROTO_HEADER, len < avail ? len : avail);
	} else {
		if (rc != QV_EFORMAT && rc != QV_ESCHEMA && rc != QV_ELIMIT)
			abort();
		parse_payload(data + QV_PROTO_HEADER, size - QV_PROTO_HEADER);
	}
	/* a tighter limit: 0 accepts only empty payloads */
	if (qv__proto_header_parse(data, size, 0, &len, &has_fd) == 0 && len != 0)
		abort();
	return 0;
}
