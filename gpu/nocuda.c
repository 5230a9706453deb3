/* The CUDA entry points of a build without the CUDA toolkit: each says so. */
#include <errno.h>

#include "gpu_int.h"

int qv_gpu_built_with_cuda(void) { return 0; }

int qv_gpu_device_count(const char **why)
{
	if (why)
		*why = "quiver was built without CUDA";
	return 0;
}

int qv_gpu_pci_bus_id(int device, char *buf, size_t len)
{
	(void)device;
	if (len > 0)
		buf[0] = '\0';
	return -ENOTSUP;
}

int qv_gpu_device_by_pci(const char *bus_id, int *device)
{
	*device = -1;
	return qv__pci_bus_id_valid(bus_id) ? -ENOTSUP : -EINVAL;
}

int qv__cuda_host_register(void *p, size_t bytes)
{
	(void)p;
	(void)bytes;
	return -ENOTSUP;
}

void qv__cuda_host_unregister(void *p) { (void)p; }

int qv_gpu_init(int device)
{
	(void)device;
	return -ENOTSUP;
}

int qv_gpu_alloc(int device, size_t bytes, void **dptr)
{
	(void)device;
	(void)bytes;
	*dptr = NULL;
	return -ENOTSUP;
}

void qv_gpu_free(int device, void *dptr)
{
	(void)device;
	(void)dptr;
}

int qv_gpu_to_host(int device, void *host, const void *dptr, size_t bytes)
{
	(void)device;
	(void)host;
	(void)dptr;
	(void)bytes;
	return -ENOTSUP;
}

int qv_gpu_fill(int device, void *dptr, int byte, size_t bytes)
{
	(void)device;
	(void)dptr;
	(void)byte;
	(void)bytes;
	return -ENOTSUP;
}

int qv_gpu_mem_info(int device, size_t *free_bytes, size_t *total_bytes)
{
	(void)device;
	*free_bytes = *total_bytes = 0;
	return -ENOTSUP;
}

int qv_sink_cuda_create(int device, void *dest, uint64_t dest_bytes, unsigned n_slots,
                        unsigned n_streams, qv_sink **out)
{
	(void)device;
	(void)dest;
	(void)dest_bytes;
	(void)n_slots;
	(void)n_streams;
	*out = NULL;
	return -ENOTSUP;
}

int qv_gpu_current_device(void)
{
	return -1;
}

void qv_gpu_restore_device(int device)
{
	(void)device;
}

int qv_gpu_ipc_open(int device, const void *handle, void **dptr, size_t *bytes,
                    const char **why)
{
	(void)device;
	(void)handle;
	*dptr = NULL;
	*bytes = 0;
	if (why)
		*why = "quiver was built without CUDA";
	return -ENOTSUP;
}

void qv_gpu_ipc_close(int device, void *dptr)
{
	(void)device;
	(void)dptr;
}

int qv_gpu_copy_to_device(int device, void *dst, const void *src, size_t bytes,
                          unsigned n_streams)
{
	(void)device;
	(void)dst;
	(void)src;
	(void)bytes;
	(void)n_streams;
	return -ENOTSUP;
}
