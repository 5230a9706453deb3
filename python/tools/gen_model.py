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


def tensor_bytes(seed, name, n):
    h = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little")).randbytes(n)


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
    a = ap.parse_args()

    ts = tensor_list(a.hidden, a.layers, a.vocab, a.dtype)
    big = [t for t in ts if t[2] >= BIG]
    k = round(len(big) * a.mutate)
    chosen = random.Random(a.mutate_seed).sample(big, k) if k else []
    changed = {t[0] for t in chosen}
    total = 0
    if a.shards:
        os.makedirs(a.out, exist_ok=True)
        per = -(-len(ts) // a.shards)
        weight_map = {}
        for i in range(a.shards):
            part = ts[i * per:(i + 1) * per]
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
