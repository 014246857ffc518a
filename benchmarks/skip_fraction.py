# Fraction of softmax terms an exact skip could drop on SmolLM2-135M weights (issue 20, part 2).
import sys, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
names = ["blk.10.attn_q.weight", "blk.10.ffn_down.weight", "token_embd.weight"]
rng = np.random.default_rng(0)
for t in r.tensors:
    if t.name not in names: continue
    w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    for bits in (3, 4, 8):
        K = 1 << bits
        # centroids: quantiles (k-means-like init), sorted
        c = np.quantile(w, (np.arange(K) + 0.5) / K).astype(np.float32)
        x = rng.choice(w, 200000, replace=False).astype(np.float32)
        for tau in (1e-4, 1e-5):
            z = -(x[:, None] - c[None, :]) ** 2 / tau
            rel = z - z.max(1, keepdims=True)
            below24 = (rel < -16.64).mean()      # e^rel < 2^-24: below fp32 accumulation precision
            under = (rel < -104).mean()          # expf underflows to exactly 0
            # per 16-lane block of consecutive (unsorted) weights: skippable only if every lane is
            blk = rel[: (len(x) // 16) * 16].reshape(-1, 16, K)
            blk24 = (blk.max(1) < -16.64).mean()
            blk_under = (blk.max(1) < -104).mean()
            print(f"{t.name:24s} std {w.std():.4f} bits {bits} tau {tau:g}: per weight <2^-24 {below24:.3f} underflow {under:.3f}; per 16-lane block <2^-24 {blk24:.3f} underflow {blk_under:.3f}")
