/* codec_bench: the cold codec on real weights. For every F32 tensor of the
 * safetensors files given, as F32 and rounded to BF16, prints the stored/raw
 * ratio of our codec (plane split + zstd) and of plain zstd (same level,
 * same frames, no split), and single-thread encode and decode speed, and
 * PASS/MISS against the targets of the tiering issue.
 *
 * Each file's F32 tensors, concatenated in file order, are one shard, cut
 * into frames with the frame API exactly as qv_codec_encode_fd() does (no
 * file I/O is timed). Speeds are raw bytes per wall-clock second on one
 * thread; the whole pass over all files repeats until each measurement has
 * run at least --min-seconds.
 *
 * --portable decodes without the CPU's vector unit (qv_codec_ctx_set_simd).
 *
 * This is the codec alone, on float tensors only. What the cold tier
 * stores for the same files (packs of small tensors of mixed dtypes, one
 * shard per large tensor, headers and alignment) is measured through the
 * store by bench/cold_ratio.sh.
 *
 * usage: codec_bench [--level N] [--frame-bytes N] [--min-seconds S] [--portable] [--quiet]
 *                    FILE...
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zstd.h>

#include "quiver/codec.h"

#define HEADER_MAX (100u << 20) /* bound on a safetensors JSON header */
#define TARGET_BF16 0.70
#define TARGET_F32 0.87
#define TARGET_DECODE_MBS 1000.0
#define TARGET_ENCODE_MBS 200.0

struct shard {
	unsigned char *raw;
	size_t len;
};

