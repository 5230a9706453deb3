/* Model swaps through quiverd against the machine's own copy limit.
 *
 *   daemon_bench ROOT MODEL REF_A REF_B [--device cpu|cuda:N] [--reps N]
 *
 * Needs a quiverd serving ROOT with a DRAM tier large enough for both
 * versions. Warms REF_A and REF_B into the DRAM tier, then, in one run:
 *   cpu:    (a) memcpy bandwidth of this machine (1 GiB buffers, median);
 *           (b) load_host swaps A, B, A, ... (memfd filled from DRAM, mapped
 *               here and touched), bytes / wall time, median;
 *   cuda:N: (a) pinned host-to-device copy rate (cudaMemcpyAsync of a pinned
 *               1 GiB buffer, events, median);
 *           (b) load_cuda swaps A, B, A, ... into ONE cudaMalloc'd allocation
 *               shared over CUDA IPC (the engine's side), median;
 *           (d) `quiver rollback MODEL` through the daemon followed by a
 *               load_cuda of current, to the last byte on the GPU.
 * Prints (b)/(a). The target for cuda is (b) >= 0.9 x (a). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "quiver/quiver.h"

#ifdef QUIVER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2; /* as Python's statistics.median */
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("daemon_bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* One request over the bench's one connection, as an engine keeps one (the
 * daemon keeps the CUDA IPC mappings a connection opened until it closes or
 * releases them); returns the parsed reply (caller decrefs) or exits. */
static json_t *call(const char *root, json_t *req, int *fd)
{
	static qv_client *c;
	char *txt = json_dumps(req, JSON_COMPACT), *resp = NULL;
	json_decref(req);
	if (!c && qv_client_connect(root, &c) != 0) {
		fprintf(stderr, "daemon_bench: no quiverd serves %s\n", root);
		exit(1);
	}
	int rc = qv_client_call(c, txt, &resp, fd);
	free(txt);
	json_error_t e;
	json_t *j = rc ? NULL : json_loads(resp, 0, &e);
	qv_client_free(resp);
	if (!j || !json_is_true(json_object_get(j, "ok"))) {
		fprintf(stderr, "daemon_bench: request failed: %s\n",
		        j ? json_string_value(json_object_get(j, "error")) : qv_strerror(rc));
		exit(1);
	}
	return j;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: daemon_bench ROOT MODEL REF_A REF_B [--device cpu|cuda:N] [--reps N]\n");
		return 2;
	}
	const char *root = argv[1], *model = argv[2], *refs[2] = {argv[3], argv[4]};
	int device = -1, reps = 10;
	for (int i = 5; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--device") == 0)
			device = strncmp(argv[i + 1], "cuda:", 5) == 0 ? atoi(argv[i + 1] + 5) : -1;
		else if (strcmp(argv[i], "--reps") == 0)
			reps = atoi(argv[i + 1]);
	}
	if (reps < 2 || reps > 1000)
		reps = 10;
	for (int k = 0; k < 2; k++) {
		double t0 = now_s();
		json_decref(call(root, json_pack("{s:s, s:s, s:s}", "op", "warm", "model", model, "ref",
		                                 refs[k]), NULL));
		printf("warmed %s@%s into the DRAM tier in %.2f s\n", model, refs[k], now_s() - t0);
	}
	double *swap = calloc((size_t)reps, sizeof(double)), *lim = calloc(10, sizeof(double));
	uint64_t bytes = 0;
	if (device < 0) {
		size_t n = 1u << 30;
		char *a = malloc(n), *b = malloc(n);
		memset(a, 1, n);
		memset(b, 2, n);
		for (int r = 0; r < 10; r++) {
			double t0 = now_s();
			memcpy(b, a, n);
			lim[r] = (double)n / (now_s() - t0) / 1e9;
		}
		free(a);
		free(b);
		for (int r = 0; r < reps; r++) {
			int fd = -1;
			double t0 = now_s();
			json_t *j = call(root, json_pack("{s:s, s:s, s:s}", "op", "load_host", "model", model,
			                                 "ref", refs[r % 2]), &fd);
			bytes = (uint64_t)json_integer_value(json_object_get(j, "bytes"));
			const char *src = json_string_value(json_object_get(j, "source"));
			/* a swap that did not happen as measured is no figure */
			if (!src || strcmp(src, "dram") != 0)
				die("swap %d came from %s, not the DRAM tier", r, src ? src : "nowhere");
			if (fd < 0 || bytes == 0)
				die("swap %d: the daemon sent no memory (%llu bytes)", r,
				    (unsigned long long)bytes);
			unsigned char *m = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
			if (m == MAP_FAILED)
				die("swap %d: mmap: %s", r, strerror(errno));
			volatile unsigned sum = 0;
			for (uint64_t off = 0; off < bytes; off += 4096)
				sum += m[off]; /* the engine touches its memory */
			swap[r] = (double)bytes / (now_s() - t0) / 1e9;
			munmap(m, bytes);
			close(fd);
			json_decref(j);
		}
		double a_ = median(lim, 10), b_ = median(swap, reps);
		printf("(a) memcpy bandwidth: %.2f GB/s (median of 10 x 1 GiB)\n", a_);
		printf("(b) load_host swap from the DRAM tier: %.2f GB/s (%llu bytes, median of %d)\n", b_,
		       (unsigned long long)bytes, reps);
		printf("ratio (b)/(a): %.3f\n", b_ / a_);
		free(swap);
		free(lim);
		return 0;
	}
