/* Writes the seed inputs of fuzz_codec (fuzz_codec.c) into the folder named
 * on the command line: for each dtype class, weights-shaped values (normal,
 * as BF16, F16 and F32; text for the plain class) as a round trip (check 0)
 * and as a damaged frame with a few edits (check 1), and whole cold files
 * made by qv_codec_encode_fd (check 2), one frame and three. Deterministic:
 * the same files every run. Exits 0, or 1 with a message. */

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/codec.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}

static float normal(void)
{
	return (float)(0.02 * sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

/* n values of dtype into buf (sized for it); returns the bytes written. */
static size_t values(enum qv_codec_dtype dtype, size_t n, uint8_t *buf)
{
	static const char text[] = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden\": 4096}\n";

	for (size_t i = 0; i < n; i++) {
		float x = normal();
		uint32_t u;

		memcpy(&u, &x, 4);
		switch (dtype) {
		case QV_CODEC_BF16: {
			uint16_t h = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
			memcpy(buf + 2 * i, &h, 2);
			break;
		}
		case QV_CODEC_F16: { /* normal values of this size: no subnormal handling needed */
			int e = (int)((u >> 23) & 0xff) - 127 + 15;
			uint16_t h = (uint16_t)(((u >> 16) & 0x8000) |
						(e > 0 ? (unsigned)e << 10 | ((u >> 13) & 0x3ff) : 0));
			memcpy(buf + 2 * i, &h, 2);
			break;
		}
		case QV_CODEC_F32: memcpy(buf + 4 * i, &u, 4); break;
		default: buf[i] = (uint8_t)text[i % (sizeof(text) - 1)]; break;
		}
	}
	switch (dtype) {
	case QV_CODEC_BF16:
	case QV_CODEC_F16: return 2 * n;
	case QV_CODEC_F32: return 4 * n;
	default: return n;
	}
}

static int put(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "fuzz_codec_seeds: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const char *names[] = { "plain", "bf16", "f16", "f32" };
	/* values per seed: past one 16 Ki-value merge piece for BF16, odd
	 * counts for the tails */
	static const size_t counts[] = { 9001, 20001, 6001, 4001 };

	if (argc != 2) {
		fprintf(stderr, "usage: fuzz_codec_seeds DIR\n");
		return 1;
	}
	if (mkdir(argv[1], 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "fuzz_codec_seeds: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	for (int d = 0; d < 4; d++) {
		size_t n = counts[d], at = 3 + 5 * 3;
		uint8_t *in = malloc(at + 4 * n + 1);
		char name[64];

		if (!in)
			return 1;
		size_t len = values((enum qv_codec_dtype)d, n, in + at);
		/* an odd raw length: a tail byte after the values */
		in[at + len] = 0x5a;
		len++;
		/* check 0: [0][dtype][raw] */
		in[at - 2] = 0;
		in[at - 1] = (uint8_t)d;
		snprintf(name, sizeof(name), "roundtrip_%s", names[d]);
		if (put(argv[1], name, in + at - 2, len + 2))
			return 1;
		/* check 1: [1][dtype][k=3][3 edits][raw]: a byte early, one in
		 * the middle, and the method */
		uint32_t pos[3] = { 20, (uint32_t)(len / 3), UINT32_MAX };
		uint8_t xr[3] = { 0x01, 0x80, 0x01 };
		in[0] = 1;
		in[1] = (uint8_t)d;
		in[2] = 3;
		for (int i = 0; i < 3; i++) {
			memcpy(in + 3 + 5 * i, &pos[i], 4);
			in[3 + 5 * i + 4] = xr[i];
		}
		snprintf(name, sizeof(name), "damaged_%s", names[d]);
		if (put(argv[1], name, in, at + len))
			return 1;
		/* check 2: [2][cold file] of one frame, and of three for BF16 */
		for (int frames = 1; frames <= (d == QV_CODEC_BF16 ? 3 : 1); frames += 2) {
			size_t raw = frames == 1 ? len : 2 * QV_CODEC_FRAME_MIN + 4096;
			uint8_t *shard = malloc(raw);
			int in_fd = memfd_create("raw", 0), out_fd = memfd_create("cold", 0);
			uint64_t stored = 0;

			if (!shard || in_fd < 0 || out_fd < 0)
				return 1;
			if (frames == 1)
				memcpy(shard, in + at, raw);
			else
				values((enum qv_codec_dtype)d, raw / 2, shard);
			if (pwrite(in_fd, shard, raw, 0) != (ssize_t)raw ||
			    qv_codec_encode_fd(in_fd, raw, (enum qv_codec_dtype)d, 0,
					       QV_CODEC_FRAME_MIN, out_fd, &stored, NULL, NULL) != 0) {
				fprintf(stderr, "fuzz_codec_seeds: encoding a cold file failed\n");
				return 1;
			}
			uint8_t *file = malloc(stored + 1);
			if (!file || pread(out_fd, file + 1, stored, 0) != (ssize_t)stored)
				return 1;
			file[0] = 2;
			snprintf(name, sizeof(name), "cold_%s_%dframe", names[d], frames);
			if (put(argv[1], name, file, stored + 1))
				return 1;
			free(file);
			free(shard);
			close(in_fd);
			close(out_fd);
		}
		free(in);
	}
	return 0;
}