/* Per dtype and codec: bytes and seconds summed over all passes. */
struct tally {
	uint64_t raw, stored; /* one pass */
	uint64_t enc_bytes, dec_bytes;
	double enc_s, dec_s;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

/* Loads the F32 tensors of a safetensors file, in file order, into *out. */
static int load_f32(const char *path, struct shard *out)
{
	unsigned char lenb[8];
	char *json = NULL;
	json_t *root = NULL;
	struct stat st;
	uint64_t hlen, data_off;
	const char *key;
	json_t *val;
	int fd, rc = -1;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY);
	if (fd < 0 || fstat(fd, &st) != 0 || read_full(fd, lenb, 8, 0) != 0) {
		fprintf(stderr, "codec_bench: %s: cannot read\n", path);
		goto out;
	}
	hlen = (uint64_t)lenb[0] | (uint64_t)lenb[1] << 8 | (uint64_t)lenb[2] << 16 |
	       (uint64_t)lenb[3] << 24 | (uint64_t)lenb[4] << 32 | (uint64_t)lenb[5] << 40 |
	       (uint64_t)lenb[6] << 48 | (uint64_t)lenb[7] << 56;
	if (hlen > HEADER_MAX || hlen > (uint64_t)st.st_size - 8) {
		fprintf(stderr, "codec_bench: %s: bad header length\n", path);
		goto out;
	}
	data_off = 8 + hlen;
	json = malloc(hlen + 1);
	if (json == NULL || read_full(fd, json, hlen, 8) != 0)
		goto out;
	json[hlen] = '\0';
	root = json_loads(json, 0, NULL);
	if (!json_is_object(root)) {
		fprintf(stderr, "codec_bench: %s: header is not a JSON object\n", path);
		goto out;
	}
	/* Two passes: size, then copy (tensors are copied in header order,
	 * which the converters write in file order). */
	for (int pass = 0; pass < 2; pass++) {
		size_t at = 0;

		json_object_foreach(root, key, val) {
			json_t *offs = json_object_get(val, "data_offsets");
			const char *dt = json_string_value(json_object_get(val, "dtype"));
			uint64_t b, e;

			if (strcmp(key, "__metadata__") == 0 || dt == NULL || strcmp(dt, "F32") != 0)
				continue;
			if (!json_is_array(offs) || json_array_size(offs) != 2 ||
			    !json_is_integer(json_array_get(offs, 0)) ||
			    !json_is_integer(json_array_get(offs, 1)))
				goto bad;
			b = (uint64_t)json_integer_value(json_array_get(offs, 0));
			e = (uint64_t)json_integer_value(json_array_get(offs, 1));
			if (e < b || e > (uint64_t)st.st_size - data_off || (e - b) % 4 != 0)
				goto bad;
			if (pass == 1 && read_full(fd, out->raw + at, e - b, data_off + b) != 0)
				goto bad;
			at += e - b;
		}
		if (pass == 0) {
			out->len = at;
			out->raw = malloc(at ? at : 1);
			if (out->raw == NULL)
				goto out;
		}
	}
	rc = 0;
	goto out;
bad:
	fprintf(stderr, "codec_bench: %s: bad tensor entry\n", path);
out:
	if (rc != 0) {
		free(out->raw);
		out->raw = NULL;
	}
	json_decref(root);
	free(json);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* F32 -> BF16, round to nearest even on the top 16 bits (NaN stays NaN). */
static void to_bf16(const unsigned char *src, size_t len, unsigned char *dst)
{
	for (size_t i = 0; i < len / 4; i++) {
		uint32_t v;
		uint16_t h;
		memcpy(&v, src + 4 * i, 4);
		if ((v & 0x7fffffff) > 0x7f800000)
			h = (uint16_t)((v >> 16) | 0x40);
		else
			h = (uint16_t)((v + 0x7fff + ((v >> 16) & 1)) >> 16);
		memcpy(dst + 2 * i, &h, 2);
	}
}

struct bufs {
	struct qv_codec_ctx *ctx;
	unsigned char *stored; /* frame_count * frame_bytes */
	struct qv_codec_frame *frames;
	unsigned char *back;
	unsigned char *scratch;
	size_t scratch_len;
};

/* Encodes, then decodes and checks, one shard; adds to t. */
static int run_shard(struct bufs *b, enum qv_codec_dtype dtype, int level, uint32_t frame_bytes,
		     const unsigned char *raw, size_t len, struct tally *t, int first_pass,
		     uint64_t *stored_out)
{
	size_t count = len / frame_bytes + (len % frame_bytes != 0);
	uint64_t stored = 0;
	double t0, t1, t2;
	int rc;

	t0 = now_s();
	for (size_t i = 0; i < count; i++) {
		size_t off = i * frame_bytes, n = len - off < frame_bytes ? len - off : frame_bytes;

		rc = qv_codec_frame_encode(b->ctx, dtype, level, raw + off, n,
					   b->stored + i * (size_t)frame_bytes, frame_bytes, b->scratch,
					   b->scratch_len, &b->frames[i]);
		if (rc != 0)
			return rc;
		/* the file pads every frame to 4 KiB: count that too */
		stored += qv_codec_align(b->frames[i].stored_bytes);
	}
	t1 = now_s();
	for (size_t i = 0; i < count; i++) {
		rc = qv_codec_frame_decode(b->ctx, &b->frames[i], b->stored + i * (size_t)frame_bytes,
					   frame_bytes, b->back + i * (size_t)frame_bytes,
					   b->frames[i].raw_bytes, b->scratch, b->scratch_len);
		if (rc != 0)
			return rc;
	}
	t2 = now_s();
	if (first_pass) {
		if (memcmp(raw, b->back, len) != 0) {
			fprintf(stderr, "codec_bench: round trip mismatch\n");
			return -1;
		}
		stored += qv_codec_align(QV_CODEC_HEADER_BYTES + count * QV_CODEC_ENTRY_BYTES);
		t->raw += len;
		t->stored += stored;
		*stored_out = stored;
	}
	t->enc_bytes += len;
	t->dec_bytes += len;
	t->enc_s += t1 - t0;
	t->dec_s += t2 - t1;
	return 0;
}

static const char *verdict(int ok)
{
	return ok ? "PASS" : "MISS";
}

int main(int argc, char **argv)
{
	int level = QV_CODEC_LEVEL_DEFAULT, quiet = 0, portable = 0, nfiles = 0, rc = 1;
	uint32_t frame_bytes = QV_CODEC_FRAME_DEFAULT;
	double min_s = 0.5;
	char **files = NULL;
	struct tally t[2][2]; /* [F32, BF16][ours, plain] */
	struct bufs b = { 0 };
	size_t max_len = 0;
	struct shard *shards = NULL;

	memset(t, 0, sizeof(t));
	files = calloc((size_t)argc, sizeof(*files));
	if (files == NULL)
		return 1;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--level") == 0 && i + 1 < argc)
			level = atoi(argv[++i]);
		else if (strcmp(argv[i], "--frame-bytes") == 0 && i + 1 < argc)
			frame_bytes = (uint32_t)strtoul(argv[++i], NULL, 0);
		else if (strcmp(argv[i], "--min-seconds") == 0 && i + 1 < argc)
			min_s = atof(argv[++i]);
		else if (strcmp(argv[i], "--quiet") == 0)
			quiet = 1;
		else if (strcmp(argv[i], "--portable") == 0)
			portable = 1;
		else if (argv[i][0] == '-') {
			fprintf(stderr, "usage: codec_bench [--level N] [--frame-bytes N] "
					"[--min-seconds S] [--portable] [--quiet] FILE.safetensors...\n");
			goto out;
		} else
			files[nfiles++] = argv[i];
	}
	if (nfiles == 0 || frame_bytes < QV_CODEC_FRAME_MIN || frame_bytes > QV_CODEC_FRAME_MAX ||
	    level < QV_CODEC_LEVEL_MIN || level > QV_CODEC_LEVEL_MAX) {
		fprintf(stderr, "codec_bench: need files, a frame size of 1..4 MiB, a level of %d..%d\n",
			QV_CODEC_LEVEL_MIN, QV_CODEC_LEVEL_MAX);
		goto out;
	}

