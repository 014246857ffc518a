#!/usr/bin/env python3
"""The benchmarks' SVG charts are valid XML with the bars they should have.

Renders a small table with edkm_bench_chart (linear and log scale, a missing value, a zero on the
log axis, characters that need escaping) and parses the SVG with xml.etree.
    check_svg_chart.py CHART_TOOL WORK_DIR
"""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def main():
    tool, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    rows = [
        {"matrix": "q_proj", "config": "table", "ratio": 1600.0},
        {"matrix": "q_proj", "config": "streaming <fused> & co", "ratio": 250000.0},
        {"matrix": "up_proj", "config": "table", "ratio": 4100.0},
        {"matrix": "up_proj", "config": "streaming <fused> & co", "ratio": 0.0},
        {"matrix": "down_proj", "config": "table", "ratio": 3.5},
        {"matrix": "down_proj", "config": "ignored", "ratio": "not a number"},
    ]
    doc = {"machine": "test machine \"quoted\"", "rows": rows}
    path = os.path.join(work, "table.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    ok = True
    for log in (False, True):
        svg = os.path.join(work, f"chart_{'log' if log else 'linear'}.svg")
        cmd = [tool, "--json", path, "--rows", "rows", "--category", "matrix", "--series", "config", "--value",
               "ratio", "--title", "ratio <vs> dense & more", "--out", svg] + (["--log"] if log else [])
        subprocess.run(cmd, check=True)
        root = ET.parse(svg).getroot()
        assert root.tag == NS + "svg", root.tag
        bars = [r for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
        texts = "".join(t.text or "" for t in root.iter(NS + "text"))
        # 5 numeric values; on the log axis the zero has no bar
        want = 4 if log else 5
        good = len(bars) == want and "ratio <vs> dense & more" in texts and 'test machine "quoted"' in texts
        for b in bars:
            good = good and float(b.get("height")) >= 0 and float(b.get("width")) > 0
        print(f"{'PASS' if good else 'FAIL'} {os.path.basename(svg)}: {len(bars)} bars (want {want})")
        ok = ok and good
    # a bad input is refused with a message, not a crash
    bad = subprocess.run([tool, "--json", path, "--category", "matrix", "--value", "ratio", "--out",
                          os.path.join(work, "bad.svg")], capture_output=True, text=True)
    good = bad.returncode == 1 and "not a JSON array" in bad.stderr
    print(f"{'PASS' if good else 'FAIL'} rows that are not an array are refused: {bad.stderr.strip()}")
    ok = ok and good
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
