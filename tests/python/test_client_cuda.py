"""quiver.load(..., device="cuda:0"): in-process and through quiverd (CUDA
IPC, from the store and from its DRAM tier), compared tensor by tensor with
the exported safetensors files. Needs torch with CUDA, a GPU and a
libquiver.so/quiverd built with CUDA; skips (exit 77) otherwise."""
import ctypes
import gc
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GEN, GEN_PY, QUIVER, Daemon, check, compare, expect_error,  # noqa: E402
                    finish, make_store, quiver, read_export, released, run, torch)

SCRATCH = os.environ.get("QV_SCRATCH") or "/tmp/qv-scratch-python-client-cuda"
DEV = "cuda:0"


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def load_one(label, root, spec, ref, via, want_source, device=DEV):
    got = quiver.load(spec, device=device, root=root, via=via)
    info = quiver.load_info(got)
    check(info["source"] == want_source, f"{label} {spec}: source {info['source']}, wanted {want_source}")
    compare(f"{label} {spec}", got, ref, DEV)
    check(info["bytes"] <= got.arena.numel(), f"{label} {spec}: info bytes > arena size")
    return got


def load_all(label, root, refs, via, want_source):
    for spec, ref in refs.items():
        load_one(label, root, spec, ref, via, want_source)


def no_leak(label, root, spec, via):
    """Ten loads dropped one after the other leave the device's free memory
    where it was (give or take one arena)."""
    torch.cuda.synchronize()
    gc.collect()
    free0, _ = torch.cuda.mem_get_info(0)
    size = 0
    for _ in range(10):
        w = quiver.load(spec, device=DEV, root=root, via=via)
        size = w.arena.numel()
        del w
        gc.collect()
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info(0)
    check(free0 - free1 <= 2 * size + (64 << 20),
          f"{label}: free device memory fell by {free0 - free1} bytes over 10 loads of {size}")


def settled_free(free0, slack, seconds=5.0):
    """The device's free memory once it is back within slack of free0, or
    after seconds (the daemon closes a mapping when it reads the client's
    end of the connection, which takes a moment)."""
    t0 = time.monotonic()
    while True:
        torch.cuda.synchronize()
        free, _ = torch.cuda.mem_get_info(0)
        if free0 - free <= slack or time.monotonic() - t0 > seconds:
            return free
        time.sleep(0.1)


