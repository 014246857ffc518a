#!/usr/bin/env python3
"""The standard Python `safetensors` package reads edkm's files.

Usage: check_safetensors.py COMPRESSED PLAIN
COMPRESSED is a compressed checkpoint written by edkm (palettes: LUT + bit-packed indices),
PLAIN the plain checkpoint edkm decompressed from it. Every palette is unpacked here, in numpy,
from the format description alone (README, include/edkm/io/checkpoint.h), and must equal the
decompressed tensor bit for bit; plain tensors must be equal; file sizes must be exactly the
8-byte prefix + header + tensor bytes.
Exit code 77 (ctest: skipped) when safetensors or torch cannot be imported.
"""
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
    from safetensors import safe_open
except Exception as e:  # pragma: no cover - environment dependent
    print(f"SKIP: safetensors/torch/numpy not importable ({e})")
    sys.exit(77)


def read(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def check_size(path, tensors):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    assert os.path.getsize(path) == 8 + n + data, (path, os.path.getsize(path), 8 + n + data)
    return n, data


def unpack(packed, count, bits):
    stream = np.unpackbits(packed.numpy(), bitorder="little")
    assert stream.size >= count * bits
    assert not stream[count * bits:].any(), "padding bits must be zero"
    return (stream[: count * bits].reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)


def main():
    compressed, plain = sys.argv[1], sys.argv[2]
    ct, cmeta = read(compressed)
    pt, pmeta = read(plain)
    assert cmeta.get("edkm.format") == "edkm-palette/1", cmeta
    palettes = {k[len("edkm.palette."):]: json.loads(v) for k, v in cmeta.items() if k.startswith("edkm.palette.")}
    assert palettes, "no palette in the compressed file"
    owned = set()
    for name, m in palettes.items():
        lut, packed = ct[name + ".lut"], ct[name + ".indices"]
        owned |= {name + ".lut", name + ".indices"}
        k, d = 1 << m["bits"], m["cluster_dim"]
        assert d == 1, "this check rebuilds scalar palettes only"
        numel = int(np.prod(m["shape"]))
        groups = lut.shape[0]
        assert tuple(lut.shape) == (groups, k, d) and packed.dtype == torch.uint8
        assert packed.numel() == (numel * m["bits"] + 7) // 8, (name, packed.numel())
        idx = torch.from_numpy(unpack(packed, numel, m["bits"])).reshape(groups, -1)
        w = torch.gather(lut.float()[..., 0], 1, idx)  # G x n
        if m["scale"]:
            owned.add(name + ".scale")
            w = w.reshape(m["shape"][0], -1) * ct[name + ".scale"]
        w = w.reshape(m["shape"]).to(pt[name].dtype)
        assert str(pt[name].dtype) == {"F32": "torch.float32", "BF16": "torch.bfloat16", "F16": "torch.float16",
                                       "F64": "torch.float64"}[m["dtype"]]
        assert torch.equal(w, pt[name]), f"{name}: unpacked palette differs from the decompressed tensor"
        print(f"{name}: {m['bits']} bits, shape {m['shape']}, {packed.numel()} index bytes, "
              f"{len(torch.unique(w))} distinct values: equal to the decompressed tensor")
    for name, t in ct.items():
        if name not in owned:
            assert torch.equal(t, pt[name]), name
    assert set(pt) == set(palettes) | (set(ct) - owned)
    hc, dc = check_size(compressed, ct)
    hp, dp = check_size(plain, pt)
    print(f"compressed: header {hc} B + data {dc} B; plain: header {hp} B + data {dp} B "
          f"({dp / dc:.1f}x smaller data)")
    print("OK")


if __name__ == "__main__":
    main()
