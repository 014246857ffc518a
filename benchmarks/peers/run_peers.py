#!/usr/bin/env python3
"""edkm against coremltools' DKMPalettizer on the LLaMA-7B decoder layer's weight shapes.

    python benchmarks/peers/run_peers.py --ablation build/benchmarks/edkm_bench_ablation \
        --chart build/benchmarks/edkm_bench_chart [--quick] --out benchmarks/results/peers_cpu

Same inputs: this script writes one safetensors file (per matrix: the weight, seeded, in --dtype;
initial centroids, quantiles of the weight; the upstream gradient) and gives it to both sides.
Same work: one DKM forward+backward at --bits with --max-iter iterations, all of them run
(epsilon 0), tau 1e-4; best step time of --repeats after one warm-up.
Same memory method for both: every (side, configuration, matrix) runs in its own process; the
peak is that process's VmHWM (peak resident set, read from /proc/self/status after the step) and
its `step peak` is VmHWM minus VmRSS just before the first step (inputs loaded, libraries
initialised): the memory the step itself added. Both run with MALLOC_MMAP_THRESHOLD_=65536 (see
CHILD_ENV). The ratios compare step peaks (the Python +
torch + coremltools runtime is ~0.5 GB before any work; the full peaks are printed too).
Agreement: max |W_soft(ours) - W_soft(coremltools)| / max |W_soft(coremltools)|, and the same for
dL/dW, in --dtype and once in fp32 (coremltools computes 16-bit weights in their dtype, we in
fp32, so in bf16 they differ by bf16 rounding of the distances; in fp32 they compute the same
function). Every row is also compared with coremltools run on the same values in fp64: each
side's own error.
The layer's q/k/v/o share one shape and gate/up another: each distinct shape runs once and the
layer total counts it with its multiplicity (times summed, peaks the maximum).
coremltools' eDKM options (palett_max_mem, palett_unique, palett_shard) are tried as well; where
they cannot run the table says why (its own exception).
Writes OUT.json, OUT.md and OUT.svg (step peak per configuration, via edkm_bench_chart).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
LAYER = [("q_proj", 4096, 4096), ("k_proj", 4096, 4096), ("v_proj", 4096, 4096), ("o_proj", 4096, 4096),
         ("gate_proj", 11008, 4096), ("up_proj", 11008, 4096), ("down_proj", 4096, 11008)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OURS = ["dense", "+marshaling", "table", "streaming"]
THEIRS = ["default", "palett_max_mem", "palett_max_mem+unique", "palett_max_mem+unique+shard"]
WHY_NOT = ("coremltools' saved-tensor hook (_FakePalettizerTensorHook, used only when palett_max_mem < 1; "
           "palett_unique and palett_shard act inside it) calls torch.cuda.get_device_properties and "
           "torch.distributed.get_world_size: it needs a CUDA device and an initialised process group")


# Both sides run with the same environment. glibc's dynamic mmap threshold would otherwise keep
# freed large blocks in the heap, making a process's RSS depend on its allocation history rather
# than on what it holds; a fixed threshold makes RSS follow the allocations (tested: the step peak
# of edkm's dense row then lies within 12% of its MemoryMeter figure).
CHILD_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")


def machine_name():
    return os.environ.get("EDKM_BENCH_MACHINE") or "2-core x86-64 CPU, 24 GiB, no GPU"


def run_process(cmd, log):
    """Runs cmd with stdout to `log`; returns (exit code, peak RSS in bytes from wait4, wall s)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=CHILD_ENV)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def write_inputs(path, shapes, dtype, bits, values_of=None):
    """values_of: another dtype whose values (rounded to it) are written in `dtype` (fp64 references)."""
    tensors = {}
    for i, (name, rows, cols) in enumerate(shapes):
        gen = torch.Generator().manual_seed(1000 + i)
        w = (torch.randn(rows, cols, generator=gen) * 0.02).to(values_of or dtype).to(dtype)
        g = torch.randn(rows, cols, generator=gen).to(values_of or dtype).to(dtype)
        k = 2 ** bits
        # quantiles of a sample: distinct, ordered, the same for both sides
        sample = w.float().flatten()[torch.randperm(w.numel(), generator=gen)[:200000]].double()
        c = torch.quantile(sample, (torch.arange(k, dtype=torch.float64) + 0.5) / k).float().reshape(1, k, 1)
        if dtype == torch.float64:  # the fp32 centroids, exactly: coremltools wants one dtype
            c = c.double()
        tensors.update({f"{name}.weight": w, f"{name}.grad": g, f"{name}.centroids": c.contiguous()})
    save_file(tensors, path)


