"""The ctypes mirrors of the library's structs (python/quiver/_lib.py) match
the C headers: the same fields in the same order (parsed from
include/quiver/*.h), at the same offsets, and the same size (printed by the
abi_layout helper, built with the library). A field added on one side only
would otherwise pass unnoticed while the C side reads past the Python
struct, or into its padding. Needs no torch: any python3 with ctypes."""
import ctypes
import json
import os
import re
import subprocess
import sys

SRC = os.environ.get("QV_SRC") or os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "python"))
from quiver import _lib  # noqa: E402

MIRRORS = {  # C struct -> (ctypes class, header, whole struct mirrored)
    "qv_load_opts": (_lib.LoadOpts, "load.h", True),
    "qv_load_tensor": (_lib.LoadTensor, "load.h", True),
    "qv_load_stats": (_lib.LoadStats, "load.h", True),
    "qv_version": (_lib.VersionHead, "store.h", False),
}


def header_fields(header, name):
    text = open(os.path.join(SRC, "include", "quiver", header)).read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    m = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), text, flags=re.S)
    if not m:
        raise SystemExit(f"FAIL: struct {name} not found in {header}")
    out = []
    for decl in m.group(1).split(";"):
        decl = decl.strip()
        if decl:
            out.append(re.search(r"(\w+)\s*(\[[^\]]*\])?$", decl).group(1))
    return out


def main():
    helper = os.environ.get("QV_ABI_LAYOUT")
    if not helper or not os.path.exists(helper):
        print(f"FAIL: QV_ABI_LAYOUT ({helper}) is not the abi_layout helper (build first)")
        return 1
    layout = json.loads(subprocess.run([helper], check=True, capture_output=True, text=True).stdout)
    bad = []
    for cname, (cls, header, whole) in MIRRORS.items():
        py = [f[0] for f in cls._fields_]
        c = header_fields(header, cname)
        if whole and py != c:
            bad.append(f"{cname}: header fields {c}, ctypes {cls.__name__} has {py}")
        elif not whole and py != c[:len(py)]:
            bad.append(f"{cname}: header starts {c[:len(py)]}, ctypes {cls.__name__} has {py}")
        lay = layout[cname]
        for f in py:
            off = getattr(cls, f).offset
            if f not in lay["fields"]:
                bad.append(f"{cname}.{f}: not in abi_layout's list (tests/python/abi_layout.c)")
            elif lay["fields"][f] != off:
                bad.append(f"{cname}.{f}: offset {lay['fields'][f]} in C, {off} in ctypes")
        if whole and lay["size"] != ctypes.sizeof(cls):
            bad.append(f"{cname}: size {lay['size']} in C, {ctypes.sizeof(cls)} in ctypes")
        print(f"# {cname}: {len(py)} fields, size {ctypes.sizeof(cls)}")
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
