#!/usr/bin/env python3
"""edkm's LLaMA-from-GGUF against Hugging Face transformers on the real model.

transformers loads SmolLM2-135M-Instruct.Q4_1.gguf itself (from_pretrained(dir, gguf_file=...),
fp32, dequantized by the gguf package) and tokenizes two English passages into 256-token
sequences; edkm (`edkm_gguf_cli logits`) loads the same file with load_gguf_llama and computes the
logits of the same ids. Checked:
  * logits: max |edkm - transformers| / max |transformers| <= 1e-4 on each sequence;
  * perplexity (next-token cross entropy over both sequences) equal to 4 significant digits;
  * export: `edkm_gguf_cli export-hf` writes config.json + model.safetensors, transformers
    from_pretrained(that dir) gives the same logits (<= 1e-4);
  * its tokenizer.json + tokenizer_config.json: AutoTokenizer.from_pretrained(that dir) (local
    files only) and `tokenizers` on the tokenizer.json encode the texts of
    tests/parity/test_bpe_parity.py (English, Unicode, code, whitespace, digits, <|im_start|>
    tokens, random strings; tens of kB) to exactly the ids of edkm's own tokenizer of the GGUF
    (`edkm_bpe_cli --gguf`), decode them to the same text, and name the same BOS / EOS; edkm
    reading the written tokenizer.json back gives the same ids too. The ids are edkm's (SmolLM's
    Digits + ByteLevel pre-tokenizer), not transformers' GGUF conversion (ByteLevel only).
Exit 77 (skipped) when the model file or a Python package is missing, saying which.

Usage: check_gguf_parity.py --cli BUILD/tests/edkm_gguf_cli --bpe-cli BUILD/tests/edkm_bpe_cli
                            --model PATH.gguf --work DIR
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

# Local files only (never the Hugging Face hub), and no progress bars in the logs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

TOL = 1e-4
PASSAGES = [
    # Two passages of plain English, each well over 256 tokens.
    ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a goldsmith "
     "from Mainz, combined several existing technologies into a system for producing books in quantity. "
     "Movable type had been invented earlier in East Asia, but the alphabetic scripts of Europe, with their "
     "small number of distinct characters, made the approach especially practical. Gutenberg developed a hand "
     "mould for casting uniform pieces of metal type, an oil-based ink that adhered to metal, and a press "
     "adapted from those used to make wine and paper. The result was a process that could turn out hundreds "
     "of identical pages in the time a scribe needed to copy a few. Within fifty years, presses were operating "
     "in more than two hundred cities across the continent, and millions of volumes had been printed. Prices "
     "fell, literacy spread, and ideas travelled faster than ever before. Scholars could compare identical "
     "copies of a text, which encouraged the correction of errors and the growth of a shared body of knowledge. "
     "Religious reformers used pamphlets to reach ordinary readers, while governments and universities "
     "discovered new ways to record laws, teach students, and announce decisions. Newspapers appeared in the "
     "seventeenth century, carrying reports of trade, war, and politics to merchants and citizens alike. Over "
     "the following centuries, improvements in paper making, steam power, and typesetting machines made "
     "printing cheaper still, until books and newspapers became part of daily life for most people."),
    ("A small garden can feed a family surprisingly well if it is planned with care. The first step is to "
     "choose a site that receives at least six hours of direct sunlight each day, because most vegetables need "
     "plenty of light to grow and ripen. Next, test the soil: a simple kit will show whether it is acidic or "
     "alkaline and whether it lacks nitrogen, phosphorus, or potassium. Adding compost improves almost any soil, "
     "since it feeds the organisms that keep the ground loose and fertile. Raised beds are useful where the "
     "native soil is poor or drains badly, and they warm up earlier in spring. When deciding what to plant, "
     "start with crops that are easy and productive, such as lettuce, beans, tomatoes, courgettes, and herbs. "
     "Sow seeds at the depth recommended on the packet, water them gently, and keep the bed free of weeds while "
     "the seedlings are young. Later in the season, a layer of mulch will hold moisture in the soil and reduce "
     "the need for watering. Rotating crops from year to year helps prevent diseases and pests from building "
     "up, and planting flowers among the vegetables attracts bees and other insects that pollinate them. Keep "
     "notes of what you planted, when, and how well it did; after a few seasons these records become the most "
     "valuable guide a gardener can have, better than any book written for a different climate."),
]


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def check_exported_tokenizer(args, hf_dir, result, gguf_tok):
    """The exported tokenizer files against edkm's tokenizer of the GGUF; returns failures."""
    import tokenizers
    from transformers import AutoTokenizer
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
    from test_bpe_parity import run_cli, samples
    failures = []
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(hf_dir, name)):
            return [f"exported directory: no {name}"]
    texts = samples()
    texts_file = os.path.join(args.work, "tokenizer_texts.json")
    with open(texts_file, "w", encoding="utf-8") as f:
        json.dump(texts, f)
    edkm_gguf = run_cli(args.bpe_cli, "--gguf", args.model, texts_file)
    edkm_json = run_cli(args.bpe_cli, "--tokenizer-json", os.path.join(hf_dir, "tokenizer.json"), texts_file)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    raw = tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    want = edkm_gguf["ids"]
    n_chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in want)
    bad = {"transformers ids": 0, "transformers ids (default call)": 0, "transformers decode": 0,
           "tokenizers ids": 0, "edkm from tokenizer.json": 0}
    round_trips = 0
    # transformers' own GGUF tokenizer (ByteLevel only, no Digits): for comparison, not a check.
    gguf_differs = sum(gguf_tok(t, add_special_tokens=False)["input_ids"] != want[i] for i, t in enumerate(texts))
    for i, text in enumerate(texts):
        got = {"transformers ids": hf_tok(text, add_special_tokens=False)["input_ids"],
               "transformers ids (default call)": hf_tok(text)["input_ids"],
               "tokenizers ids": raw.encode(text, add_special_tokens=False).ids,
               "edkm from tokenizer.json": edkm_json["ids"][i]}
        for label, ids in got.items():
            if ids != want[i]:
                bad[label] += 1
                if bad[label] <= 3:
                    print(f"exported tokenizer, {label}: text {i} differs: {text[:80]!r}\n"
                          f"  got  {ids[:40]}\n  edkm {want[i][:40]}")
        decoded = hf_tok.decode(want[i], skip_special_tokens=False)
        if decoded != edkm_gguf["decoded"][i]:
            bad["transformers decode"] += 1
            if bad["transformers decode"] <= 3:
                print(f"exported tokenizer: decode of text {i} differs: {decoded[:80]!r} vs "
                      f"{edkm_gguf['decoded'][i][:80]!r}")
        round_trips += decoded == text
    print(f"exported tokenizer: {len(texts)} texts, {n_chars} characters ({n_bytes} bytes), {n_tokens} tokens; "
          + ", ".join(f"{label}: {len(texts) - b} equal" for label, b in bad.items())
          + f"; transformers' decode gives the text back on {round_trips} (the others hold bytes SmolLM2 has "
          f"no token for); transformers' own tokenizer of the GGUF differs on {gguf_differs} (whitespace before "
          "digits)")
    for label, b in bad.items():
        if b:
            failures.append(f"exported tokenizer: {label} differ from edkm's on {b} of {len(texts)} texts")
    specials = {"bos": (hf_tok.bos_token_id, edkm_gguf["bos_id"]), "eos": (hf_tok.eos_token_id, edkm_gguf["eos_id"])}
    for which, (hf_id, edkm_id) in specials.items():
        print(f"exported tokenizer: {which} id transformers {hf_id}, edkm {edkm_id}")
        if hf_id != edkm_id:
            failures.append(f"exported tokenizer: {which} id {hf_id} vs edkm's {edkm_id}")
    result.update(tokenizer_texts=len(texts), tokenizer_chars=n_chars, tokenizer_bytes=n_bytes,
                  tokenizer_tokens=n_tokens, tokenizer_mismatches=bad, tokenizer_decode_round_trips=round_trips, tokenizer_gguf_transformers_differs=gguf_differs)
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe-cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    if not os.path.isfile(args.model):
        skip(f"{args.model} is missing (scripts/env.sh fetches it unless EDKM_SKIP_MODELS=1)")
    try:
        import torch
        import gguf  # noqa: F401  (transformers reads GGUF through it)
        import transformers
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        skip(f"{e} (pip install torch gguf transformers accelerate safetensors)")
    os.makedirs(args.work, exist_ok=True)
    torch.manual_seed(0)
    model_dir, model_file = os.path.split(os.path.abspath(args.model))

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=model_file, dtype=torch.float32)
    ref_model.eval()
    hf_load_s = time.time() - t0
    ids = []
    for text in PASSAGES:
        seq = tok(text)["input_ids"]
        if len(seq) < args.seq_len:
            print(f"FAIL: a passage has only {len(seq)} tokens")
            return 1
        ids.append(seq[:args.seq_len])
    tokens = torch.tensor(ids, dtype=torch.int64)
    tokens_path = os.path.join(args.work, "tokens.safetensors")
    save_file({"tokens": tokens}, tokens_path)

    def perplexity(logits):
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                                 tokens[:, 1:].reshape(-1))
        return math.exp(loss.item())

    with torch.no_grad():
        ref = ref_model(tokens).logits.float()
    out_path = os.path.join(args.work, "edkm_logits.safetensors")
    t0 = time.time()
    subprocess.run([args.cli, "logits", args.model, tokens_path, out_path], check=True)
    edkm_s = time.time() - t0
    got = load_file(out_path)
    logits = got["logits"]

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    failures = []
    result = {"model": model_file, "transformers": transformers.__version__, "seq_len": args.seq_len,
              "sequences": []}
    for i in range(tokens.shape[0]):
        r = rel(logits[i], ref[i])
        agree = (logits[i].argmax(-1) == ref[i].argmax(-1)).double().mean().item()
        result["sequences"].append({"max_rel_logit_diff": r, "argmax_agreement": agree})
        print(f"sequence {i}: max relative logit difference {r:.3e}, argmax agreement {agree:.4f}")
        if not r <= TOL:
            failures.append(f"sequence {i}: logits differ by {r:.3e} > {TOL}")
    ppl_edkm = math.exp(got["loss"].item())
    ppl_ref = perplexity(ref)
    ppl_edkm_from_logits = perplexity(logits)
    result.update(perplexity_edkm=ppl_edkm, perplexity_transformers=ppl_ref)
    print(f"perplexity: edkm {ppl_edkm:.6f} (from its logits in fp64: {ppl_edkm_from_logits:.6f}), "
          f"transformers {ppl_ref:.6f}")
    if f"{ppl_edkm:.4g}" != f"{ppl_ref:.4g}" or abs(ppl_edkm - ppl_ref) / ppl_ref > 5e-5:
        failures.append(f"perplexity {ppl_edkm:.6f} vs {ppl_ref:.6f} differ in 4 significant digits")

    # edkm writes a Hugging Face directory from the GGUF; transformers reads it.
    hf_dir = os.path.join(args.work, "hf")
    subprocess.run([args.cli, "export-hf", args.model, hf_dir], check=True)
    exported = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    exported.eval()
    with torch.no_grad():
        exp_logits = exported(tokens).logits.float()
    r_exp = rel(exp_logits, ref)
    r_exp_edkm = rel(exp_logits, logits)
    result.update(export_max_rel_vs_transformers_gguf=r_exp, export_max_rel_vs_edkm=r_exp_edkm)
    print(f"exported directory: max relative logit difference {r_exp:.3e} vs transformers on the GGUF, "
          f"{r_exp_edkm:.3e} vs edkm")
    if not r_exp <= TOL:
        failures.append(f"exported directory: logits differ by {r_exp:.3e} > {TOL}")
    failures += check_exported_tokenizer(args, hf_dir, result, tok)
    print(f"times: transformers GGUF load {hf_load_s:.1f} s, edkm CLI (load + forward) {edkm_s:.1f} s")
    with open(os.path.join(args.work, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("OK: edkm matches transformers on", model_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