#ifdef QUIVER_WITH_CUDA
	uint64_t need[2];
	qv_store *s;
	char err[512];
	if (qv_store_open(root, &s, err, sizeof(err)) || qv_load_size(s, model, refs[0], &need[0]) ||
	    qv_load_size(s, model, refs[1], &need[1])) {
		fprintf(stderr, "daemon_bench: cannot size the versions\n");
		return 1;
	}
	qv_store_close(s);
	size_t arena = need[0] > need[1] ? need[0] : need[1];
	void *d = NULL, *h = NULL;
	cudaIpcMemHandle_t ih;
	char pci[32]; /* the GPU's name for quiverd, whose device numbers may differ */
	if (cudaSetDevice(device) != cudaSuccess || cudaMalloc(&d, arena) != cudaSuccess ||
	    cudaIpcGetMemHandle(&ih, d) != cudaSuccess ||
	    cudaDeviceGetPCIBusId(pci, (int)sizeof(pci), device) != cudaSuccess) {
		fprintf(stderr, "daemon_bench: CUDA allocation failed\n");
		return 1;
	}
	char hex[2 * sizeof(ih) + 1];
	for (size_t i = 0; i < sizeof(ih); i++)
		sprintf(hex + 2 * i, "%02x", ((unsigned char *)&ih)[i]);
	/* (a) pinned host-to-device */
	size_t n = 1u << 30;
	if (cudaHostAlloc(&h, n, cudaHostAllocDefault) != cudaSuccess) {
		fprintf(stderr, "daemon_bench: cudaHostAlloc failed\n");
		return 1;
	}
	memset(h, 3, n);
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	size_t cp = n < arena ? n : arena;
	for (int r = 0; r < 10; r++) {
		cudaEventRecord(e0, 0);
		cudaMemcpyAsync(d, h, cp, cudaMemcpyHostToDevice, 0);
		cudaEventRecord(e1, 0);
		cudaEventSynchronize(e1);
		float ms = 0;
		cudaEventElapsedTime(&ms, e0, e1);
		lim[r] = (double)cp / (ms / 1e3) / 1e9;
	}
	cudaFreeHost(h);
	for (int r = 0; r < reps; r++) {
		double t0 = now_s();
		json_t *j = call(root, json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:I}", "op", "load_cuda",
		                                 "model", model, "ref", refs[r % 2], "device", device,
		                                 "pci_bus_id", pci, "ipc_handle", hex, "bytes",
		                                 (json_int_t)arena), NULL);
		swap[r] = now_s() - t0;
		bytes = (uint64_t)json_integer_value(json_object_get(j, "bytes"));
		printf("  swap %d: %s in %.3f s (daemon: open %.4f s, copy %.4f s)\n", r, refs[r % 2],
		       swap[r], json_real_value(json_object_get(j, "open_seconds")),
		       json_real_value(json_object_get(j, "copy_seconds")));
		const char *src = json_string_value(json_object_get(j, "source"));
		if (!src || strcmp(src, "dram") != 0)
			die("swap %d came from %s, not the DRAM tier", r, src ? src : "nowhere");
		json_decref(j);
		swap[r] = (double)bytes / swap[r] / 1e9;
	}
	/* (d) rollback to the other version, to the last byte on the GPU */
	char cmd[4096];
	snprintf(cmd, sizeof(cmd), "quiver --root '%s' rollback '%s' >/dev/null", root, model);
	double t0 = now_s();
	int src = system(cmd);
	if (src != 0)
		die("'%s' failed (status %d)", cmd, src);
	json_t *j = call(root, json_pack("{s:s, s:s, s:i, s:s, s:s, s:I}", "op", "load_cuda", "model",
	                                 model, "device", device, "pci_bus_id", pci, "ipc_handle", hex,
	                                 "bytes", (json_int_t)arena), NULL);
	double rb = now_s() - t0;
	printf("(d) rollback + load of current to the GPU: %.3f s (%s, from %s, rollback exit %d)\n", rb,
	       json_string_value(json_object_get(j, "version")),
	       json_string_value(json_object_get(j, "source")), src);
	json_decref(j);
	double a_ = median(lim, 10), b_ = median(swap, reps);
	printf("(a) pinned host-to-device: %.2f GB/s (median of 10 x %zu bytes)\n", a_, cp);
	printf("(b) load_cuda swap from the DRAM tier over IPC: %.2f GB/s = %.3f s for %llu bytes (median of %d)\n",
	       b_, (double)bytes / b_ / 1e9, (unsigned long long)bytes, reps);
	printf("ratio (b)/(a): %.3f (target >= 0.90)\n", b_ / a_);
	/* the daemon lets go of the allocation before it is freed */
	json_decref(call(root, json_pack("{s:s, s:s}", "op", "release_cuda", "ipc_handle", hex), NULL));
	cudaFree(d);
	free(swap);
	free(lim);
	return 0;
#else
	fprintf(stderr, "daemon_bench: built without CUDA\n");
	return 77;
#endif
}
