#!/usr/bin/env python3
"""One DKM forward+backward of coremltools' DKMPalettizer clustering (FakePalettize, the module the
palettizer inserts per layer) on one weight matrix read from a safetensors file; run by
run_peers.py as its own process so that the process's peak RSS belongs to this step alone.

    coremltools_step.py --inputs IN.safetensors --matrix q_proj --config default --bits 3 --max-iter 3 \
        --repeats 1 [--save-output OUT.safetensors]

IN holds <matrix>.weight, <matrix>.centroids (1 x K x 1, fp32) and <matrix>.grad, written by
run_peers.py; the same file is given to edkm_bench_ablation. FakePalettize gets these centroids
(as the parity test does) so both sides run the same iterations from the same start; every
iteration runs (palett_epsilon = 0). Prints one JSON line: step time (best of --repeats after one
warm-up), VmRSS before the first step, VmHWM after the last, or {"runnable": false, "reason": ...}.
"""
import argparse
import json
import logging
import sys
import time
import warnings


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


# coremltools' eDKM options per configuration; run_peers.py names them
CONFIGS = {
    "default": {},
    "palett_max_mem": {"palett_max_mem": 0.0},
    "palett_max_mem+unique": {"palett_max_mem": 0.0, "palett_unique": True},
    "palett_max_mem+unique+shard": {"palett_max_mem": 0.0, "palett_unique": True, "palett_shard": True},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--matrix", required=True)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--save-output")
    a = ap.parse_args()

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        from coremltools.optimize.torch.palettization import FakePalettize
    from safetensors.torch import load_file, save_file

    t = load_file(a.inputs)
    w, cents, g = (t[f"{a.matrix}.{k}"] for k in ("weight", "centroids", "grad"))
    del t
    fq = FakePalettize(
        observer=torch.quantization.MovingAveragePerChannelMinMaxObserver.with_args(
            quant_min=-128, quant_max=127, dtype=torch.qint8),
        n_bits=a.bits, cluster_dim=1,
        advanced_options={"palett_tau": 1e-4, "kmeans_max_iter": a.max_iter, "palett_epsilon": 0.0,
                          "zero_threshold": 1e-7, "prune_threshold": 1e-7, **CONFIGS[a.config]})
    fq.train()
    fq.enable_fake_palett(True)
    fq.create_partitions(w)
    rss_before = proc_status("VmRSS")
    best, out, dw = float("inf"), None, None
    runs = a.repeats + (0 if a.no_warmup else 1)
    try:
        for r in range(runs):
            fq.centroids = [cents[i].clone() for i in range(cents.shape[0])]  # the same start every step
            wr = w.clone().requires_grad_(True)
            t0 = time.perf_counter()
            y = fq(wr)
            y.backward(g)
            secs = time.perf_counter() - t0
            if r > 0 or a.no_warmup:
                best = min(best, secs)
            out, dw = y.detach(), wr.grad
            del y, wr
    except Exception as e:  # an option that cannot run here: say why, in its own words
        print(json.dumps({"runnable": False, "reason": f"{type(e).__name__}: {e}".strip().split("\n")[0]}))
        return 0
    if a.save_output:
        save_file({f"{a.matrix}.soft": out.contiguous(), f"{a.matrix}.dweight": dw.contiguous()}, a.save_output)
    print(json.dumps({"runnable": True, "step_seconds": best, "rss_start_bytes": rss_before,
                      "hwm_bytes": proc_status("VmHWM"), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
