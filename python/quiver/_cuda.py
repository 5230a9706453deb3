"""CUDA memory that torch can view: device allocations of our own (the CUDA
driver API through ctypes, libcuda.so.1) and the __cuda_array_interface__
wrapper that turns a device pointer into a torch tensor without a copy.

A daemon load into this process's memory needs the *base* of an allocation
for its CUDA IPC handle (cudaIpcOpenMemHandle in the daemon maps the whole
allocation). torch's caching allocator sub-allocates blocks, so the buffer is
allocated here, with cuMemAlloc in the device's primary context (the context
torch's runtime uses too), and freed with cuMemFree when the last tensor
viewing it is gone."""
import ctypes
import threading
import weakref

from ._lib import QuiverError

_cu = None
_cu_mu = threading.Lock()


def _driver():
    global _cu
    with _cu_mu:
        if _cu is not None:
            return _cu
        try:
            cu = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise QuiverError(f"cannot load the CUDA driver (libcuda.so.1): {e}")
        I, P = ctypes.c_int, ctypes.c_void_p
        for name, args in {
            "cuInit": [ctypes.c_uint],
            "cuDeviceGet": [ctypes.POINTER(I), I],
            "cuDevicePrimaryCtxRetain": [ctypes.POINTER(P), I],
            "cuCtxPushCurrent_v2": [P],
            "cuCtxPopCurrent_v2": [ctypes.POINTER(P)],
            "cuMemAlloc_v2": [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t],
            "cuMemFree_v2": [ctypes.c_uint64],
            "cuIpcGetMemHandle": [P, ctypes.c_uint64],
            "cuDeviceGetPCIBusId": [ctypes.c_char_p, I, I],
            "cuGetErrorString": [I, ctypes.POINTER(ctypes.c_char_p)],
        }.items():
            f = getattr(cu, name)
            f.restype, f.argtypes = I, args
        rel = getattr(cu, "cuDevicePrimaryCtxRelease_v2", None) or cu.cuDevicePrimaryCtxRelease
        rel.restype, rel.argtypes = I, [I]
        cu.release = rel
        _check(cu, cu.cuInit(0), "cuInit")
        _cu = cu
        return cu


def _check(cu, rc, what):
    if rc:
        s = ctypes.c_char_p()
        cu.cuGetErrorString(rc, ctypes.byref(s))
        raise QuiverError(f"{what} failed: CUDA driver error {rc}"
                          f" ({s.value.decode() if s.value else 'unknown'})")


def pci_bus_id(device):
    """The PCI bus id of cuda:device as this process numbers it ("0000:65:00.0"):
    the name quiverd finds the same GPU by whatever its CUDA_VISIBLE_DEVICES."""
    cu = _driver()
    dev = ctypes.c_int()
    _check(cu, cu.cuDeviceGet(ctypes.byref(dev), device), f"cuDeviceGet({device})")
    buf = ctypes.create_string_buffer(32)
    _check(cu, cu.cuDeviceGetPCIBusId(buf, len(buf), dev), f"cuDeviceGetPCIBusId({device})")
    return buf.value.decode()


class _Context:
    """The primary context of a device, current on this thread inside `with`."""

    def __init__(self, cu, device):
        self.cu, self.device = cu, device
        self.dev = ctypes.c_int()
        self.ctx = ctypes.c_void_p()
        _check(cu, cu.cuDeviceGet(ctypes.byref(self.dev), device), f"cuDeviceGet({device})")
        _check(cu, cu.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev),
               "cuDevicePrimaryCtxRetain")

    def __enter__(self):
        _check(self.cu, self.cu.cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")
        return self

    def __exit__(self, *exc):
        old = ctypes.c_void_p()
        self.cu.cuCtxPopCurrent_v2(ctypes.byref(old))

    def release(self):
        self.cu.release(self.dev)


def _free(ctx, ptr):
    cu = _driver()
    with ctx:
        cu.cuMemFree_v2(ptr)
    ctx.release()


class DeviceBuffer:
    """nbytes of device memory of our own, the base of its allocation; freed
    when the object is collected, or by free()."""

    def __init__(self, device, nbytes):
        cu = _driver()
        self.device, self.nbytes = device, nbytes
        self.ctx = _Context(cu, device)
        self.ptr = ctypes.c_uint64()
        try:
            with self.ctx:
                _check(cu, cu.cuMemAlloc_v2(ctypes.byref(self.ptr), max(nbytes, 1)),
                       f"cuMemAlloc of {nbytes} bytes on cuda:{device}")
        except BaseException:
            self.ctx.release()
            raise
        self.free = weakref.finalize(self, _free, self.ctx, self.ptr.value)
        self.free.atexit = False  # the process's end frees it; torch may still hold views

    def ipc_handle(self):
        cu = _driver()
        h = (ctypes.c_char * 64)()
        with self.ctx:
            _check(cu, cu.cuIpcGetMemHandle(ctypes.addressof(h), self.ptr.value), "cuIpcGetMemHandle")
        return bytes(h)


class CudaArray:
    """Exposes nbytes of device memory at ptr as a 1-D uint8 array through
    __cuda_array_interface__; torch.as_tensor() keeps a reference to it for
    as long as the tensor (and its views) live. owner is kept alive with it."""

    def __init__(self, ptr, nbytes, owner):
        self.ptr, self.nbytes, self.owner = ptr, nbytes, owner

    @property
    def __cuda_array_interface__(self):
        # version 2: no "stream" key; the bytes are complete on the device
        # before the table reaches Python (the loader and the daemon wait).
        return {"shape": (self.nbytes,), "typestr": "|u1", "data": (self.ptr, False),
                "version": 2}


def as_tensor(ptr, nbytes, device, owner):
    """A uint8 CUDA tensor of nbytes at ptr on cuda:device, holding owner."""
    import torch
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8, device=f"cuda:{device}")
    t = torch.as_tensor(CudaArray(ptr, nbytes, owner), device=f"cuda:{device}")
    if t.data_ptr() != ptr:
        raise QuiverError("torch copied the device arena instead of viewing it")
    return t
