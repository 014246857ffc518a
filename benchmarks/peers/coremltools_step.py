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
warm-up), VmRSS before the first step, VmHWM after the last, on --device cuda the CUDA caching
allocator's peak above its start (cuda_step_peak_bytes), or {"runnable": false, "reason": ...}.
coremltools' offloading hook (palett_max_mem < 1) asks torch.distributed for the world size, so
for those configurations a one-process group is initialised first (nccl on cuda, gloo on cpu).
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
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        from coremltools.optimize.torch.palettization import FakePalettize
    from safetensors.torch import load_file, save_file

    t = load_file(a.inputs)
    w, cents, g = (t[f"{a.matrix}.{k}"].to(a.device) for k in ("weight", "centroids", "grad"))
    del t
    cuda = a.device == "cuda"
    if CONFIGS[a.config].get("palett_max_mem", 1.0) < 1.0:
        import tempfile
        import torch.distributed as dist
        if dist.is_available() and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                                    init_method="file://" + tempfile.mktemp(prefix="edkm_pg_"))
    fq = FakePalettize(
        observer=torch.quantization.MovingAveragePerChannelMinMaxObserver.with_args(
            quant_min=-128, quant_max=127, dtype=torch.qint8),
        n_bits=a.bits, cluster_dim=1,
        advanced_options={"palett_tau": 1e-4, "kmeans_max_iter": a.max_iter, "palett_epsilon": 0.0,
                          "zero_threshold": 1e-7, "prune_threshold": 1e-7, **CONFIGS[a.config]})
    fq.train()
    fq.enable_fake_palett(True)
    fq.create_partitions(w)
    fq.to(a.device)
    rss_before = proc_status("VmRSS")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    best, out, dw = float("inf"), None, None
    runs = a.repeats + (0 if a.no_warmup else 1)
    try:
        for r in range(runs):
            out = dw = None  # nothing of the previous step is held (as on the edkm side)
            fq.centroids = [cents[i].clone() for i in range(cents.shape[0])]  # the same start every step
            wr = w.clone().requires_grad_(True)
            t0 = time.perf_counter()
            y = fq(wr)
            y.backward(g)
            if cuda:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            if r > 0 or a.no_warmup:
                best = min(best, secs)
            out, dw = y.detach(), wr.grad
            del y, wr
    except Exception as e:  # an option that cannot run here: say why, in its own words
        print(json.dumps({"runnable": False, "reason": f"{type(e).__name__}: {e}".strip().split("\n")[0]}))
        return 0
    result = {"runnable": True, "step_seconds": best, "rss_start_bytes": rss_before,
              "hwm_bytes": proc_status("VmHWM"), "torch": torch.__version__}
    if cuda:  # the outputs of the last step are still held: the peak is what matters
        result["cuda_step_peak_bytes"] = torch.cuda.max_memory_allocated() - cuda_before
    if a.save_output:
        save_file({f"{a.matrix}.soft": out.contiguous().cpu(), f"{a.matrix}.dweight": dw.contiguous().cpu()},
                  a.save_output)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