	/* Load everything up front: the timed loops touch memory only. */
	shards = calloc((size_t)nfiles * 2, sizeof(*shards));
	if (shards == NULL)
		goto out;
	for (int f = 0; f < nfiles; f++) {
		struct shard *s32 = &shards[2 * f], *s16 = &shards[2 * f + 1];

		if (load_f32(files[f], s32) != 0)
			goto out;
		s16->len = s32->len / 2;
		s16->raw = malloc(s16->len ? s16->len : 1);
		if (s16->raw == NULL)
			goto out;
		to_bf16(s32->raw, s32->len, s16->raw);
		if (s32->len > max_len)
			max_len = s32->len;
	}
	max_len = (max_len / frame_bytes + 1) * frame_bytes;
	b.scratch_len = qv_codec_scratch_bytes(frame_bytes);
	b.stored = malloc(max_len);
	b.back = malloc(max_len);
	b.scratch = malloc(b.scratch_len);
	b.frames = calloc(max_len / frame_bytes, sizeof(*b.frames));
	if (b.stored == NULL || b.back == NULL || b.scratch == NULL || b.frames == NULL ||
	    qv_codec_ctx_create(&b.ctx) != 0)
		goto out;
	qv_codec_ctx_set_simd(b.ctx, !portable);

	printf("codec_bench: zstd %s, level %d, frame %" PRIu32 " bytes, %d files, "
	       "single thread, each timing >= %.1f s%s\n",
	       ZSTD_versionString(), level, frame_bytes, nfiles, min_s,
	       portable ? ", portable decoder" : "");
	if (!quiet)
		printf("%-40s %-5s %12s %7s %7s\n", "file", "dtype", "raw_bytes", "ours", "plain");
	int any = 0;
	for (int f = 0; f < 2 * nfiles; f++)
		any |= shards[f].len > 0;
	if (!any) { /* nothing to time: the loop below would never end */
		fprintf(stderr, "codec_bench: no F32 tensors in the files given\n");
		goto out;
	}
	for (int pass = 0;; pass++) {
		double least = 1e30;

		for (int f = 0; f < nfiles; f++) {
			for (int d = 0; d < 2; d++) {
				const struct shard *s = &shards[2 * f + d];
				enum qv_codec_dtype dt = d == 0 ? QV_CODEC_F32 : QV_CODEC_BF16;
				uint64_t so = 0, sp = 0;

				if (s->len == 0)
					continue;
				if (run_shard(&b, dt, level, frame_bytes, s->raw, s->len, &t[d][0],
					      pass == 0, &so) != 0 ||
				    run_shard(&b, QV_CODEC_PLAIN, level, frame_bytes, s->raw, s->len,
					      &t[d][1], pass == 0, &sp) != 0) {
					fprintf(stderr, "codec_bench: %s: codec failed\n", files[f]);
					goto out;
				}
				if (pass == 0 && !quiet) {
					const char *name = strrchr(files[f], '/');
					printf("%-40.40s %-5s %12zu %7.4f %7.4f\n", name ? name + 1 : files[f],
					       d == 0 ? "F32" : "BF16", s->len, (double)so / (double)s->len,
					       (double)sp / (double)s->len);
				}
			}
		}
		for (int d = 0; d < 2; d++)
			for (int c = 0; c < 2; c++) {
				if (t[d][c].enc_s < least)
					least = t[d][c].enc_s;
				if (t[d][c].dec_s < least)
					least = t[d][c].dec_s;
			}
		if (least >= min_s)
			break;
	}

	rc = 0;
	for (int d = 0; d < 2; d++) {
		const struct tally *o = &t[d][0], *p = &t[d][1];
		double ratio = (double)o->stored / (double)o->raw;
		double target = d == 0 ? TARGET_F32 : TARGET_BF16;
		double enc = (double)o->enc_bytes / o->enc_s / 1e6;
		double dec = (double)o->dec_bytes / o->dec_s / 1e6;

		if (o->raw == 0)
			continue;
		printf("TOTAL %-4s raw %" PRIu64 " bytes: ours %.4f (target <= %.2f: %s), plain zstd %.4f; "
		       "ours encode %.0f MB/s (>= %.0f: %s), decode %.0f MB/s (>= %.0f: %s); "
		       "plain encode %.0f MB/s, decode %.0f MB/s\n",
		       d == 0 ? "F32" : "BF16", o->raw, ratio, target, verdict(ratio <= target),
		       (double)p->stored / (double)p->raw, enc, TARGET_ENCODE_MBS,
		       verdict(enc >= TARGET_ENCODE_MBS), dec, TARGET_DECODE_MBS,
		       verdict(dec >= TARGET_DECODE_MBS), (double)p->enc_bytes / p->enc_s / 1e6,
		       (double)p->dec_bytes / p->dec_s / 1e6);
	}
out:
	if (shards != NULL)
		for (int i = 0; i < 2 * nfiles; i++)
			free(shards[i].raw);
	free(shards);
	free(files);
	free(b.stored);
	free(b.back);
	free(b.scratch);
	free(b.frames);
	qv_codec_ctx_destroy(b.ctx);
	return rc;
}
