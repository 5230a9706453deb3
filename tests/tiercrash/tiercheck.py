#!/usr/bin/env python3
"""Helpers for tier_crash.sh (standard library only).

  tiercheck.py state QUIVER ROOT MODEL
      print "CURRENT LABEL:TIER ..." (labels sorted) from `list --json`;
      exit 1 if the index does not open or the listing is inconsistent.
  tiercheck.py shards QUIVER ROOT MODEL HOT COLD BLOBS LABEL...
      the shard files on both tiers match the index exactly: every tensor
      shard of every version (show --json) is a file on the tier the index
      names and on no other tier, every blob (digests in the file BLOBS) is a
      file on exactly one tier, and nothing else is under HOT/shards or
      COLD/shards. Cold files start with the codec magic. Prints a summary.
  tiercheck.py demoted QUIVER ROOT MODEL LABEL
      after a completed demote of LABEL: each of its tensor shards that is
      still hot is used by a version that stays hot (current, aliased,
      pinned, or entirely hot).
  tiercheck.py work QUIVER ROOT MODEL
      for each version, "LABEL PROMOTE_BYTES DEMOTE_BYTES": the tensor
      bytes a promote / a demote of it would move now (demote keeps the
      shards of versions staying hot, as tier.h says).
  tiercheck.py frame FILE
      print the offset of a byte in the middle of frame 0 of cold file FILE.
  tiercheck.py gcjson [--zero] < gc --json output
      print the counters; with --zero exit 1 if any is non-zero.
"""
import hashlib
import json
import os
import re
import struct
import subprocess
import sys

COLD_MAGIC = b"QVCOLD\r\n"
HEX = re.compile(r"^[0-9a-f]{64}$")