def daemon_lets_go(root):
    """The daemon keeps an engine's allocation open across loads over one
    connection (swaps), lets go of it on release_cuda, and also when the
    connection closes: an engine that dies without releasing its memory does
    not leave it pinned by the daemon."""
    from quiver import _cuda, _lib
    s = _lib.store(root)
    label, _ = s.resolve("big", None)
    need = ctypes.c_uint64()
    check(_lib.library().qv_load_size(s.handle, b"big", label.encode(), ctypes.byref(need)) == 0,
          "qv_load_size of big")
    size = need.value
    torch.cuda.synchronize()
    gc.collect()
    free0, _ = torch.cuda.mem_get_info(0)
    # loads over one connection into one allocation: the second reuses the
    # mapping (no open), which stays until release_cuda
    buf = _cuda.DeviceBuffer(0, size)
    h = buf.ipc_handle().hex()
    c = quiver._connect(root, True)
    try:
        req = {"op": "load_cuda", "model": "big", "ref": "v1", "device": 0, "ipc_handle": h,
               "bytes": size}
        first, second = c.call(req), c.call(req)
        check(second["open_seconds"] < 0.005 <= first["open_seconds"] or
              second["open_seconds"] < first["open_seconds"] / 10,
              f"the second load over one connection opened the handle again: "
              f"{first['open_seconds']:.4f} s then {second['open_seconds']:.4f} s")
        r = c.call({"op": "release_cuda", "ipc_handle": h})
        check(r.get("closed") is True, f"release_cuda after two loads over one connection: {r}")
        r = c.call({"op": "release_cuda", "ipc_handle": h})
        check(r.get("closed") is False, f"a second release_cuda: {r}")
    finally:
        c.close()
    buf.free()
    free1 = settled_free(free0, 64 << 20)
    check(free0 - free1 <= 64 << 20,
          f"after release_cuda and free: device free memory {(free0 - free1) >> 20} MiB below where it was")
    # an engine that loads and dies (no release, no free): its memory comes back
    child = ("import os, sys, torch, quiver\n"
             "from quiver import _cuda\n"
             "buf = _cuda.DeviceBuffer(0, int(sys.argv[2]))\n"
             "c = quiver._connect(sys.argv[1], True)\n"
             "c.call({'op': 'load_cuda', 'model': 'big', 'ref': 'v1', 'device': 0,\n"
             "        'ipc_handle': buf.ipc_handle().hex(), 'bytes': int(sys.argv[2])})\n"
             "os._exit(0)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(quiver.__file__)))
    p = subprocess.run([sys.executable, "-c", child, root, str(size)], capture_output=True,
                       text=True, env=env)
    check(p.returncode == 0, f"the dying engine: exit {p.returncode}: {p.stderr[-500:]}")
    free2 = settled_free(free0, 64 << 20)
    check(free0 - free2 <= 64 << 20,
          f"an engine died after a load through the daemon: device free memory stays "
          f"{(free0 - free2) >> 20} MiB below where it was (its {size >> 20} MiB allocation held by quiverd)")


ENGINE_ON_ONE_GPU = """
import sys
sys.path.insert(0, sys.argv[1])
from common import FAILS, compare, read_export
import quiver
from quiver import _cuda
root, export = sys.argv[2], sys.argv[3]
# this engine sees one GPU, its cuda:0; quiverd numbers it otherwise
c = quiver._connect(root, True)
sz = c.call({"op": "size", "model": "mixed"})
buf = _cuda.DeviceBuffer(0, int(sz["bytes"]))
r = c.call({"op": "load_cuda", "model": "mixed", "ref": sz["version"], "device": 0,
            "pci_bus_id": _cuda.pci_bus_id(0), "ipc_handle": buf.ipc_handle().hex(),
            "bytes": int(sz["bytes"])})
c.close()
print("daemon device", r["device"])
w = quiver.load("mixed", device="cuda:0", root=root, via="daemon")
compare("an engine that sees one GPU", w, read_export(export), "cuda:0")
print("engine ok" if not FAILS else f"engine: {len(FAILS)} checks failed")
"""


def device_identity(root, exports):
    """An engine names its GPU by PCI bus id: quiverd loads into that GPU
    whatever either process's CUDA_VISIBLE_DEVICES, and refuses a GPU it
    does not see rather than load into another."""
    from quiver import _cuda
    small = _cuda.DeviceBuffer(0, 4096)

    def load_on(bus_id):
        return quiver.daemon_call({"op": "load_cuda", "model": "mixed", "device": 0,
                                   "pci_bus_id": bus_id, "ipc_handle": small.ipc_handle().hex(),
                                   "bytes": 4096}, root=root)

    expect_error("daemon cuda: a GPU quiverd does not see", lambda: load_on("0000:ff:1f.7"),
                 "sees no GPU at PCI bus id 0000:ff:1f.7")
    expect_error("daemon cuda: not a bus id", lambda: load_on("../../x"), "not a PCI bus id")
    small.free()
    n = torch.cuda.device_count()
    if n < 2:
        print(f"NOTE: one GPU ({n}): the engine-on-another-GPU check needs two; skipped")
        return
    last = n - 1
    # our cuda:{last} in the child's terms: an entry of our own list, if we have one
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    child = seen.split(",")[last].strip() if seen else str(last)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=child,
               PYTHONPATH=os.path.dirname(os.path.dirname(quiver.__file__)))
    p = subprocess.run([sys.executable, "-c", ENGINE_ON_ONE_GPU,
                        os.path.dirname(os.path.abspath(__file__)), root, exports["mixed"]],
                       capture_output=True, text=True, env=env)
    check(p.returncode == 0 and "engine ok" in p.stdout,
          f"an engine with CUDA_VISIBLE_DEVICES={child}: exit {p.returncode}: "
          f"{p.stdout[-300:]} {p.stderr[-800:]}")
    check(f"daemon device {last}" in p.stdout,
          f"quiverd loaded the engine's cuda:0 (its GPU {last}) into another GPU: {p.stdout[-300:]}")
    print(f"an engine seeing only GPU {last} as cuda:0: quiverd loaded into its cuda:{last}")


