#!/usr/bin/env python3
"""edkm's GGUF dequantization against the gguf Python package, bit for bit.

Writes a GGUF file (gguf.GGUFWriter) holding tensors of every type edkm reads: F32, F16, BF16 and
the legacy quants Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 quantized by gguf.quants.quantize from random data
(with zero and constant blocks); the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, which the package does
not quantize, as random blocks with finite fp16 scales (every bit pattern of the packed fields
occurs). The reference is gguf.quants.dequantize; edkm's is `edkm_gguf_cli dequant`, in fp32 and
in bf16 (compared with torch's fp32 -> bf16 rounding of the reference). Exit 77 when numpy, gguf,
safetensors or torch is missing.

Usage: check_gguf_dequant.py --cli BUILD/tests/edkm_gguf_cli --work DIR
"""
import argparse
import os
import subprocess
import sys

try:
    import numpy as np
    import gguf
    import torch
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install numpy gguf safetensors torch)")
    sys.exit(77)

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# K-quants: offsets of their fp16 scale fields inside a block.
K_QUANTS = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
SHAPES = [(4, 512), (2, 3, 256), (256,)]


def float_data(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(rng.uniform(0.01, 3))
    flat = x.reshape(-1)
    flat[:32] = 0  # an all-zero block (scale 0)
    flat[32:64] = 1.25  # a constant block
    flat[64:96] *= 1e3  # a wide block (still inside fp16 range)
    return x


def k_blocks(rng, qtype, shape):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in K_QUANTS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        scales[0] = 0
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    row_bytes = shape[-1] // block * size
    return raw.reshape(*shape[:-1], row_bytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, "every_type.gguf")
    rng = np.random.default_rng(19)

    writer = gguf.GGUFWriter(path, "test")
    refs = {}  # name -> (type name, fp32 reference)
    for si, shape in enumerate(SHAPES):
        x = float_data(rng, shape)
        # F32, F16 (with subnormals, infinities, signed zero), BF16.
        name = f"f32_{si}"
        writer.add_tensor(name, x)
        refs[name] = ("F32", x)
        h = x.astype(np.float16)
        h.reshape(-1)[96:104] = np.array([6e-8, -6e-8, 1e-5, np.inf, -np.inf, -0.0, 65504, 3e-7], dtype=np.float16)
        name = f"f16_{si}"
        writer.add_tensor(name, h)
        refs[name] = ("F16", dequantize(h.view(np.uint8), T.F16).reshape(shape))
        b = quantize(x, T.BF16)
        name = f"bf16_{si}"
        writer.add_tensor(name, b.view(np.uint8), raw_dtype=T.BF16)
        refs[name] = ("BF16", dequantize(b, T.BF16).reshape(shape))
        for qt in LEGACY:
            q = quantize(x, qt)
            name = f"{qt.name.lower()}_{si}"
            writer.add_tensor(name, q, raw_dtype=qt)
            refs[name] = (qt.name, dequantize(q, qt))
        if shape[-1] % 256 == 0:
            for qt in K_QUANTS:
                q = k_blocks(rng, qt, shape)
                name = f"{qt.name.lower()}_{si}"
                writer.add_tensor(name, q, raw_dtype=qt)
                refs[name] = (qt.name, dequantize(q, qt))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    failures = 0
    per_type = {}
    for mode in ("fp32", "bf16"):
        out = os.path.join(args.work, f"edkm_{mode}.safetensors")
        cmd = [args.cli, "dequant", path, out] + (["bf16"] if mode == "bf16" else [])
        subprocess.run(cmd, check=True)
        got = load_file(out) if mode == "fp32" else None
        if mode == "bf16":  # numpy has no bfloat16: read through torch
            from safetensors.torch import load_file as load_torch

            got = load_torch(out)
        for name, (tname, ref) in refs.items():
            g = got[name]
            if mode == "fp32":
                ok = g.shape == ref.shape and g.dtype == np.float32 and np.array_equal(
                    g.view(np.uint32), ref.astype(np.float32).view(np.uint32))
            else:
                r = torch.from_numpy(np.ascontiguousarray(ref)).to(torch.bfloat16)
                ok = tuple(g.shape) == ref.shape and g.dtype == torch.bfloat16 and torch.equal(
                    g.view(torch.int16), r.view(torch.int16))
            stats = per_type.setdefault((tname, mode), [0, 0, True])
            stats[0] += 1
            stats[1] += ref.size
            stats[2] &= bool(ok)
            if not ok:
                failures += 1
                gv = g.float().numpy() if mode == "bf16" else g
                bad = np.flatnonzero(gv.reshape(-1).view(np.uint32) != ref.reshape(-1).view(np.uint32)) \
                    if mode == "fp32" and g.shape == ref.shape else []
                print(f"MISMATCH {name} ({tname}, {mode}): shape {tuple(g.shape)} vs {ref.shape}; "
                      f"{len(bad)} values differ, first at {bad[:5]}")
    for (tname, mode), (n, values, ok) in sorted(per_type.items()):
        print(f"{tname:5s} {mode}: {n} tensors, {values} values: {'bit-exact' if ok else 'DIFFERENT'}")
    if failures:
        print(f"FAIL: {failures} tensors differ from gguf.quants.dequantize")
        return 1
    from importlib.metadata import version
    print("OK: every type bit-exact with gguf", version("gguf"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
