"""ctypes bindings of libquiver.so (the part of the C API the loader uses).

The Structures mirror include/quiver/load.h field for field; keep them in
step with it."""
import ctypes
import ctypes.util
import errno
import os
import threading

QV_MAX_DIMS = 16
QV_DEVICE_CPU = -1
QV_GPU_IPC_HANDLE_BYTES = 64

# include/quiver/error.h
QV_ENOTFOUND = -1001
QV_ELIMIT = -1010


class QuiverError(Exception):
    """A failure of the library or the daemon. .code: the quiver error code
    (a QV_E* value or -errno), or None when it did not come from either."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


_progress_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)


class LoadOpts(ctypes.Structure):  # qv_load_opts
    _fields_ = [
        ("device", ctypes.c_int),
        ("io", ctypes.c_int),                # enum qv_io_mode
        ("qd", ctypes.c_uint),
        ("chunk_bytes", ctypes.c_size_t),
        ("verify", ctypes.c_int),
        ("cuda_streams", ctypes.c_uint),
        ("decode_threads", ctypes.c_uint),
        ("progress", _progress_fn),
        ("progress_arg", ctypes.c_void_p),
        ("cold_reads", ctypes.c_uint),
        ("host_pages", ctypes.c_int),        # enum qv_host_pages
    ]


class LoadTensor(ctypes.Structure):  # qv_load_tensor
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("file", ctypes.c_char_p),
        ("dtype", ctypes.c_char * 12),
        ("ndim", ctypes.c_uint32),
        ("shape", ctypes.c_int64 * QV_MAX_DIMS),
        ("bytes", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("ptr", ctypes.c_void_p),
    ]


class VersionHead(ctypes.Structure):  # the first fields of qv_version (read only)
    _fields_ = [
        ("model", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("digest", ctypes.c_uint8 * 32),
    ]


class LoadStats(ctypes.Structure):  # qv_load_stats
    _fields_ = [
        ("bytes", ctypes.c_uint64),
        ("arena_bytes", ctypes.c_uint64),
        ("tensors", ctypes.c_uint64),
        ("reads", ctypes.c_uint64),
        ("cold_bytes", ctypes.c_uint64),
        ("decode_threads", ctypes.c_uint),
        ("seconds", ctypes.c_double),
        ("device_init_seconds", ctypes.c_double),
        ("first_tensor_seconds", ctypes.c_double),
        ("io", ctypes.c_int),
        ("engine", ctypes.c_char_p),
        ("qd", ctypes.c_uint),
        ("chunk_bytes", ctypes.c_size_t),
        ("device", ctypes.c_int),
        ("cold_io", ctypes.c_int),
        ("cold_reads", ctypes.c_uint),
        ("host_pages", ctypes.c_int),        # enum qv_host_pages
        ("cold_gpu_bytes", ctypes.c_uint64),
    ]


def _candidates():
    env = os.environ.get("QUIVER_LIB")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    out = [
        os.path.join(here, "libquiver.so"),  # a copy installed with the package
        os.path.normpath(os.path.join(here, "..", "..", "build", "cli", "libquiver.so")),
    ]
    found = ctypes.util.find_library("quiver")
    if found:
        out.append(found)
    return out


_lib = None
_lib_mu = threading.Lock()


def library_path():
    """The libquiver.so the package uses (or would use)."""
    return getattr(library(), "_name", None)


def library():
    """Loads libquiver.so once: $QUIVER_LIB, else libquiver.so inside the
    package, else build/cli/libquiver.so of the source tree the package lives
    in, else what ctypes.util.find_library("quiver") finds."""
    global _lib
    with _lib_mu:
        if _lib is not None:
            return _lib
        tried = []
        for path in _candidates():
            if os.sep in path and not os.path.exists(path):
                tried.append(f"{path} (missing)")
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                tried.append(f"{path} ({e})")
                continue
            _declare(lib)
            _lib = lib
            return lib
        raise QuiverError("cannot find libquiver.so; set QUIVER_LIB to its path (tried: " +
                          "; ".join(tried or ["nothing"]) + ")")


def _declare(lib):
    P, I, U64, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_char_p
    sig = {
        "qv_strerror": (S, [I]),
        "qv_store_default_root": (I, [ctypes.c_char_p, ctypes.c_size_t]),
        "qv_store_open": (I, [S, ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_size_t]),
        "qv_store_close": (None, [P]),
        "qv_store_root": (S, [P]),
        "qv_store_errmsg": (S, [P]),
        "qv_version_get": (I, [P, S, S, ctypes.c_uint, ctypes.POINTER(P)]),
        "qv_version_free": (None, [P]),
        "qv_load_size": (I, [P, S, S, ctypes.POINTER(U64)]),
        "qv_load_run": (I, [P, S, S, P, U64, ctypes.POINTER(LoadOpts), ctypes.POINTER(P)]),
        "qv_load_tensors": (ctypes.POINTER(LoadTensor), [P, ctypes.POINTER(ctypes.c_size_t)]),
        "qv_load_get_stats": (ctypes.POINTER(LoadStats), [P]),
        "qv_load_arena": (P, [P]),
        "qv_load_destroy": (None, [P]),
        "qv_client_connect": (I, [S, ctypes.POINTER(P)]),
        # the response is malloc'd: take it as a pointer and free it ourselves
        "qv_client_call": (I, [P, S, ctypes.POINTER(P), ctypes.POINTER(I)]),
        "qv_client_free": (None, [P]),
        "qv_client_close": (None, [P]),
        "qv_gpu_built_with_cuda": (I, []),
        "qv_gpu_device_count": (I, [ctypes.POINTER(S)]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args


def strerror(code):
    return library().qv_strerror(code).decode(errors="replace")


def enc(s):
    return None if s is None else s.encode()


# ---- the store, opened once per root and process (an LMDB rule) ----------------

_stores = {}
_stores_mu = threading.Lock()


def default_root(root=None):
    """The store root: root, else the library's default ($QUIVER_ROOT, else
    ~/.local/share/quiver)."""
    if root is None:
        buf = ctypes.create_string_buffer(4096)
        rc = library().qv_store_default_root(buf, len(buf))
        if rc == -errno.ENOENT:
            raise QuiverError("no store root: pass root=, or set QUIVER_ROOT or HOME")
        if rc:
            raise QuiverError("no store root: " + strerror(rc))
        root = os.fsdecode(buf.value)
    return os.path.abspath(root)


class Store:
    """An open qv_store. Never closed: tensors of in-process loads may live
    until the process ends, and the library wants every load freed first."""

    def __init__(self, handle, root):
        self.handle = handle
        self.root = root

    def fail(self, rc, what):
        msg = library().qv_store_errmsg(self.handle)
        msg = msg.decode(errors="replace") if msg else ""
        raise QuiverError(msg or f"{what}: {strerror(rc)}", rc)

    def resolve(self, model, ref):
        """(label, digest hex) of model@ref (None: current)."""
        lib = library()
        v = ctypes.c_void_p()
        rc = lib.qv_version_get(self.handle, enc(model), enc(ref), 0, ctypes.byref(v))
        if rc:
            self.fail(rc, f"{model}@{ref or 'current'}")
        try:
            h = ctypes.cast(v, ctypes.POINTER(VersionHead)).contents
            return h.label.decode(), bytes(h.digest).hex()
        finally:
            lib.qv_version_free(v)


def store(root=None):
    root = default_root(root)
    key = os.path.realpath(root)
    with _stores_mu:
        s = _stores.get(key)
        if s is not None:
            return s
        lib = library()
        h = ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        rc = lib.qv_store_open(root.encode(), ctypes.byref(h), err, len(err))
        if rc:
            msg = err.value.decode(errors="replace") or strerror(rc)
            raise QuiverError(f"cannot open the store {root}: {msg}", rc)
        s = Store(h, root)
        _stores[key] = s
        return s