def ours(args, work, inputs, name, config, dtype, save):
    out = os.path.join(work, f"ours_{name}_{config}_{dtype}")
    cmd = [args.ablation, "--inputs", inputs, "--matrices", name, "--configs", config, "--dtype", dtype,
           "--device", args.device,
           "--bits", str(args.bits), "--max-iter", str(args.max_iter), "--repeats", str(args.repeats),
           "--out", out] + (["--save-output", save] if save else [])
    rc, maxrss, _ = run_process(cmd, out + ".log")
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{open(out + '.log').read()[-2000:]}")
    r = json.load(open(out + ".json"))["rows"][0]
    res = {"runnable": True, "step_seconds": r["step_seconds"], "rss_start_bytes": r["rss_start_bytes"],
           "hwm_bytes": r["hwm_bytes"], "maxrss_bytes": maxrss}
    if args.device == "cuda":  # MemoryMeter's CUDA peak above the start (the ablation adds weight + gradient)
        rows, cols = (int(x) for x in r["shape"].split("x"))
        res["cuda_step_peak_bytes"] = r["device_peak_bytes"] - 2 * rows * cols * DTYPES[dtype].itemsize
    return res


def theirs(args, work, inputs, name, config, dtype, save):
    log = os.path.join(work, f"coremltools_{name}_{config}_{dtype}.log")
    cmd = [sys.executable, os.path.join(HERE, "coremltools_step.py"), "--inputs", inputs, "--matrix", name,
           "--config", config, "--device", args.device, "--bits", str(args.bits), "--max-iter", str(args.max_iter), "--repeats",
           str(args.repeats)] + (["--save-output", save] if save else [])
    rc, maxrss, _ = run_process(cmd, log)
    lines = [l for l in open(log).read().splitlines() if l.startswith("{")]
    if rc != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{open(log).read()[-2000:]}")
    r = json.loads(lines[-1])
    r["maxrss_bytes"] = maxrss
    return r


def fmt(v):
    return "-" if v is None else f"{v:.1e}"


