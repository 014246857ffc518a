#!/usr/bin/env python3
"""The peers benchmark runs end to end on a tiny shape and edkm's dense engine computes what
coremltools computes.

    check_peers.py ABLATION_BINARY CHART_BINARY WORK_DIR

Runs benchmarks/peers/run_peers.py on q_proj / 64 (64x64); checks that every edkm row and
coremltools' default row were measured, that coremltools' eDKM options are either measured or
reported with a reason, that in fp32 edkm's dense W_soft agrees with coremltools' within 1e-5
(the parity test's tolerance) and with coremltools' fp64 result within 1e-6 (dL/dW 1e-5), and that the Markdown and SVG were written (the SVG parses).
Exit code 77 (ctest: skipped) when coremltools or safetensors cannot be imported.
"""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

try:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools.optimize.torch  # noqa: F401
        import safetensors  # noqa: F401
except Exception as e:  # pragma: no cover - environment dependent
    print(f"SKIP: coremltools / safetensors not importable ({e})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ablation, chart, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    out = os.path.join(work, "peers")
    subprocess.run([sys.executable, os.path.join(HERE, "..", "..", "benchmarks", "peers", "run_peers.py"),
                    "--ablation", ablation, "--chart", chart, "--scale", "64", "--matrices", "q_proj",
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    doc = json.load(open(out + ".json"))
    ok = True

    def check(cond, what):
        nonlocal ok
        print(f"{'PASS' if cond else 'FAIL'} {what}")
        ok = ok and cond

    rows = doc["rows"]
    ours = {r["config"] for r in rows if r["side"] == "edkm" and r["dtype"] == "bf16"}
    check(ours == {"dense", "+marshaling", "table", "streaming"}, f"edkm rows {sorted(ours)}")
    theirs = {r["config"]: r for r in rows if r["side"] == "coremltools" and r["dtype"] == "bf16"}
    check(theirs.get("default", {}).get("runnable") is True, "coremltools default measured")
    check(all(r["runnable"] or r.get("reason") for r in theirs.values()) and len(theirs) == 4,
          "coremltools' eDKM options measured or reported with a reason")
    fp32 = [r for r in rows if r["side"] == "edkm" and r["dtype"] == "fp32"]
    check(len(fp32) == 1 and fp32[0]["agreement_soft"] <= 1e-5,
          f"fp32 dense W_soft within 1e-5 of coremltools ({fp32[0]['agreement_soft'] if fp32 else None})")
    ref32 = [r for r in rows if r["side"] == "coremltools" and r["dtype"] == "fp32"]
    check(len(fp32) == 1 and fp32[0].get("exact_soft", 1) <= 1e-6 and fp32[0].get("exact_dweight", 1) <= 1e-5
          and len(ref32) == 1 and "exact_soft" in ref32[0],
          f"fp32 rows compared with coremltools in fp64: dense W_soft {fp32[0].get('exact_soft') if fp32 else None}, "
          f"dL/dW {fp32[0].get('exact_dweight') if fp32 else None}")
    check(all(r["step_peak_bytes"] >= 0 and r["step_seconds"] > 0 for r in rows if r["runnable"]),
          "every measured row has a step peak and a time")
    check("| edkm | table |" in open(out + ".md").read(), "Markdown written")
    check(ET.parse(out + ".svg").getroot().tag.endswith("svg"), "SVG chart parses")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
