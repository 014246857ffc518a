#!/usr/bin/env python3
"""edkm against Hugging Face transformers on a real GGUF model, side by side in one run, on CPU.

    python benchmarks/peers/gguf_vs_transformers.py --cli build/tests/edkm_gguf_cli \
        --model ~/.cache/edkm/models/SmolLM2-135M-Instruct.Q4_1.gguf --out benchmarks/results/gguf_smollm2_cpu

Measured, each side in its own process (so that peaks do not mix), same thread count:
  * load: GGUF file -> model ready for a forward in fp32 (edkm: load_gguf_llama; transformers:
    AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), which dequantizes with the gguf
    package); wall seconds and the process's peak resident memory after loading;
  * forward: one sequence of --ctx tokens (ids from transformers' tokenizer of the same file, the
    same ids for both), no gradient, timed --repeats times after the load; best seconds and
    tokens/s.
The two sides alternate for --rounds rounds; per side the fastest load and forward are reported.
Writes OUT.json and OUT.md (with this command line).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

# Local files only (never the Hugging Face hub), and no progress bars in the logs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

TEXT = ("Language models read text as a sequence of tokens and predict, at each position, the next one. "
        "To compare two implementations fairly they must read the same tokens with the same weights. ")


def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def transformers_side(model, tokens_path, repeats, threads):
    """Runs in a child process: prints a JSON line with load and forward times."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    d, f = os.path.split(os.path.abspath(model))
    t0 = time.perf_counter()
    rss_before = rss_mb()
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    m.eval()
    load_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    tokens = load_file(tokens_path)["tokens"]
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            m(tokens)
            times.append(time.perf_counter() - t0)
    times.sort()
    n_params = sum(p.numel() for p in m.parameters())
    print(json.dumps({"load_s": load_s, "load_peak_rss_mb": peak, "rss_before_load_mb": rss_before,
                      "model_fp32_mb": n_params * 4 / 2**20, "forward_s": times,
                      "forward_median_s": times[len(times) // 2], "tokens": tokens.numel(),
                      "threads": torch.get_num_threads()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        transformers_side(args.model, args.child[0], args.repeats, args.threads)
        return 0

    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = []
    while len(ids) < args.ctx:
        ids += tok(TEXT)["input_ids"]
    work = tempfile.mkdtemp(prefix="edkm_gguf_bench_")
    tokens_path = os.path.join(work, "tokens.safetensors")
    save_file({"tokens": torch.tensor([ids[:args.ctx]], dtype=torch.int64)}, tokens_path)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    edkm_json = os.path.join(work, "edkm.json")
    runs = {"edkm": [], "transformers": []}
    # The sides alternate for --rounds rounds (the machine may be shared: both see the same load);
    # per side, the fastest load and the fastest forward over all rounds are reported.
    for _ in range(args.rounds):
        subprocess.run([args.cli, "bench", args.model, tokens_path, edkm_json, str(args.repeats)], check=True,
                       env=env)
        with open(edkm_json) as fh:
            runs["edkm"].append(json.load(fh))
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cli", args.cli, "--model", args.model,
                              "--out", args.out, "--repeats", str(args.repeats), "--threads", str(args.threads),
                              "--child", tokens_path, "-"], check=True, env=env, capture_output=True, text=True)
        runs["transformers"].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def summary(rs):
        best = dict(min(rs, key=lambda r: r["load_s"]))
        best["forward_best_s"] = min(min(r["forward_s"]) for r in rs)
        best["forward_tokens_per_s"] = best["tokens"] / best["forward_best_s"]
        best["rounds"] = rs
        return best

    edkm, hf = summary(runs["edkm"]), summary(runs["transformers"])

    command = " ".join(["python", "benchmarks/peers/gguf_vs_transformers.py"] + sys.argv[1:])
    result = {"model": f, "ctx": args.ctx, "repeats": args.repeats, "rounds": args.rounds, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
              "transformers": transformers.__version__, "command": command, "edkm": edkm, "transformers_side": hf,
              "load_ratio_edkm_over_transformers": edkm["load_s"] / hf["load_s"],
              "forward_speed_ratio_edkm_over_transformers": edkm["forward_tokens_per_s"] / hf["forward_tokens_per_s"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=2)
    md = [f"# GGUF load and forward: edkm vs transformers ({f}, CPU, fp32)", "",
          f"Machine: {result['machine']}, {args.threads} threads for both; torch {torch.__version__}, "
          f"transformers {transformers.__version__}. One process per side; forward over {args.ctx} tokens "
          f"(batch 1, no gradient); the sides alternate for {args.rounds} rounds of one load and {args.repeats} "
          "forwards each, best load and best forward per side (the machine is shared with other jobs). Load = GGUF file -> fp32 model ready "
          "(transformers dequantizes with the gguf package). Peak RSS = the process's maximum resident set "
          "after loading (it includes the pages of the memory-mapped file read so far); load added = peak - RSS "
          "before loading, to compare with the fp32 model itself.", "",
          f"Command: `{command}`", "",
          "| side | load s | RSS before load MiB | peak RSS after load MiB | load added MiB | fp32 model MiB | "
          "forward s (best) | forward tokens/s |",
          "|---|---|---|---|---|---|---|---|"]
    for name, s in (("edkm", edkm), ("transformers", hf)):
        md.append(f"| {name} | {s['load_s']:.2f} | {s['rss_before_load_mb']:.0f} | {s['load_peak_rss_mb']:.0f} | "
                  f"{s['load_peak_rss_mb'] - s['rss_before_load_mb']:.0f} | {s['model_fp32_mb']:.0f} | "
                  f"{s['forward_best_s']:.3f} | {s['forward_tokens_per_s']:.0f} |")
    md += ["", f"edkm / transformers: load time x{result['load_ratio_edkm_over_transformers']:.2f} (below 1: edkm faster), "
               f"forward speed x{result['forward_speed_ratio_edkm_over_transformers']:.2f} "
               "(above 1: edkm faster)."]
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