def step_peak(r):
    if "cuda_step_peak_bytes" in r:
        return r["cuda_step_peak_bytes"]
    return r["hwm_bytes"] - r["rss_start_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ablation", required=True, help="edkm_bench_ablation binary")
    ap.add_argument("--chart", required=True, help="edkm_bench_chart binary")
    ap.add_argument("--quick", action="store_true", help="shapes / 8")
    ap.add_argument("--scale", type=int, default=0, help="divide the shapes by this (default 1, --quick 8)")
    ap.add_argument("--matrices", default="", help="comma-separated subset of the layer's matrices (default: all)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: step peak = the CUDA caching allocator's peak above the step's start, both sides")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/peers_cpu")
    args = ap.parse_args()
    global WHY_NOT
    if args.device == "cuda":
        WHY_NOT = "on cuda they run with a one-process group (nccl), initialised by coremltools_step.py"
    scale = args.scale or (8 if args.quick else 1)
    work = tempfile.mkdtemp(prefix="edkm_peers_")

    # distinct shapes, with how many matrices of the layer have each
    shapes, count = [], {}
    wanted = [m for m in args.matrices.split(",") if m]
    unknown = set(wanted) - {name for name, _, _ in LAYER}
    if unknown:
        ap.error(f"--matrices: unknown {sorted(unknown)}; the layer has {[name for name, _, _ in LAYER]}")
    for name, r, c in LAYER:
        if wanted and name not in wanted:
            continue
        key = (r // scale, c // scale)
        if key not in count:
            shapes.append((name, *key))
            count[key] = 0
        count[key] += 1
    results, not_runnable = [], set()
    for dtype in [args.dtype] + (["fp32"] if args.dtype != "fp32" else []):
        inputs = os.path.join(work, f"inputs_{dtype}.safetensors")
        write_inputs(inputs, shapes, DTYPES[dtype], args.bits)
        agreement_only = dtype != args.dtype  # the fp32 pass: agreement of the dense computations only
        # the same values in fp64: coremltools' fp64 result is the exact reference
        inputs64 = os.path.join(work, f"inputs_{dtype}_as_fp64.safetensors")
        write_inputs(inputs64, shapes, torch.float64, args.bits, values_of=DTYPES[dtype])
        for name, rows, cols in (shapes[:1] if agreement_only else shapes):
            ref_file = os.path.join(work, f"theirs_{name}_{dtype}.safetensors")
            ref64_file = os.path.join(work, f"theirs_{name}_{dtype}_as_fp64.safetensors")
            r64 = theirs(args, work, inputs64, name, "default", f"{dtype}_as_fp64", ref64_file)
            if not r64["runnable"]:
                raise RuntimeError(f"coremltools in fp64 (the exact reference): {r64['reason']}")
            exact = load_file(ref64_file)
            for cfg in (["default"] if agreement_only else THEIRS):
                # an option that cannot run here fails for every shape: tried once
                if cfg in not_runnable:
                    continue
                r = theirs(args, work, inputs, name, cfg, dtype, ref_file if cfg == "default" else None)
                if not r["runnable"]:
                    not_runnable.add(cfg)
                if cfg == "default":
                    mine = load_file(ref_file)
                    r["exact_soft"] = rel(mine[f"{name}.soft"], exact[f"{name}.soft"])
                    r["exact_dweight"] = rel(mine[f"{name}.dweight"], exact[f"{name}.dweight"])
                results.append({"side": "coremltools", "config": cfg, "matrix": name, "shape": f"{rows}x{cols}",
                                "dtype": dtype, "multiplicity": count[(rows, cols)], **r})
                print(f"coremltools {cfg:28s} {name:10s} {dtype}: "
                      + (f"{r['step_seconds']:.3f} s, step peak {step_peak(r) / 2**20:.1f} MiB" if r["runnable"]
                         else f"not runnable on {args.device}: {r['reason']}"), flush=True)
            ref = load_file(ref_file)
            for cfg in (["dense"] if agreement_only else OURS):
                save = os.path.join(work, f"ours_{name}_{cfg}_{dtype}.safetensors")
                r = ours(args, work, inputs, name, cfg, dtype, save)
                mine = load_file(save)
                r["agreement_soft"] = rel(mine[f"{name}.{cfg}.soft"], ref[f"{name}.soft"])
                r["agreement_dweight"] = rel(mine[f"{name}.{cfg}.dweight"], ref[f"{name}.dweight"])
                r["exact_soft"] = rel(mine[f"{name}.{cfg}.soft"], exact[f"{name}.soft"])
                r["exact_dweight"] = rel(mine[f"{name}.{cfg}.dweight"], exact[f"{name}.dweight"])
                results.append({"side": "edkm", "config": cfg, "matrix": name, "shape": f"{rows}x{cols}",
                                "dtype": dtype, "multiplicity": count[(rows, cols)], **r})
                print(f"edkm        {cfg:28s} {name:10s} {dtype}: {r['step_seconds']:.3f} s, step peak "
                      f"{step_peak(r) / 2**20:.1f} MiB, W_soft vs coremltools {r['agreement_soft']:.1e}", flush=True)

    # layer totals (main dtype): times summed with multiplicity, peaks the maximum
    main_rows = [r for r in results if r["dtype"] == args.dtype and r["runnable"]]
    layer = {}
    for r in main_rows:
        key = (r["side"], r["config"])
        t = layer.setdefault(key, {"side": r["side"], "config": r["config"], "matrix": "layer", "step_seconds": 0.0,
                                   "step_peak_bytes": 0, "hwm_bytes": 0})
        t["step_seconds"] += r["step_seconds"] * r["multiplicity"]
        t["step_peak_bytes"] = max(t["step_peak_bytes"], step_peak(r))
        t["hwm_bytes"] = max(t["hwm_bytes"], r["hwm_bytes"])
    for r in results:
        if r["runnable"]:
            r["step_peak_bytes"] = step_peak(r)

    # the reference: coremltools' best runnable configuration (lowest memory, shortest time), all shapes run
    complete = [t for (side, cfg), t in layer.items() if side == "coremltools"
                and sum(1 for r in main_rows if r["side"] == side and r["config"] == cfg) == len(shapes)]
    base = None
    if complete:
        base = {"step_peak_bytes": min(t["step_peak_bytes"] for t in complete),
                "step_seconds": min(t["step_seconds"] for t in complete)}
    doc = {"benchmark": "peers", "machine": machine_name(), "dtype": args.dtype, "bits": args.bits,
           "max_iter": args.max_iter, "scale": scale, "torch": torch.__version__, "rows": results,
           "layer": list(layer.values())}
    try:
        import coremltools
        doc["coremltools"] = coremltools.__version__
    except Exception:
        pass

    mib = lambda b: f"{b / 2**20:.1f}"
    method = ("`step peak` = the CUDA caching allocator's peak above its value before the step (edkm: "
              "MemoryMeter, coremltools: torch.cuda.max_memory_allocated; the same counter)"
              if args.device == "cuda" else
              "`step peak` = VmHWM after the step - VmRSS before it (the same method for both sides, both with "
              "MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows the allocations)")
    md = [f"# edkm vs coremltools DKMPalettizer: LLaMA-7B decoder layer shapes"
          f"{f' / {scale}' if scale > 1 else ''}, {args.bits} bits, {args.dtype}, forward+backward", "",
          f"Machine: {machine_name()}. torch {torch.__version__}, coremltools {doc.get('coremltools', '?')}. "
          f"Same inputs (one safetensors file), {args.max_iter} iterations all run, best of {args.repeats} after a "
          f"warm-up; one process per row, on {args.device}; {method}; ratios are edkm / the best runnable "
          f"coremltools configuration (below 1: edkm uses less / is faster).", "",
          f"Command: `python3 benchmarks/peers/run_peers.py {' '.join(sys.argv[1:])}`", "",
          f"## Layer (matrices one at a time: peak = max, time = sum over the {sum(count.values())} matrices)", "",
          "| side | configuration | step peak MiB | process peak MiB | step s | memory ours/best of theirs | "
          "time ours/best of theirs |",
          "|---|---|---|---|---|---|---|"]
    for t in layer.values():
        mr = tr = "-"
        if base and t["side"] == "edkm":
            mr = f"{t['step_peak_bytes'] / base['step_peak_bytes']:.4f}"
            tr = f"{t['step_seconds'] / base['step_seconds']:.3f}"
        md.append(f"| {t['side']} | {t['config']} | {mib(t['step_peak_bytes'])} | {mib(t['hwm_bytes'])} | "
                  f"{t['step_seconds']:.3f} | {mr} | {tr} |")
    for r in results:
        if r["side"] == "coremltools" and not r["runnable"]:
            md.append(f"| coremltools | {r['config']} | not runnable on {args.device}: {r['reason']} | | | | |")
    md += ["", "## Per matrix shape", "",
           "| side | configuration | matrix (x count in layer) | shape | dtype | step peak MiB | process peak MiB | "
           "step s | memory ours/best of theirs | time ours/best of theirs | W_soft vs coremltools | dL/dW vs coremltools "
           "| W_soft vs fp64 | dL/dW vs fp64 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r["runnable"]:
            continue
        refs = [q for q in results if q["side"] == "coremltools" and q["runnable"] and q["matrix"] == r["matrix"]
                and q["dtype"] == r["dtype"]]
        mr = tr = ag = agd = "-"
        if r["side"] == "edkm" and refs:
            mr = f"{step_peak(r) / min(step_peak(q) for q in refs):.4f}"
            tr = f"{r['step_seconds'] / min(q['step_seconds'] for q in refs):.3f}"
            ag, agd = f"{r['agreement_soft']:.1e}", f"{r['agreement_dweight']:.1e}"
        md.append(f"| {r['side']} | {r['config']} | {r['matrix']} (x{r['multiplicity']}) | {r['shape']} | {r['dtype']} "
                  f"| {mib(step_peak(r))} | {mib(r['hwm_bytes'])} | {r['step_seconds']:.3f} | {mr} | {tr} | {ag} | "
                  f"{agd} | {fmt(r.get('exact_soft'))} | {fmt(r.get('exact_dweight'))} |")
    # the target: lower peak memory and shorter step time than coremltools, every configuration
    md += ["", "## Targets: below coremltools in memory and time (layer, against its best runnable configuration)",
           ""]
    why = {"dense": "the dense engine is the reference: it computes 16-bit weights in fp32 (tau = 1e-4 needs the "
                    "precision), so its N x K maps take twice coremltools' bf16 maps",
           "+marshaling": "on a CPU the offloader moves saved tensors host-to-host: nothing leaves the memory "
                          "measured, and the copies cost time (on a GPU it frees device memory)"}
    for t in layer.values():
        if t["side"] != "edkm" or not base:
            continue
        mr, tr = t["step_peak_bytes"] / base["step_peak_bytes"], t["step_seconds"] / base["step_seconds"]
        ok = mr < 1 and tr < 1
        line = (f"- {t['config']}: memory {mr:.3f}x, time {tr:.3f}x of coremltools - "
                f"{'met' if ok else 'NOT met'}")
        if not ok and t["config"] in why:
            line += f" ({why[t['config']]})"
        md.append(line)
    md += ["", f"coremltools' eDKM options: {WHY_NOT}. Agreement is relative to coremltools' largest value; in "
               f"16-bit dtypes coremltools computes the distances and the softmax in the weight's dtype and edkm in "
               f"fp32, so they differ by that rounding. `vs fp64`: against coremltools run on the same values "
               f"(rounded to the row's dtype) in fp64, where the two implementations agree to ~1e-14 (tests/parity): "
               f"each side's own error (16-bit rows include the rounding of W_soft and dL/dW to 16 bits, ~2e-3 in "
               f"bf16). coremltools sums the centroid update sum_n A[n, k] w[n] with a matmul, whose fp32 "
               f"running sum drifts with the weights per LUT (2e-4 at 262,144); edkm's dense engine sums in a tree, "
               f"the streaming engine in fp64; the table engine clusters fp32 weights' bf16 rounding "
               f"(table_fp32_as_bf16), ~3e-3 by design."]
    with open(args.out + ".json.tmp", "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(args.out + ".json.tmp", args.out + ".json")
    with open(args.out + ".md.tmp", "w") as f:
        f.write("\n".join(md) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(args.out + ".md.tmp", args.out + ".md")
    print("\n".join(md))

    # chart: step peak per configuration and matrix (log scale), rendered by the one chart tool
    chart_rows = [{"matrix": r["matrix"], "series": f"{r['side']} {r['config']}", "MiB": step_peak(r) / 2**20}
                  for r in results if r["runnable"] and r["dtype"] == args.dtype]
    chart_rows += [{"matrix": "layer", "series": f"{t['side']} {t['config']}", "MiB": t["step_peak_bytes"] / 2**20}
                   for t in layer.values()]
    chart_json = os.path.join(work, "chart.json")
    json.dump({"machine": machine_name(), "rows": chart_rows}, open(chart_json, "w"))
    subprocess.run([args.chart, "--json", chart_json, "--rows", "rows", "--category", "matrix", "--series", "series",
                    "--value", "MiB", "--log", "--y-label", "step peak MiB (VmHWM - VmRSS before)", "--title",
                    f"DKM forward+backward peak memory: edkm vs coremltools ({args.dtype}, {args.bits} bits"
                    f"{f', shapes / {scale}' if scale > 1 else ''})", "--out", args.out + ".svg"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
