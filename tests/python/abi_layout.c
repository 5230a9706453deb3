/* Prints the layout of the C structs that python/quiver/_lib.py mirrors with
 * ctypes, as JSON: {"struct": {"size": N, "fields": {"name": offset}}}. The
 * Python test test_abi.py compares it with the ctypes classes, so a field
 * added on one side only fails a test instead of corrupting a load. */
#include <stddef.h>
#include <stdio.h>

#include "quiver/load.h"
#include "quiver/store.h"

#define FIELD(t, f) printf("%s\"%s\": %zu", first ? "" : ", ", #f, offsetof(t, f)), first = 0

int main(void)
{
	int first;
	printf("{\"qv_load_opts\": {\"size\": %zu, \"fields\": {", sizeof(qv_load_opts));
	first = 1;
	FIELD(qv_load_opts, device);
	FIELD(qv_load_opts, io);
	FIELD(qv_load_opts, qd);
	FIELD(qv_load_opts, chunk_bytes);
	FIELD(qv_load_opts, verify);
	FIELD(qv_load_opts, cuda_streams);
	FIELD(qv_load_opts, decode_threads);
	FIELD(qv_load_opts, progress);
	FIELD(qv_load_opts, progress_arg);
	FIELD(qv_load_opts, cold_reads);
	FIELD(qv_load_opts, host_pages);
	printf("}},\n \"qv_load_tensor\": {\"size\": %zu, \"fields\": {", sizeof(qv_load_tensor));
	first = 1;
	FIELD(qv_load_tensor, name);
	FIELD(qv_load_tensor, file);
	FIELD(qv_load_tensor, dtype);
	FIELD(qv_load_tensor, ndim);
	FIELD(qv_load_tensor, shape);
	FIELD(qv_load_tensor, bytes);
	FIELD(qv_load_tensor, offset);
	FIELD(qv_load_tensor, ptr);
	printf("}},\n \"qv_load_stats\": {\"size\": %zu, \"fields\": {", sizeof(qv_load_stats));
	first = 1;
	FIELD(qv_load_stats, bytes);
	FIELD(qv_load_stats, arena_bytes);
	FIELD(qv_load_stats, tensors);
	FIELD(qv_load_stats, reads);
	FIELD(qv_load_stats, cold_bytes);
	FIELD(qv_load_stats, decode_threads);
	FIELD(qv_load_stats, seconds);
	FIELD(qv_load_stats, device_init_seconds);
	FIELD(qv_load_stats, first_tensor_seconds);
	FIELD(qv_load_stats, io);
	FIELD(qv_load_stats, engine);
	FIELD(qv_load_stats, qd);
	FIELD(qv_load_stats, chunk_bytes);
	FIELD(qv_load_stats, device);
	FIELD(qv_load_stats, cold_io);
	FIELD(qv_load_stats, cold_reads);
	FIELD(qv_load_stats, host_pages);
	FIELD(qv_load_stats, cold_gpu_bytes);
	printf("}},\n \"qv_version\": {\"size\": null, \"fields\": {");
	first = 1;
	FIELD(qv_version, model);
	FIELD(qv_version, label);
	FIELD(qv_version, digest);
	printf("}}}\n");
	return 0;
}
