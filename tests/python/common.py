"""Shared parts of the Python client tests: a store with models, the exported
reference files, a tiny safetensors reader, the daemon, the checks.

Environment (set by tests/python/CMakeLists.txt through run.sh):
  QUIVER, QUIVERD   the CLI and the daemon
  QUIVER_LIB        libquiver.so (read by the quiver package)
  QV_SRC            the source root
  QV_SCRATCH        a scratch folder of this test"""
import gc
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

QV_SRC = os.environ.get("QV_SRC") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(QV_SRC, "python"))

import torch  # noqa: E402

import quiver  # noqa: E402

QUIVER = os.environ.get("QUIVER") or os.path.join(QV_SRC, "build", "cli", "quiver")
QUIVERD = os.environ.get("QUIVERD") or os.path.join(os.path.dirname(QUIVER), "quiverd")
GEN = os.path.join(QV_SRC, "python", "tools", "gen_model.py")
# gen_model.py is standard-library only; any python3 runs it
GEN_PY = os.environ.get("QV_PYTHON") or sys.executable

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print(f"  FAIL: {what}", file=sys.stderr)
    return cond


def run(*argv, ok=True):
    p = subprocess.run(argv, capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


# ---- models ----------------------------------------------------------------------------------

def write_safetensors(path, tensors):
    """tensors: [(name, dtype, shape, bytes)]"""
    header, off = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for _, _, _, data in tensors:
            f.write(data)


def mixed_tensors(seed=3):
    """One tensor of each dtype this torch has (values without NaNs, so
    torch.equal compares values too), odd sizes so offsets are not round."""
    rng = random.Random(seed)

    def pack(fmt, vals):
        return struct.pack("<" + fmt * len(vals), *vals)

    def bf16(vals):
        return b"".join(struct.pack("<f", v)[2:] for v in vals)

    ts = [
        ("f32.matrix", "F32", [7, 5], pack("f", [rng.uniform(-2, 2) for _ in range(35)])),
        ("bf16.matrix", "BF16", [3, 11], bf16([rng.uniform(-2, 2) for _ in range(33)])),
        ("f16.vector", "F16", [13], pack("e", [rng.uniform(-2, 2) for _ in range(13)])),
        ("f64.cube", "F64", [2, 3, 2], pack("d", [rng.uniform(-1e9, 1e9) for _ in range(12)])),
        ("i64.ids", "I64", [9], pack("q", [rng.randint(-2**62, 2**62) for _ in range(9)])),
        ("i32.ids", "I32", [2, 5], pack("i", [rng.randint(-2**31, 2**31 - 1) for _ in range(10)])),
        ("i16.ids", "I16", [3], pack("h", [rng.randint(-2**15, 2**15 - 1) for _ in range(3)])),
        ("i8.ids", "I8", [5], pack("b", [rng.randint(-128, 127) for _ in range(5)])),
        ("u8.bytes", "U8", [17], bytes(rng.randrange(256) for _ in range(17))),
        ("bool.mask", "BOOL", [4, 3], bytes(rng.randrange(2) for _ in range(12))),
        ("f32.scalar", "F32", [], pack("f", [1.5])),
        ("f32.big", "F32", [300, 1000], pack("f", [rng.uniform(-1, 1) for _ in range(300000)])),
    ]
    if hasattr(torch, "uint16"):
        ts.append(("u16.ids", "U16", [6], pack("H", [rng.randrange(65536) for _ in range(6)])))
    return ts


def make_store(scratch):
    """A store with llama (two versions, sharded folders from gen_model.py)
    and mixed (one file, many dtypes). Returns (root, {spec: export dir})."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    root = os.path.join(scratch, "root")
    src1, src2 = os.path.join(scratch, "llama-v1"), os.path.join(scratch, "llama-v2")
    gen = [GEN_PY, GEN, "--hidden", "128", "--layers", "2", "--vocab", "1024", "--shards", "3"]
    run(*gen, src1)
    run(*gen, src2, "--seed", "2", "--values", "normal")
    mixed = os.path.join(scratch, "mixed.safetensors")
    write_safetensors(mixed, mixed_tensors())
    run(QUIVER, "--root", root, "publish", "llama", src1, "--version", "v1")
    run(QUIVER, "--root", root, "publish", "llama", src2, "--version", "v2")
    run(QUIVER, "--root", root, "publish", "mixed", mixed, "--version", "m1")
    exports = {}
    for spec in ("llama@v1", "llama@current", "mixed"):
        out = os.path.join(scratch, "export-" + spec.replace("@", "-"))
        run(QUIVER, "--root", root, "export", spec, out)
        exports[spec] = out
    return root, exports


# ---- the reference: a tiny safetensors reader --------------------------------------------------

ST_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
             "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
             "F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
if hasattr(torch, "uint16"):
    ST_DTYPES["U16"] = torch.uint16


def read_safetensors(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    raw = torch.frombuffer(data, dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        # clone: a fresh, aligned allocation per tensor
        t = raw[base + a:base + b].clone().view(ST_DTYPES[h["dtype"]])
        out[name] = t.reshape(h["shape"])
    return out


def read_export(folder):
    """Every tensor of the exported files; where the safetensors package is
    installed, its load_file() must read the same."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    out = {}
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".safetensors"):
            path = os.path.join(folder, fn)
            mine = read_safetensors(path)
            if load_file is not None:
                theirs = load_file(path)
                check(set(theirs) == set(mine), f"{path}: safetensors reads other names")
                for k, v in theirs.items():
                    check(k in mine and v.dtype == mine[k].dtype and v.shape == mine[k].shape and
                          torch.equal(as_bytes(v), as_bytes(mine[k])), f"{path}: {k}: safetensors differs")
            for k, v in mine.items():
                assert k not in out, k
                out[k] = v
    return out


