"""Quiver for Python: load a stored model version as torch tensors.

    import quiver
    w = quiver.load("llama@current", device="cuda:0")
    w["model.embed_tokens.weight"]          # a torch.Tensor
    quiver.load_info(w)["source"]           # "daemon-dram", "daemon-store" or "in-process"

Every tensor of one load is a view into one allocation (w.arena, a 1-D
torch.uint8 tensor): the arena of the load, laid out as include/quiver/load.h
says. The allocation lives as long as any of its tensors does.

With a daemon (quiverd) serving the store root, the daemon loads: a host load
arrives as a memfd mapped into this process, a CUDA load is written by the
daemon into an allocation of this process through a CUDA IPC handle. Without
one (or with via="local"), this process reads the store itself through
libquiver.so.

ctypes over libquiver.so, no compiled extension. The library is found through
$QUIVER_LIB, else libquiver.so inside this package, else
build/cli/libquiver.so of the source tree, else ctypes.util.find_library."""
import ctypes
import errno
import json
import mmap
import os
import weakref

from . import _lib
from ._lib import QuiverError, library, library_path

__all__ = ["load", "load_info", "daemon_call", "daemon_running", "QuiverError", "library",
           "library_path", "Loaded"]

_TORCH_DTYPES = {
    # safetensors dtype -> name of the torch dtype
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "F64": "float64", "I64": "int64", "U64": "uint64", "C64": "complex64",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
}


class Loaded(dict):
    """name -> torch.Tensor, every tensor a view into .arena. .info: where the
    load came from (see load_info())."""

    arena = None
    info = None
    _owner = None  # weakref to what frees the allocation (for tests)


def load_info(loaded):
    """{source, model, version, bytes, device, seconds, root}: source is
    "daemon-dram" (the daemon's DRAM tier), "daemon-store" (the daemon read
    the store) or "in-process" (this process read the store)."""
    return dict(loaded.info)


def _parse_spec(spec):
    if not isinstance(spec, str) or not spec:
        raise QuiverError(f"bad model spec {spec!r}: expected MODEL or MODEL@REF")
    model, at, ref = spec.partition("@")
    if not model or (at and not ref):
        raise QuiverError(f"bad model spec {spec!r}: expected MODEL or MODEL@REF")
    return model, (ref if at else None)


def _parse_device(device):
    """-1 for the host, else the CUDA device index."""
    import torch
    d = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if d.type == "cpu":
        return -1
    if d.type != "cuda":
        raise QuiverError(f"device {device!r}: only cpu and cuda are supported")
    if d.index is not None:
        return d.index
    return torch.cuda.current_device()


def _dtype(name, dtype):
    import torch
    attr = _TORCH_DTYPES.get(dtype)
    t = getattr(torch, attr, None) if attr else None
    if t is None:
        raise QuiverError(f"tensor {name}: dtype {dtype} has no torch type in torch "
                          f"{torch.__version__}")
    return t


def _views(arena, table):
    """table: [(name, dtype, shape, offset, bytes)] -> {name: view of arena}."""
    import torch
    out = {}
    size = arena.numel()
    for name, dtype, shape, offset, nbytes in table:
        td = _dtype(name, dtype)
        if offset + nbytes > size:
            raise QuiverError(f"tensor {name}: bytes [{offset}, {offset + nbytes}) lie outside "
                              f"the arena of {size} bytes")
        raw = arena[offset:offset + nbytes]
        esize = torch.empty((), dtype=td).element_size()
        count = 1
        for d in shape:
            count *= d
        if count * esize != nbytes:
            raise QuiverError(f"tensor {name}: {nbytes} bytes do not hold {dtype} {list(shape)}")
        if offset % esize:
            raise QuiverError(f"tensor {name}: offset {offset} in the arena is not aligned to "
                              f"its {esize}-byte elements")
        out[name] = raw.view(td).reshape(shape) if nbytes else \
            torch.empty(shape, dtype=td, device=arena.device)
    return out


# ---- the daemon --------------------------------------------------------------------------

class _Client:
    def __init__(self, root):
        self.root = root
        self.lib = library()
        self.h = ctypes.c_void_p()
        rc = self.lib.qv_client_connect(_lib.enc(root), ctypes.byref(self.h))
        if rc:
            self.h = None
            self.rc = rc
        else:
            self.rc = 0

    def call(self, req, want_fd=False):
        resp = ctypes.c_void_p()
        fd = ctypes.c_int(-1)
        rc = self.lib.qv_client_call(self.h, json.dumps(req).encode(), ctypes.byref(resp),
                                     ctypes.byref(fd) if want_fd else None)
        if rc:
            raise QuiverError(f"daemon request {req.get('op')}: {_lib.strerror(rc)}", rc)
        try:
            text = ctypes.string_at(resp.value).decode()
        finally:
            self.lib.qv_client_free(resp)
        try:
            r = json.loads(text)
        except ValueError:
            if fd.value >= 0:
                os.close(fd.value)
            raise QuiverError(f"daemon request {req.get('op')}: the response is not JSON")
        if not r.get("ok"):
            if fd.value >= 0:
                os.close(fd.value)
            raise QuiverError(r.get("error") or f"daemon request {req.get('op')} failed",
                              r.get("code"))
        return (r, fd.value) if want_fd else r

    def close(self):
        if self.h:
            self.lib.qv_client_close(self.h)
            self.h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# No daemon can serve root: no socket, nobody listening, or a path too long