def main():
    if not torch.cuda.is_available():
        skip(f"torch {torch.__version__} sees no CUDA device")
    lib = quiver.library()
    if not lib.qv_gpu_built_with_cuda():
        skip(f"{quiver.library_path()} was built without CUDA (-DQUIVER_WITH_CUDA=ON)")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, libquiver {quiver.library_path()}")
    root, exports = make_store(SCRATCH)
    # a version large enough that an allocation the daemon keeps shows
    big = os.path.join(SCRATCH, "big.safetensors")
    run(GEN_PY, GEN, "--hidden", "1024", "--layers", "4", "--vocab", "16000", big)
    run(QUIVER, "--root", root, "publish", "big", big, "--version", "v1")
    refs = {spec: read_export(d) for spec, d in exports.items()}

    # ---- in-process: the library's device arena ----
    check(not quiver.daemon_running(root), "no daemon runs yet")
    load_all("in-process", root, refs, "auto", "in-process")
    # "cuda" means the current device; a torch.device works too
    load_one("in-process", root, "mixed", refs["mixed"], "local", "in-process", device="cuda")
    load_one("in-process", root, "mixed", refs["mixed"], "local", "in-process",
             device=torch.device(DEV))
    released("in-process", lambda: load_one("in-process", root, "llama@v1", refs["llama@v1"],
                                            "local", "in-process"), version="v1")
    no_leak("in-process", root, "llama", "local")
    # the tensors work with torch: a matmul of two loaded weights
    w = quiver.load("mixed", device=DEV, root=root)
    x = w["f32.big"] @ torch.ones(1000, device=DEV)
    check(torch.allclose(x.cpu(), refs["mixed"]["f32.big"] @ torch.ones(1000), rtol=1e-4, atol=1e-3),
          "a matmul on loaded tensors")
    del w, x
    expect_error("cuda: unknown model", lambda: quiver.load("nosuch", device=DEV, root=root), "nosuch")
    n = torch.cuda.device_count()
    expect_error("cuda: no such device", lambda: quiver.load("mixed", device=f"cuda:{n}", root=root,
                                                             via="local"))

    # ---- through the daemon: CUDA IPC into our own allocation ----
    d = Daemon(root, SCRATCH)
    try:
        load_all("daemon-store", root, refs, "daemon", "daemon-store")
        released("daemon-store", lambda: load_one("daemon-store", root, "llama", refs["llama@current"],
                                                  "daemon", "daemon-store"), version="v2")
        no_leak("daemon-store", root, "llama@v1", "daemon")
        no_leak("daemon-store", root, "big", "daemon")
        daemon_lets_go(root)
        device_identity(root, exports)
        for spec in ("llama@v1", "llama@current", "mixed"):
            model, _, ref = spec.partition("@")
            req = {"op": "warm", "model": model}
            if ref:
                req["ref"] = ref
            quiver.daemon_call(req, root=root)
        load_all("daemon-dram", root, refs, "daemon", "daemon-dram")
        no_leak("daemon-dram", root, "mixed", "daemon")
        # a host load and a device load of the same version agree
        h = quiver.load("mixed", device="cpu", root=root)
        g = quiver.load("mixed", device=DEV, root=root)
        check(all(torch.equal(h[k].reshape(-1).view(torch.uint8), g[k].cpu().reshape(-1).view(torch.uint8))
                  for k in h if h[k].numel()), "cpu and cuda loads through the daemon agree")
        del h, g
        expect_error("daemon cuda: unknown model",
                     lambda: quiver.load("nosuch", device=DEV, root=root), "nosuch")
        # the daemon does not take a client's word for its allocation's size:
        # 4 KiB that claim a TiB must not be written past
        from quiver import _cuda
        small = _cuda.DeviceBuffer(0, 4096)
        expect_error("daemon cuda: an allocation smaller than it says",
                     lambda: quiver.daemon_call({"op": "load_cuda", "model": "mixed", "device": 0,
                                                 "ipc_handle": small.ipc_handle().hex(),
                                                 "bytes": 1 << 40}, root=root),
                     "the allocation behind the handle holds")
        small.free()
        load_one("daemon-dram", root, "mixed", refs["mixed"], "daemon", "daemon-dram")
        kept = load_one("daemon-dram", root, "mixed", refs["mixed"], "daemon", "daemon-dram")
    finally:
        rc = d.stop()
    check(rc == 0, f"quiverd exit {rc} after SIGTERM")
    # the allocation is ours: it outlives the daemon
    compare("after the daemon stopped", kept, refs["mixed"], DEV)
    box = [kept]
    del kept
    released("daemon-dram", box.pop)
    finish("python_client_cuda")


if __name__ == "__main__":
    main()
