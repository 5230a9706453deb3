/* Internals of the gpu module: the sink's operations table. */
#ifndef QV_GPU_INT_H
#define QV_GPU_INT_H

#include "quiver/gpu.h"

struct qv_sink_ops {
	int (*put)(qv_sink *k, unsigned slot, const void *src, size_t len, uint64_t dest_off);
	int (*slot_busy)(qv_sink *k, unsigned slot);
	int (*slot_wait)(qv_sink *k, unsigned slot);
	int (*finish)(qv_sink *k);
	void (*destroy)(qv_sink *k);
};

struct qv_sink {
	const struct qv_sink_ops *ops;
	uint64_t dest_bytes;
	unsigned n_slots;
	void *host_dest;       /* host sinks only */
	char errmsg[256];
};

/* CUDA host registration of p (cuda.c); -ENOTSUP without CUDA or a driver. */
int qv__cuda_host_register(void *p, size_t bytes);
void qv__cuda_host_unregister(void *p);

/* Whether s has the shape of a PCI bus id, [domain:]bus:device.function in
 * hex: nothing else is passed to the driver (pinned.c). */
int qv__pci_bus_id_valid(const char *s);

#endif