# for a Unix socket (no daemon could have bound it).
_NO_DAEMON = (-errno.ENOENT, -errno.ECONNREFUSED, -errno.ENAMETOOLONG)


def _connect(root, required):
    c = _Client(root)
    if c.rc:
        if not required and c.rc in _NO_DAEMON:
            return None
        if c.rc in _NO_DAEMON:
            raise QuiverError(f"no daemon serves {root}: {_lib.strerror(c.rc)}", c.rc)
        raise QuiverError(f"cannot reach the daemon of {root}: {_lib.strerror(c.rc)}", c.rc)
    return c


def daemon_running(root=None):
    """True if a daemon serves root (default: $QUIVER_ROOT, else the default
    root); QuiverError if one may but cannot be reached (e.g. no permission
    on its socket)."""
    c = _connect(_lib.default_root(root), False)
    if c is None:
        return False
    c.close()
    return True


def daemon_call(request, root=None):
    """Sends one request (a dict, e.g. {"op": "warm", "model": "llama"}) to the
    daemon of root and returns its response; raises QuiverError for a failure."""
    with _connect(_lib.default_root(root), True) as c:
        r, fd = c.call(request, want_fd=True)
        if fd >= 0:
            os.close(fd)
        return r


def _table_json(tensors):
    return [(t["name"], t["dtype"], list(t["shape"]), int(t["offset"]), int(t["bytes"]))
            for t in tensors]


def _host_arena(addr, nbytes, owner):
    """A uint8 tensor over nbytes of memory at addr, no copy: the tensor holds
    a ctypes array, which holds owner (what frees the memory)."""
    import torch

    class _Arena(ctypes.c_uint8 * nbytes):
        pass
    a = _Arena.from_address(addr)
    a.owner = owner
    return torch.frombuffer(a, dtype=torch.uint8)


