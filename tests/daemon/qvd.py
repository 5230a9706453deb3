#!/usr/bin/env python3
"""A tiny quiverd client for the daemon tests (standard library only).

  qvd.py SOCK call '{"op":"ping"}'         one request; prints the reply JSON
  qvd.py SOCK raw HEX [--shut]              raw bytes; prints the reply JSON,
                                            or CLOSED if the daemon closed
  qvd.py SOCK load MODEL REF SRC...         load_host, then compares every
                                            tensor with the safetensors SRC
                                            files; prints a JSON summary
Frames: 16-byte header "<IHHII" (magic 0x31445651, version 1, flags,
length, reserved 0) then a JSON payload; a reply may carry one descriptor."""
import array
import json
import mmap
import os
import socket
import struct
import sys

MAGIC = 0x31445651
HDR = struct.Struct("<IHHII")


def connect(path, timeout=120):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def frame(obj, version=1, flags=0, length=None, magic=MAGIC, rsv=0):
    p = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return HDR.pack(magic, version, flags, len(p) if length is None else length, rsv) + p


def recv_exact(s, n, fds):
    buf = bytearray()
    while len(buf) < n:
        data, anc, _, _ = s.recvmsg(n - len(buf), socket.CMSG_SPACE(4 * 4))
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
        if not data:
            return None  # closed
        buf += data
    return bytes(buf)


def recv_reply(s):
    """(reply dict, fd or -1), or (None, -1) when the daemon closed."""
    fds = []
    h = recv_exact(s, HDR.size, fds)
    if h is None:
        return None, -1
    magic, ver, flags, length, rsv = HDR.unpack(h)
    if magic != MAGIC or ver != 1 or rsv != 0:
        raise RuntimeError(f"bad reply header {h.hex()}")
    p = recv_exact(s, length, fds)
    if p is None:
        raise RuntimeError("reply truncated")
    for extra in fds[1:]:
        os.close(extra)
    return json.loads(p), (fds[0] if fds else -1)


def call(path, obj):
    with connect(path) as s:
        s.sendall(frame(obj))
        return recv_reply(s)


def read_safetensors(paths):
    """name -> (file, absolute offset, bytes) over a set of safetensors files."""
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n))
        for name, t in meta.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            out[name] = (p, 8 + n + b, e - b, t["dtype"], t["shape"])
    return out


def compare(reply, fd, srcs):
    """Checks every tensor of a load_host reply against the source files;
    returns a list of problems (empty: byte-exact)."""
    problems = []
    size = os.fstat(fd).st_size
    if size < reply["bytes"]:
        problems.append(f"memfd holds {size} bytes, reply says {reply['bytes']}")
        return problems
    src = read_safetensors(srcs)
    seen = set()
    with mmap.mmap(fd, max(size, 1), prot=mmap.PROT_READ) as m:
        for t in reply["tensors"]:
            name = t["name"]
            seen.add(name)
            if name not in src:
                problems.append(f"{name}: not in the source")
                continue
            p, off, n, dtype, shape = src[name]
            if t["bytes"] != n or t["dtype"] != dtype or list(t["shape"]) != list(shape):
                problems.append(f"{name}: bytes/dtype/shape {t['bytes']}/{t['dtype']}/{t['shape']} != {n}/{dtype}/{shape}")
                continue
            if t["offset"] + n > size:
                problems.append(f"{name}: offset {t['offset']}+{n} past the memfd end {size}")
                continue
            with open(p, "rb") as f:
                f.seek(off)
                want = f.read(n)
            if m[t["offset"]: t["offset"] + n] != want:
                problems.append(f"{name}: bytes differ")
    missing = set(src) - seen
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {sorted(missing)[0]}")
    return problems


def load_and_compare(path, model, ref, srcs):
    req = {"op": "load_host", "model": model}
    if ref:
        req["ref"] = ref
    r, fd = call(path, req)
    if r is None:
        return {"ok": False, "error": "daemon closed the connection"}
    if not r.get("ok"):
        return {"ok": False, "error": r.get("error"), "code": r.get("code")}
    if fd < 0:
        return {"ok": False, "error": "no descriptor came with the reply"}
    try:
        problems = compare(r, fd, srcs)
    finally:
        os.close(fd)
    return {"ok": not problems, "problems": problems[:5], "version": r.get("version"),
            "source": r.get("source"), "bytes": r.get("bytes"), "tensors": len(r["tensors"])}


def main():
    path, cmd = sys.argv[1], sys.argv[2]
    if cmd == "call":
        r, fd = call(path, json.loads(sys.argv[3]))
        if fd >= 0:
            os.close(fd)
        print("CLOSED" if r is None else json.dumps(r))
    elif cmd == "raw":
        with connect(path, timeout=30) as s:
            h = sys.argv[3]
            if h.startswith("@"):
                h = open(h[1:]).read().strip()
            s.sendall(bytes.fromhex(h))
            if "--shut" in sys.argv[4:]:
                s.shutdown(socket.SHUT_WR)
            try:
                r, fd = recv_reply(s)
            except (ConnectionResetError, BrokenPipeError):
                r, fd = None, -1
            if fd >= 0:
                os.close(fd)
            print("CLOSED" if r is None else json.dumps(r))
    elif cmd == "load":
        model, ref, srcs = sys.argv[3], sys.argv[4], sys.argv[5:]
        res = load_and_compare(path, model, ref, srcs)
        print(json.dumps(res))
        sys.exit(0 if res["ok"] else 1)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
