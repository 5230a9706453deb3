#!/usr/bin/env python3
"""Generate a random safetensors model shaped like a small transformer.

Standard library only, so tests and benchmarks run with any python3.

  gen_model.py OUT.safetensors --hidden 256 --layers 4
  gen_model.py OUTDIR --shards 3 ...          # Hugging Face style folder
  gen_model.py OUT --mutate 0.33 --mutate-seed 7   # same model, a third of
                                                   # the large tensors changed

Each tensor's bytes come from its own seed (model seed + tensor name), so two
runs with the same arguments write identical files, and --mutate changes only
the chosen tensors. Prints a JSON summary (tensors, bytes, changed tensors and
their bytes) on stdout.
"""
import argparse
import hashlib
import json
import os
import random
import struct
import sys

DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}
BIG = 1 << 20  # tensors of this many bytes or more are shards of their own


def tensor_list(hidden, layers, vocab, dtype):
    es = DTYPE_SIZE[dtype]
    ts = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}."
        ts += [
            (p + "input_layernorm.weight", [hidden]),
            (p + "self_attn.q_proj.weight", [hidden, hidden]),
            (p + "self_attn.k_proj.weight", [hidden, hidden]),
            (p + "self_attn.v_proj.weight", [hidden, hidden]),
            (p + "self_attn.o_proj.weight", [hidden, hidden]),
            (p + "post_attention_layernorm.weight", [hidden]),
            (p + "mlp.gate_proj.weight", [4 * hidden, hidden]),
            (p + "mlp.up_proj.weight", [4 * hidden, hidden]),
            (p + "mlp.down_proj.weight", [hidden, 4 * hidden]),
        ]
    ts += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
    out = []
    for name, shape in ts:
        n = es
        for d in shape:
            n *= d
        out.append((name, shape, n))
    return out


VALUES = "random"
DTYPE = "BF16"


def _top_byte_table(rng, top_bytes_of):
    """256 samples of the most significant byte of N(0, 0.02) values, sorted,
    so a uniform random byte indexes a realistic sign+exponent byte."""
    samples = sorted(top_bytes_of(rng.gauss(0.0, 0.02)) for _ in range(256))
    return bytes(samples)


def tensor_bytes(seed, name, n):
    h = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    rng = random.Random(int.from_bytes(h[:8], "little"))
    if VALUES == "random":
        return rng.randbytes(n)
    # "normal": values shaped like trained weights (a narrow range of
    # exponents, random mantissas), built bytewise so it stays fast: the most
    # significant byte of each value (sign + high exponent bits) comes from a
    # table sampled from N(0, 0.02), every other byte is random.
    es = DTYPE_SIZE[DTYPE]
    if DTYPE == "F32":
        table = _top_byte_table(rng, lambda x: struct.pack("<f", x)[3])
    else:  # BF16 / F16 share the layout's idea: the high byte holds the exponent
        fmt = "<e" if DTYPE == "F16" else "<f"
        idx = 1 if DTYPE == "F16" else 3
        table = _top_byte_table(rng, lambda x: struct.pack(fmt, x)[idx])
    out = bytearray(rng.randbytes(n))
    count = n // es
    out[es - 1:count * es:es] = rng.randbytes(count).translate(table)
    return bytes(out)


def write_safetensors(path, tensors, dtype, seed, changed, mutate_seed):
    header, off = {}, 0
    for name, shape, n in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, n in tensors:
            s = mutate_seed if name in changed else seed
            f.write(tensor_bytes(s, name, n))
    return 8 + len(hb) + off


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dtype", default="BF16", choices=sorted(DTYPE_SIZE))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shards", type=int, default=0, help="write a folder with this many safetensors files")
    ap.add_argument("--mutate", type=float, default=0.0, help="fraction of large tensors to change")
    ap.add_argument("--mutate-seed", type=int, default=1000)
    ap.add_argument("--values", choices=["random", "normal"], default="random",
                    help="random bytes (incompressible), or values shaped like trained weights")
    a = ap.parse_args()
    global VALUES, DTYPE
    VALUES, DTYPE = a.values, a.dtype

    ts = tensor_list(a.hidden, a.layers, a.vocab, a.dtype)
    big = [t for t in ts if t[2] >= BIG]
    k = round(len(big) * a.mutate)
    chosen = random.Random(a.mutate_seed).sample(big, k) if k else []
    changed = {t[0] for t in chosen}
    total = 0
    if a.shards:
        if a.shards > len(ts):
            ap.error(f"--shards {a.shards}: the model has only {len(ts)} tensors")
        os.makedirs(a.out, exist_ok=True)
        # balanced: every shard gets floor or ceil of len/shards tensors (a
        # ceil-sized split could leave the last shards empty)
        per, extra = divmod(len(ts), a.shards)
        weight_map = {}
        start = 0
        for i in range(a.shards):
            end = start + per + (i < extra)
            part = ts[start:end]
            start = end
            fname = f"model-{i + 1:05d}-of-{a.shards:05d}.safetensors"
            total += write_safetensors(os.path.join(a.out, fname), part, a.dtype, a.seed, changed, a.mutate_seed)
            for t in part:
                weight_map[t[0]] = fname
        idx = {"metadata": {"total_size": sum(t[2] for t in ts)}, "weight_map": weight_map}
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump(idx, f, indent=2)
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump({"hidden_size": a.hidden, "num_hidden_layers": a.layers, "vocab_size": a.vocab,
                       "torch_dtype": a.dtype.lower()}, f, indent=2)
        with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 4096}, f)
    else:
        total = write_safetensors(a.out, ts, a.dtype, a.seed, changed, a.mutate_seed)
    json.dump({"tensors": len(ts), "bytes": total, "large_tensors": len(big),
               "changed": sorted(changed), "changed_bytes": sum(t[2] for t in chosen)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