class _Mapping:
    """A private (copy-on-write) mapping of a memfd the daemon sent, unmapped
    when the object is collected. Made with libc's mmap, not Python's: an
    mmap.mmap keeps a duplicate of the descriptor for as long as it lives, so
    every load held would hold one open file."""

    _libc = None

    def __init__(self, fd, nbytes):
        if _Mapping._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            libc.munmap.restype = ctypes.c_int
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _Mapping._libc = libc
        libc = _Mapping._libc
        addr = libc.mmap(None, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            e = ctypes.get_errno()
            raise QuiverError(f"cannot map the daemon's memory: {os.strerror(e)}", -e)
        self.addr, self.nbytes = addr, nbytes
        self.finalizer = weakref.finalize(self, libc.munmap, addr, nbytes)
        self.finalizer.atexit = False



def _daemon_host(c, model, ref):
    import torch
    req = {"op": "load_host", "model": model}
    if ref is not None:
        req["ref"] = ref
    r, fd = c.call(req, want_fd=True)
    nbytes = int(r["bytes"])
    m = None
    try:
        if nbytes == 0:
            arena = torch.empty(0, dtype=torch.uint8)
        else:
            if fd < 0:
                raise QuiverError("the daemon sent no memory with the load")
            # private, copy-on-write: a DRAM hit is the daemon's own sealed,
            # read-only memfd, shared with every other engine
            m = _Mapping(fd, nbytes)
            # the mapping goes when the last view is gone
            arena = _host_arena(m.addr, nbytes, m)
    finally:
        if fd >= 0:
            os.close(fd)
    return arena, r, m


def _daemon_cuda(c, model, ref, device):
    from . import _cuda
    # the daemon says what to allocate (the store may be the daemon's alone
    # to open); the load then names the version that was measured
    req = {"op": "size", "model": model}
    if ref is not None:
        req["ref"] = ref
    try:
        sz = c.call(req)
        label, need = sz["version"], ctypes.c_uint64(int(sz["bytes"]))
    except QuiverError as e:
        if "unknown op" not in str(e):
            raise
        # a daemon from before the size op: size it from the store here
        s = _lib.store(c.root)
        label, _ = s.resolve(model, ref)
        need = ctypes.c_uint64()
        rc = _lib.library().qv_load_size(s.handle, _lib.enc(model), _lib.enc(label),
                                         ctypes.byref(need))
        if rc:
            s.fail(rc, f"{model}@{label}")
    buf = _cuda.DeviceBuffer(device, need.value)
    try:
        handle = buf.ipc_handle().hex()
        try:
            r = c.call({"op": "load_cuda", "model": model, "ref": label, "device": device,
                        "pci_bus_id": _cuda.pci_bus_id(device), "ipc_handle": handle,
                        "bytes": need.value})
        finally:
            # the daemon must let go of the allocation before it can be freed
            # (its mapping would keep the memory alive); closing the
            # connection releases it too, so a failure here is not fatal
            try:
                c.call({"op": "release_cuda", "ipc_handle": handle})
            except QuiverError:
                pass
        if int(r["bytes"]) > need.value:
            raise QuiverError(f"the daemon wrote {r['bytes']} bytes into {need.value}")
        arena = _cuda.as_tensor(buf.ptr.value, need.value, device, buf)
    except BaseException:
        buf.free()
        raise
    return arena, r, buf


# ---- in-process --------------------------------------------------------------------------

class _LoadHandle:
    """Owns a qv_load (its table and library-allocated arena)."""

    def __init__(self, ptr):
        self.ptr = ptr
        self.finalizer = weakref.finalize(self, _LoadHandle._destroy, ptr)
        self.finalizer.atexit = False

    @staticmethod
    def _destroy(ptr):
        _lib.library().qv_load_destroy(ptr)


def _local(s, model, ref, device):
    import torch
    lib = _lib.library()
    if device >= 0 and not lib.qv_gpu_built_with_cuda():
        raise QuiverError(f"{_lib.library_path()} was built without CUDA; cannot load to "
                          f"cuda:{device} in-process (start quiverd built with CUDA, or "
                          f"rebuild with -DQUIVER_WITH_CUDA=ON)", -errno.ENOTSUP)
    opts = _lib.LoadOpts()
    opts.device = device
    h = ctypes.c_void_p()
    rc = lib.qv_load_run(s.handle, _lib.enc(model), _lib.enc(ref), None, 0, ctypes.byref(opts),
                         ctypes.byref(h))
    if rc:
        s.fail(rc, f"load {model}@{ref or 'current'}")
    owner = _LoadHandle(h.value)
    st = lib.qv_load_get_stats(h).contents
    nbytes = int(st.arena_bytes)
    base = lib.qv_load_arena(h)
    n = ctypes.c_size_t()
    tp = lib.qv_load_tensors(h, ctypes.byref(n))
    table = []
    for i in range(n.value):
        t = tp[i]
        table.append((t.name.decode(), t.dtype.decode(), [t.shape[d] for d in range(t.ndim)],
                      int(t.offset), int(t.bytes)))
    info = {"seconds": st.seconds, "engine": st.engine.decode() if st.engine else None}
    if nbytes == 0 or not base:
        arena = torch.empty(0, dtype=torch.uint8,
                            device="cpu" if device < 0 else f"cuda:{device}")
    elif device < 0:
        arena = _host_arena(base, nbytes, owner)  # the load goes with the last view
    else:
        from . import _cuda
        arena = _cuda.as_tensor(base, nbytes, device, owner)
    return arena, table, info, owner


# ---- the entry point -----------------------------------------------------------------------

def load(spec, device="cpu", root=None, via="auto"):
    """Loads MODEL[@REF] (REF: label, alias or digest prefix; default current)
    and returns a Loaded dict of name -> torch.Tensor on device ("cpu",
    "cuda", "cuda:N"), all views into one allocation (.arena).

    root: the store root (default $QUIVER_ROOT, else ~/.local/share/quiver).
    via: "auto" (the daemon of root if one runs, else in-process), "daemon"
    (fail without one) or "local" (in-process, even when a daemon runs).
    Raises QuiverError with the library's or the daemon's message."""
    if via not in ("auto", "daemon", "local"):
        raise QuiverError(f"via={via!r}: expected 'auto', 'daemon' or 'local'")
    model, ref = _parse_spec(spec)
    dev = _parse_device(device)
    root = _lib.default_root(root)
    c = None if via == "local" else _connect(root, via == "daemon")
    info = {"model": model, "ref": ref, "root": root,
            "device": "cpu" if dev < 0 else f"cuda:{dev}"}
    if c is not None:
        with c:
            if dev < 0:
                arena, r, owner = _daemon_host(c, model, ref)
            else:
                arena, r, owner = _daemon_cuda(c, model, ref, dev)
        table = _table_json(r["tensors"])
        info.update(source="daemon-" + r.get("source", "store"), version=r.get("version"),
                    bytes=int(r["bytes"]), seconds=r.get("seconds"))
    else:
        s = _lib.store(root)
        label, _ = s.resolve(model, ref)  # the version, pinned against a switch
        arena, table, extra, owner = _local(s, model, label, dev)
        info.update(extra, source="in-process", version=label, bytes=arena.numel())
    out = Loaded(_views(arena, table))
    out.arena = arena
    out.info = info
    out._owner = weakref.ref(owner) if owner is not None else None
    return out