def die(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(1)


def quiver(q, root, *args):
    p = subprocess.run([q, "--root", root] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if p.returncode != 0:
        die("quiver %s exited %d: %s" % (" ".join(args), p.returncode,
                                         p.stderr.decode(errors="replace").strip()))
    try:
        return json.loads(p.stdout)
    except ValueError as e:
        die("quiver %s: output is not JSON (%s): %r" % (" ".join(args), e, p.stdout[:300]))


def versions(q, root, model):
    models = quiver(q, root, "list", "--json")["models"]
    mine = [m for m in models if m["model"] == model]
    if len(mine) != 1:
        die("list --json: model %s listed %d times" % (model, len(mine)))
    vs = quiver(q, root, "list", model, "--json")["versions"]
    if mine[0].get("versions", len(vs)) != len(vs):
        die("list --json says %r versions, list MODEL --json lists %d"
            % (mine[0].get("versions"), len(vs)))
    return vs


def show(q, root, model, label):
    d = quiver(q, root, "show", "%s@%s" % (model, label), "--json")
    if d["tensor_count"] != len(d["tensors"]):
        die("show %s: tensor_count %d, %d tensors listed" % (label, d["tensor_count"], len(d["tensors"])))
    tiers = set()
    for t in d["tensors"]:
        if t.get("tier") not in ("hot", "cold"):
            die("show %s: tensor %s has tier %r" % (label, t["name"], t.get("tier")))
        tiers.add(t["tier"])
    return d


def cmd_state(q, root, model):
    vs = versions(q, root, model)
    cur = [v["version"] for v in vs if v["current"]]
    if len(cur) > 1:
        die("more than one current: %r" % cur)
    print(" ".join([cur[0] if cur else "-"] +
                   sorted("%s:%s" % (v["version"], v.get("tier")) for v in vs)))


def files_under(d):
    out = {}
    for dp, dn, fn in os.walk(d):
        for f in fn:
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, d)
            parts = rel.split(os.sep)
            if (len(parts) != 3 or not HEX.match(f) or parts[0] != f[:2] or parts[1] != f[2:4]):
                die("unexpected file under %s: %s" % (d, rel))
            out[f] = p
    return out


def cmd_shards(q, root, model, hot, cold, blobfile, labels):
    where = {}   # tensor shard hex -> tier (from show)
    for l in labels:
        d = show(q, root, model, l)
        for t in d["tensors"]:
            h = t["shard"].split(":")[-1]
            if where.setdefault(h, t["tier"]) != t["tier"]:
                die("shard %.16s shown on tier %s by one version and %s by %s"
                    % (h, where[h], t["tier"], l))
    with open(blobfile) as fh:
        blobs = set(x.strip() for x in fh if x.strip())
    fh_ = files_under(os.path.join(hot, "shards"))
    fc_ = files_under(os.path.join(cold, "shards"))
    problems = []
    for h, tier in sorted(where.items()):
        on, off = (fh_, fc_) if tier == "hot" else (fc_, fh_)
        if h not in on:
            problems.append("tensor shard %.16s is %s in the index but has no file on that tier%s"
                            % (h, tier, " (a file is on the other tier)" if h in off else ""))
        if h in off:
            problems.append("tensor shard %.16s is %s in the index but also has a file on the other tier (orphan copy)"
                            % (h, tier))
    nblob_hot = nblob_cold = 0
    for b in sorted(blobs):
        n = (b in fh_) + (b in fc_)
        if n != 1:
            problems.append("blob %.16s has %d files (hot: %s, cold: %s), expected exactly 1"
                            % (b, n, b in fh_, b in fc_))
        nblob_hot += b in fh_
        nblob_cold += b in fc_
    known = set(where) | blobs
    for name, files in (("hot", fh_), ("cold", fc_)):
        for h in sorted(set(files) - known):
            problems.append("orphan file on the %s tier: %s (no version references it)" % (name, files[h]))
    for h, p in fc_.items():
        with open(p, "rb") as f:
            if f.read(8) != COLD_MAGIC:
                problems.append("cold file %s does not start with the codec magic" % p)
    if problems:
        die("%d problems with shard files:\n  " % len(problems) + "\n  ".join(problems[:20]))
    nh = sum(1 for t in where.values() if t == "hot")
    print("hot: %d files (%d tensor shards + %d blobs), cold: %d files (%d + %d)"
          % (len(fh_), nh, nblob_hot, len(fc_), len(where) - nh, nblob_cold))


def cmd_demoted(q, root, model, label):
    vs = versions(q, root, model)
    mine = show(q, root, model, label)
    keep = set()
    for v in vs:
        if v["version"] == label:
            continue
        if v["current"] or v.get("aliases") or v.get("pinned") or v.get("tier") == "hot":
            d = show(q, root, model, v["version"])
            keep |= set(t["shard"] for t in d["tensors"])
    bad = sorted(set(t["shard"] for t in mine["tensors"] if t["tier"] == "hot") - keep)
    if bad:
        die("after a completed demote of %s, %d of its shards are hot but used by no version that stays hot, e.g. %s"
            % (label, len(bad), bad[:3]))
    n_hot = len(set(t["shard"] for t in mine["tensors"] if t["tier"] == "hot"))
    print("%d shards kept hot" % n_hot)


def shard_sizes(d):
    """shard -> (tier, bytes) for the tensor shards of one show --json."""
    out = {}
    for t in d["tensors"]:
        end = t["shard_offset"] + t["bytes"]
        tier, size = out.get(t["shard"], (t["tier"], 0))
        out[t["shard"]] = (tier, max(size, end))
    return out


def cmd_work(q, root, model):
    vs = versions(q, root, model)
    shown = {v["version"]: shard_sizes(show(q, root, model, v["version"])) for v in vs}
    staying = {v["version"] for v in vs
               if v["current"] or v.get("aliases") or v.get("pinned") or v.get("tier") == "hot"}
    for v in sorted(shown):
        keep = set()
        for w in staying - {v}:
            keep |= set(shown[w])
        sh = shown[v]
        pro = sum(b for t, b in sh.values() if t == "cold")
        dem = sum(b for s, (t, b) in sh.items() if t == "hot" and s not in keep)
        print(v, pro, dem)


def cmd_frame(path):
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:8] != COLD_MAGIC:
            die("%s: not a cold shard file" % path)
        count = struct.unpack_from("<I", hdr, 36)[0]
        if count < 1:
            die("%s: no frames" % path)
        off, stored = struct.unpack("<QI", f.read(12))
    if off < 4096 or off % 4096 or stored < 2:
        die("%s: frame 0 at %d, %d bytes: not what the format says" % (path, off, stored))
    print(off + stored // 2)


def cmd_gcjson(zero):
    raw = sys.stdin.read()
    try:
        d = json.loads(raw)
    except ValueError:
        die("gc --json output is not JSON: %r" % raw[:300])
    keys = [k for k in ("versions", "shards", "bytes", "temp_files", "index_fixes") if k in d]
    print(" ".join("%s=%s" % (k, d[k]) for k in keys))
    if zero and any(d[k] for k in keys):
        sys.exit(1)


def cmd_blobs(srcs):
    """blobs SRC...: sha256 of every non-safetensors file in source folders."""
    for s in srcs:
        if os.path.isdir(s):
            for f in sorted(os.listdir(s)):
                if not f.endswith(".safetensors"):
                    with open(os.path.join(s, f), "rb") as fh:
                        print(hashlib.sha256(fh.read()).hexdigest())


def main():
    a = sys.argv[1:]
    if not a:
        die(__doc__)
    c = a[0]
    if c == "state":
        cmd_state(*a[1:4])
    elif c == "shards":
        cmd_shards(a[1], a[2], a[3], a[4], a[5], a[6], a[7:])
    elif c == "demoted":
        cmd_demoted(*a[1:5])
    elif c == "work":
        cmd_work(*a[1:4])
    elif c == "frame":
        cmd_frame(a[1])
    elif c == "gcjson":
        cmd_gcjson(a[1:] == ["--zero"])
    elif c == "blobs":
        cmd_blobs(a[1:])
    else:
        die(__doc__)


if __name__ == "__main__":
    main()
