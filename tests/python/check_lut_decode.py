#!/usr/bin/env python3
"""edkm_bench_lut_inference decodes models with random weights end to end (--decode-random).

    check_lut_decode.py LUT_INFERENCE_BINARY WORK_DIR

- SmolLM2's shapes with 2 layers: fp32 and bf16 dense rows, 3- and 4-bit packed rows; each with
  tokens/s > 0, a bound > 0 and bytes read per step that follow from the shapes (bf16 half of fp32;
  packed rows at most bits/32 of fp32 plus their LUTs and padding); the tied embedding is read.
- No GEMV was asked for (--shapes ''): the JSON has none, the Markdown has no GEMV table, no chart.
- --decode-graphs both: every row twice, the second through the CUDA graphs' position steps.
- Bad arguments are refused with a message naming them.
Needs only Python's standard library.
"""
import json
import os
import subprocess
import sys


def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def main():
    binary, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    out = os.path.join(work, "decode")
    r = run([binary, "--shapes", "", "--decode-random", "smollm2", "--random-layers", "2", "--bits", "3,4",
             "--decode-tokens", "4", "--prompt-tokens", "3", "--min-time", "0.01", "--threads", "1", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.load(open(out + ".json"))
    assert doc["gemv"] == [], doc["gemv"]
    rows = {row["weights"]: row for row in doc["random_decode"]}
    assert list(rows) == ["fp32 dense", "bf16 dense", "3-bit packed, 16 rows per LUT",
                          "4-bit packed, 16 rows per LUT"], list(rows)
    for row in rows.values():
        assert row["model"] == "smollm2" and row["layers"] == 2, row
        assert row["decode_tokens_per_s"] > 0 and row["bound_tokens_per_s"] > 0, row
        # tied embedding: every weight is read (it is the head)
        assert row["bytes_read_per_step"] == row["resident_weight_bytes"], row
    f32 = rows["fp32 dense"]["bytes_read_per_step"]
    norms = (2 * 2 + 1) * 576 * 4  # fp32 norms of 2 layers and the final one
    params = (f32 - norms) // 4
    assert params == 2 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536) + 49152 * 576, params
    assert rows["bf16 dense"]["bytes_read_per_step"] == params * 2 + norms
    for bits in (3, 4):
        packed = rows[f"{bits}-bit packed, 16 rows per LUT"]["bytes_read_per_step"]
        indices = params * bits / 8
        luts = params / 576 / 16 * (2 ** bits) * 4  # generous: one 2^bits LUT per 16 rows of 576
        assert indices < packed - norms < indices + luts + 16 * 20, (bits, packed, indices)
    md = open(out + ".md").read()
    assert "Decode of models with random weights" in md and "| smollm2 | 2 | 3-bit packed" in md, md
    assert "LUT-GEMV us" not in md, "a GEMV table without GEMVs"
    assert not os.path.exists(out + ".svg"), "a chart without GEMVs"

    # --decode-graphs both: each row twice, the second through the position steps (on the CPU
    # without a graph)
    r = run([binary, "--shapes", "", "--decode-random", "smollm2", "--random-layers", "1", "--bits", "3",
             "--decode-dense", "none", "--decode-graphs", "both", "--decode-tokens", "3", "--prompt-tokens", "2",
             "--min-time", "0.01", "--threads", "1", "--out", out + "_graphs"])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.load(open(out + "_graphs.json"))["random_decode"]
    assert [row["step_graphs"] for row in rows] == [False, True], rows
    assert "position steps" in rows[1]["weights"] and rows[1]["decode_tokens_per_s"] > 0, rows[1]

    for args, words in [(["--decode-random", "smollm2", "--decode-graphs", "maybe"], ["--decode-graphs"]),
                        (["--decode-random", "gpt2"], ["--decode-random", "gpt2"]),
                        (["--decode-random", "smollm2", "--decode-dense", "fp8"], ["--decode-dense", "fp8"])]:
        r = run([binary, "--shapes", "", "--out", os.path.join(work, "bad")] + args)
        assert r.returncode != 0, args
        for w in words:
            assert w in r.stdout + r.stderr, (args, w, r.stdout + r.stderr)
    print("ok: random-weight decode rows, bytes read, no GEMV table, bad arguments refused")


if __name__ == "__main__":
    main()
