"""Checks what edkm_llama_compress wrote (argument: its test directory with out/ and hf/).

Default: the compressed model opens with the Python `safetensors` package, the decoder's Linear
weights are 3-bit palettes and the embedding/head 8-bit ones, and results.json holds the seven
compared rows. With --transformers: Hugging Face `transformers` loads the exported hf/
and hfc/ (--save-hf-compressed) checkpoints and reproduces edkm's logits (exit 77 when transformers is not installed).
"""
import json
import sys


def main() -> int:
    root = sys.argv[1]
    if "--transformers" in sys.argv:
        try:
            import torch
            import transformers
            from safetensors.torch import load_file
        except ImportError as e:
            print(f"skipped: {e}")
            return 77
        worst = 0.0
        for sub in ("hf", "hfc"):  # --save-hf (uncompressed) and --save-hf-compressed
            model = transformers.LlamaForCausalLM.from_pretrained(f"{root}/{sub}", torch_dtype=torch.float32).eval()
            ref = load_file(f"{root}/{sub}/edkm_logits.safetensors")
            with torch.no_grad():
                logits = model(ref["tokens"]).logits
            diff = (logits - ref["logits"]).abs().max().item() / ref["logits"].abs().max().item()
            print(f"{sub}: transformers vs edkm logits: max relative difference {diff:.2e}")
            worst = max(worst, diff)
            if sub == "hfc":  # the compressed export holds the palettes' values: at most 2^3 per decoder Linear
                distinct = torch.unique(model.model.layers[0].mlp.down_proj.weight).numel()
                print(f"hfc: down_proj holds {distinct} distinct values")
                if distinct > 8:
                    return 1
        return 0 if worst < 1e-4 else 1
    try:
        from safetensors import safe_open
    except ImportError as e:
        print(f"skipped: {e}")
        return 77
    with safe_open(f"{root}/out/model.edkm.safetensors", framework="numpy") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["edkm.format"] == "edkm-palette/1", meta
    palettes = {k[len("edkm.palette."):]: json.loads(v) for k, v in meta.items() if k.startswith("edkm.palette.")}
    assert palettes["model.layers.0.self_attn.q_proj.weight"]["bits"] == 3, palettes
    assert palettes["model.layers.0.mlp.down_proj.weight"]["bits"] == 3, palettes
    assert palettes["model.embed_tokens.weight"]["bits"] == 8, palettes
    assert palettes["lm_head.weight"]["bits"] == 8, palettes
    assert len(palettes) == 7 + 2, sorted(palettes)
    assert "model.norm.weight" in names and "lm_head.weight.indices" in names, sorted(names)
    results = json.load(open(f"{root}/out/results.json"))
    methods = [r["method"] for r in results["results"]]
    assert results["reloaded_matches"], results
    assert len(methods) == 7 and methods[-1].startswith("3-bit DKM"), methods  # fp32, RTN, k-means, control x 3, DKM
    assert all(r["perplexity"] > 1 for r in results["results"]), results
    print("export OK:", len(palettes), "palettes;", ", ".join(f"{r['method']}: {r['perplexity']:.2f}" for r in results["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