# ---- checks ------------------------------------------------------------------------------------

def as_bytes(t):
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def storage_ptr(t):
    if hasattr(t, "untyped_storage"):
        return t.untyped_storage().data_ptr()
    return t.storage().data_ptr()


def compare(label, loaded, ref, device):
    """Every tensor of ref is in loaded, equal bit for bit and in value, same
    dtype and shape, on device, and all of loaded are views of loaded.arena."""
    ok = check(set(loaded) == set(ref),
               f"{label}: names differ: only loaded {sorted(set(loaded) - set(ref))[:5]}, "
               f"only exported {sorted(set(ref) - set(loaded))[:5]}")
    arena = loaded.arena
    check(arena is not None and arena.dtype == torch.uint8 and arena.dim() == 1,
          f"{label}: .arena is a 1-D uint8 tensor")
    check(str(arena.device) == device, f"{label}: arena on {arena.device}, wanted {device}")
    lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
    sp = storage_ptr(arena)
    for name, want in ref.items():
        got = loaded.get(name)
        if got is None:
            continue
        ok &= check(got.dtype == want.dtype, f"{label}: {name}: dtype {got.dtype}, wanted {want.dtype}")
        ok &= check(tuple(got.shape) == tuple(want.shape),
                    f"{label}: {name}: shape {tuple(got.shape)}, wanted {tuple(want.shape)}")
        ok &= check(str(got.device) == device, f"{label}: {name}: on {got.device}, wanted {device}")
        ok &= check(got.is_contiguous(), f"{label}: {name}: not contiguous")
        if got.numel():
            ok &= check(storage_ptr(got) == sp, f"{label}: {name}: not a view of the arena's storage")
            ok &= check(lo <= got.data_ptr() and got.data_ptr() + got.numel() * got.element_size() <= hi,
                        f"{label}: {name}: lies outside the arena")
        if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            continue
        g = got.cpu()
        ok &= check(torch.equal(as_bytes(g), as_bytes(want)), f"{label}: {name}: bytes differ")
        if not g.is_floating_point() or not torch.isnan(want).any():
            ok &= check(torch.equal(g, want), f"{label}: {name}: values differ")
    return ok


def expect_error(label, fn, *words):
    try:
        fn()
    except quiver.QuiverError as e:
        msg = str(e)
        check(all(w in msg for w in words), f"{label}: message {msg!r} lacks {words}")
        check("\n" not in msg and msg.strip() == msg and msg, f"{label}: message {msg!r} not one line")
        return e
    except Exception as e:  # noqa: BLE001
        check(False, f"{label}: raised {type(e).__name__}: {e}, wanted QuiverError")
        return None
    check(False, f"{label}: no error")
    return None


def released(label, make, version=None):
    """make() returns a load that nothing else references. A view kept alone
    keeps the allocation (and reads the same); once the last view goes, what
    frees the allocation is gone too."""
    loaded = make()
    if version is not None:
        check(quiver.load_info(loaded)["version"] == version,
              f"{label}: version {quiver.load_info(loaded)['version']}, wanted {version}")
    owner = loaded._owner
    if not check(owner is not None and owner() is not None, f"{label}: no owner of the allocation"):
        return
    name, one = max(loaded.items(), key=lambda kv: kv[1].numel())
    want = one.cpu().clone()
    del loaded
    gc.collect()
    check(owner() is not None, f"{label}: the allocation went while {name} still views it")
    check(torch.equal(as_bytes(one.cpu()), as_bytes(want)), f"{label}: {name} changed after the dict went")
    del one
    gc.collect()
    check(owner() is None, f"{label}: the allocation outlived its tensors")


# ---- the daemon --------------------------------------------------------------------------------

class Daemon:
    def __init__(self, root, scratch, dram="64M"):
        self.root = root
        self.log = open(os.path.join(scratch, "quiverd.log"), "ab")
        sock = os.path.join(root, "quiverd.sock")
        self.p = subprocess.Popen([QUIVERD, "--root", root, "--dram", dram, "--no-warm"],
                                  stdout=self.log, stderr=self.log)
        for _ in range(200):
            if os.path.exists(sock) and quiver.daemon_running(root):
                return
            if self.p.poll() is not None:
                raise RuntimeError(f"quiverd exited {self.p.returncode}; see {self.log.name}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"quiverd did not open {sock}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                FAILS.append("quiverd did not stop on SIGTERM")
        self.log.close()
        return self.p.returncode


def finish(name):
    if FAILS:
        print(f"FAIL [{name}]: {len(FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: ok")
    sys.exit(0)
