#!/usr/bin/env python3
"""Convert a TensorFlow.js model (model.json + .bin weight files) to one .safetensors file.

Standard library only, so tests run it with any python3.

  tfjs_to_safetensors.py models/handlandmark-lite.json out.safetensors
  tfjs_to_safetensors.py MODEL.json OUT.safetensors --dequantize

A TF.js model.json has "weightsManifest": a list of groups, each with "paths"
(the .bin files, relative to the model.json) and "weights" (name, shape, dtype,
optional "quantization"). The bytes of a group are its .bin files concatenated,
holding the weights raw and little-endian, one after the other in manifest
order. The converter checks that the weights use up exactly the bytes of the
.bin files (no more, no fewer) and fails otherwise.

Dtypes: float32 -> F32, int32 -> I32, bool -> BOOL, uint8 -> U8, int8 -> I8,
uint16 -> U16, int16 -> I16, float16 -> F16, int64 -> I64, float64 -> F64.
'string' and 'complex64' weights have no safetensors equivalent: rejected.

Quantized weights ("quantization": {"dtype": "uint8"|"uint16"|"float16",
"scale", "min"}): by default the stored (quantized) bytes are written as they
are, with the quantized dtype (U8, U16 or F16), so the tensor bytes are exactly
the bytes of the .bin files; the original dtype, scale and min of every
quantized tensor go into the safetensors "__metadata__" (string values, as the
format requires) under "quant.<tensor name>". With --dequantize, quantized
weights are written as F32 instead (float16 widened exactly; uint8/uint16 as
q * scale + min), int32 weights as I32 rounded as TF.js rounds them, and no
quantization metadata is written.

The header is JSON, tensors in manifest order with contiguous data_offsets,
padded with spaces to a multiple of 8 bytes. Prints a JSON summary on stdout:
tensors, bytes (data section), bin_bytes, quantized, out.
"""
import argparse
import array
import json
import math
import os
import struct
import sys

# TF.js dtype -> (safetensors dtype, bytes per element)
DTYPES = {
    "float32": ("F32", 4),
    "int32": ("I32", 4),
    "bool": ("BOOL", 1),
    "uint8": ("U8", 1),
    "int8": ("I8", 1),
    "uint16": ("U16", 2),
    "int16": ("I16", 2),
    "float16": ("F16", 2),
    "int64": ("I64", 8),
    "float64": ("F64", 8),
}


def fail(msg):
    sys.stderr.write("tfjs_to_safetensors: %s\n" % msg)
    sys.exit(1)


def numel(shape):
    n = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            fail("bad shape %r" % (shape,))
        n *= d
    return n


def dequantize(raw, qdtype, q, count, to_int=False):
    """Return little-endian bytes for COUNT quantized values in RAW: F32, or
    I32 rounded as TF.js does (Math.round) when to_int (an int32 weight)."""
    if qdtype == "float16":
        vals = struct.unpack("<%de" % count, raw)
    elif qdtype in ("uint8", "uint16"):
        try:
            scale = float(q["scale"])
            mn = float(q["min"])
        except (KeyError, TypeError, ValueError):
            fail("%s quantization without a numeric scale and min: %r" % (qdtype, q))
        fmt = "<%dB" % count if qdtype == "uint8" else "<%dH" % count
        vals = [v * scale + mn for v in struct.unpack(fmt, raw)]
    else:
        fail("cannot dequantize from %s" % qdtype)
    if to_int:  # Math.round: halves go up
        out = array.array("i", [int(math.floor(v + 0.5)) for v in vals])
    else:
        out = array.array("f", vals)
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def read_group(model_dir, group):
    paths = group.get("paths")
    if not isinstance(paths, list) or not paths:
        fail("weightsManifest group without paths")
    chunks = []
    for p in paths:
        fp = os.path.join(model_dir, p)
        try:
            with open(fp, "rb") as f:
                chunks.append(f.read())
        except OSError as e:
            fail("cannot read %s: %s" % (fp, e))
    return b"".join(chunks)


def convert(model_json, out, dequant):
    try:
        with open(model_json, "r", encoding="utf-8") as f:
            model = json.load(f)
    except (OSError, ValueError) as e:
        fail("cannot read %s: %s" % (model_json, e))
    groups = model.get("weightsManifest")
    if not isinstance(groups, list) or not groups:
        fail("%s has no weightsManifest" % model_json)
    model_dir = os.path.dirname(os.path.abspath(model_json))

    header = {}
    meta = {}
    data = []  # list of bytes, in order
    offset = 0
    bin_bytes = 0
    quantized = 0
    for group in groups:
        blob = read_group(model_dir, group)
        bin_bytes += len(blob)
        pos = 0
        for w in group.get("weights", []):
            name = w.get("name")
            dtype = w.get("dtype")
            shape = w.get("shape")
            if not isinstance(name, str) or not name or name == "__metadata__":
                fail("bad weight name %r" % (name,))
            if name in header:
                fail("duplicate weight name %r" % name)
            if not isinstance(shape, list):
                fail("%s: bad shape" % name)
            if dtype not in DTYPES:
                fail("%s: dtype %r has no safetensors equivalent" % (name, dtype))
            count = numel(shape)
            q = w.get("quantization")
            if q is not None:
                qdtype = q.get("dtype")
                if qdtype not in ("uint8", "uint16", "float16"):
                    fail("%s: unsupported quantization dtype %r" % (name, qdtype))
                store_dtype = qdtype
            else:
                store_dtype = dtype
            st_dtype, esize = DTYPES[store_dtype]
            nbytes = count * esize
            if pos + nbytes > len(blob):
                fail("%s: weights need more bytes than the .bin files hold (%d)"
                     % (name, len(blob)))
            raw = blob[pos:pos + nbytes]
            pos += nbytes
            if q is not None:
                quantized += 1
                if dequant:
                    raw = dequantize(raw, store_dtype, q, count, to_int=dtype == "int32")
                    st_dtype = "I32" if dtype == "int32" else "F32"
                else:
                    qm = {"dtype": store_dtype, "original_dtype": dtype}
                    for k in ("scale", "min"):
                        if k in q:
                            qm[k] = q[k]
                    meta["quant." + name] = json.dumps(qm, sort_keys=True)
            header[name] = {"dtype": st_dtype, "shape": shape,
                            "data_offsets": [offset, offset + len(raw)]}
            offset += len(raw)
            data.append(raw)
        if pos != len(blob):
            fail("weights use %d bytes but the .bin files of %s hold %d"
                 % (pos, group["paths"], len(blob)))

    if meta:
        header = dict([("__metadata__", meta)] + list(header.items()))
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for d in data:
            f.write(d)
    os.replace(tmp, out)
    expect = 8 + len(hjson) + offset
    if os.path.getsize(out) != expect:
        fail("%s: wrote %d bytes, expected %d" % (out, os.path.getsize(out), expect))
    tensors = len(header) - (1 if meta else 0)
    return {"tensors": tensors, "bytes": offset, "bin_bytes": bin_bytes,
            "quantized": quantized, "out": out}


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="See the module docstring for dtypes and quantization.")
    ap.add_argument("model_json")
    ap.add_argument("out")
    ap.add_argument("--dequantize", action="store_true",
                    help="write quantized weights as F32 instead of their stored dtype")
    a = ap.parse_args()
    print(json.dumps(convert(a.model_json, a.out, a.dequantize)))


if __name__ == "__main__":
    main()
