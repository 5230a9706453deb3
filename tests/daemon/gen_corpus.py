#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_proto (tests/daemon/corpus/): one file per
case, a 16-byte frame header ("<IHHII": magic, version, flags, length,
reserved) then a payload. Rerun to regenerate; crashers found by the fuzzer
are kept as crash-* files beside these and are not touched here."""
import json
import os
import struct
import sys

MAGIC = 0x31445651
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(out, exist_ok=True)


def hdr(length, magic=MAGIC, version=1, flags=0, rsv=0):
    return struct.pack("<IHHII", magic, version, flags, length, rsv)


def frame(payload, **kw):
    if isinstance(payload, str):
        payload = payload.encode()
    return hdr(kw.pop("length", len(payload)), **kw) + payload


def j(o):
    return json.dumps(o, separators=(",", ":"))


seeds = {
    "ping": frame(j({"op": "ping"})),
    "ping_fdflag": frame(j({"op": "ping"}), flags=1),
    "cli_publish": frame(j({"op": "cli", "argv": ["publish", "m", "/tmp/x.safetensors", "--version", "v1"]})),
    "cli_rollback": frame(j({"op": "cli", "argv": ["rollback", "m"]})),
    "warm": frame(j({"op": "warm", "model": "m", "ref": "v1"})),
    "cool": frame(j({"op": "cool", "model": "m"})),
    "dram": frame(j({"op": "dram"})),
    "load_host": frame(j({"op": "load_host", "model": "m", "ref": "current"})),
    "load_cuda": frame(j({"op": "load_cuda", "model": "m", "device": 0, "bytes": 1 << 30, "ipc_handle": "ab" * 64})),
    "size": frame(j({"op": "size", "model": "m", "ref": "current"})),
    "release_cuda": frame(j({"op": "release_cuda", "ipc_handle": "ab" * 64})),
    "release_cuda_bad": frame(j({"op": "release_cuda", "ipc_handle": "AB" * 64})),
    "unknown_op": frame(j({"op": "frobnicate"})),
    "empty_payload": frame(b""),
    "header_only_short": hdr(10)[:9],
    "empty_file": b"",
    "truncated_payload": frame(j({"op": "ping"}), length=200),
    "truncated_json": frame('{"op":"pi'),
    "oversized_len": frame(j({"op": "ping"}), length=(1 << 20) + 1),
    "max_len": frame(j({"op": "ping"}), length=1 << 20),
    "len_u32max": frame(b"{}", length=0xFFFFFFFF),
    "bad_magic": frame(j({"op": "ping"}), magic=0x31445652),
    "bad_magic_http": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_version_0": frame(j({"op": "ping"}), version=0),
    "bad_version_2": frame(j({"op": "ping"}), version=2),
    "bad_version_ffff": frame(j({"op": "ping"}), version=0xFFFF),
    "bad_flags": frame(j({"op": "ping"}), flags=2),
    "bad_flags_high": frame(j({"op": "ping"}), flags=0x8001),
    "bad_reserved": frame(j({"op": "ping"}), rsv=1),
    "bad_json": frame("{op: ping}"),
    "bad_json_trailing": frame('{"op":"ping"} {"op":"ping"}'),
    "bad_json_utf8": frame(b'{"op":"\xff\xfe"}'),
    "json_nul_escape": frame('{"op":"pi\\u0000ng"}'),
    "json_raw_nul": frame(b'{"op":"ping"}\x00garbage'),
    "json_dup_keys": frame('{"op":"ping","op":"cli"}'),
    "deep_array": frame("[" * 100000 + "]" * 100000),
    "deep_object": frame('{"op":"ping","x":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"),
    "deep_unclosed": frame('{"a":' * 20000),
    "huge_string": frame(j({"op": "ping", "pad": "x" * 1000000})),
    "huge_op": frame(j({"op": "p" * 100000})),
    "huge_number": frame('{"op":"ping","n":' + "9" * 5000 + "}"),
    "huge_exponent": frame('{"op":"ping","n":1e999999}'),
    "non_object_array": frame('["op","ping"]'),
    "non_object_string": frame('"ping"'),
    "non_object_number": frame("42"),
    "non_object_null": frame("null"),
    "missing_op": frame(j({"model": "m"})),
    "op_not_string": frame(j({"op": 7})),
    "op_null": frame(j({"op": None})),
    "op_object": frame(j({"op": {"op": "ping"}})),
    "op_32": frame(j({"op": "a" * 32})),
    "op_33": frame(j({"op": "a" * 33})),
    "op_empty": frame(j({"op": ""})),
    "unicode_op": frame(j({"op": "p\u00efng\U0001F600"})),
    "surrogate_lone": frame('{"op":"\\ud800"}'),
    "cli_argv_many": frame(j({"op": "cli", "argv": ["gc"] * 1000})),
    "two_frames": frame(j({"op": "ping"})) + frame(j({"op": "dram"})),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
