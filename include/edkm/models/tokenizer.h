#pragma once
// Tokenizers for the LLaMA example: a byte-level tokenizer (no file needed: ids 0..255 are the
// bytes, 256 BOS, 257 EOS), SentencePiece models (LLaMA's tokenizer.model) through
// libsentencepiece when edkm was built with it (EDKM_WITH_SENTENCEPIECE), and the byte-level BPE
// of the GPT-2 family (Llama 3, SmolLM, ...) from a Hugging Face tokenizer.json or GGUF metadata,
// pre-tokenized with PCRE2 when edkm was built with it (EDKM_WITH_PCRE2).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edkm/export.h"

namespace edkm {

/// Text <-> token ids.
///
/// Example:
///   auto tok = edkm::load_tokenizer("/models/llama-2-7b-hf");  // its tokenizer.model
///   std::vector<int64_t> ids = tok->encode("Hello world");
///   std::string text = tok->decode(ids);
class EDKM_API Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Token ids of `text` (no BOS/EOS added).
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  /// Text of `ids`; throws c10::Error on an id outside the vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  /// Beginning / end of sequence ids (-1 when the model has none).
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  /// A short description ("bytes", "sentencepiece:/path/tokenizer.model (32000 pieces)").
  virtual std::string name() const = 0;
};

/// Byte-level: vocabulary 258, exact round trip for any byte string.
class EDKM_API ByteTokenizer : public Tokenizer {
 public:
  std::vector<int64_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return 258; }
  int64_t bos_id() const override { return 256; }
  int64_t eos_id() const override { return 257; }
  std::string name() const override { return "bytes"; }
};

/// A SentencePiece model file (tokenizer.model of LLaMA checkpoints).
class EDKM_API SentencePieceTokenizer : public Tokenizer {
 public:
  /// Loads `model_file`; throws c10::Error when it is not a SentencePiece model or edkm was built
  /// without SentencePiece.
  explicit SentencePieceTokenizer(const std::string& model_file);
  ~SentencePieceTokenizer() override;
  std::vector<int64_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  int64_t bos_id() const override;
  int64_t eos_id() const override;
  std::string name() const override;

 private:
  struct State;
  std::unique_ptr<State> state_;
  std::string path_;
};

namespace detail {
struct BpeSpec;
}

/// A byte-level BPE vocabulary as GGUF metadata holds it (tokenizer.ggml.model == "gpt2").
///
/// Example (what a GGUF loader fills in):
///   edkm::BpeVocab v;
///   v.tokens = ...;       // tokenizer.ggml.tokens: id -> token in GPT-2's byte-to-unicode form
///   v.merges = ...;       // tokenizer.ggml.merges: "a b", rank = position
///   v.token_types = ...;  // tokenizer.ggml.token_type (may stay empty: all normal)
///   v.bos_id = 1; v.eos_id = 2;
///   v.pre = "smollm";     // tokenizer.ggml.pre
///   v.source = path;      // named in errors
///   edkm::BpeTokenizer tok(v);
struct BpeVocab {
  /// Token texts by id, in GPT-2's byte-to-unicode form ("Ġthe").
  std::vector<std::string> tokens;
  /// Merges "left right" by rank (first = applied first).
  std::vector<std::string> merges;
  /// llama.cpp token types by id: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused,
  /// 6 byte. Control and user-defined tokens are matched whole before pre-tokenization. Empty: all
  /// normal.
  std::vector<int32_t> token_types;
  /// Beginning / end of sequence ids (-1: none).
  int64_t bos_id = -1, eos_id = -1;
  /// Pre-tokenizer name (tokenizer.ggml.pre), as llama.cpp defines them: "gpt2", "llama-bpe" (also
  /// "llama3", "llama-v3"; whole-word tokens before merges, as Llama 3), "smollm" (digits one by
  /// one, then GPT-2's regex). Others, and none, are refused by name.
  std::string pre;
  /// Where the vocabulary came from (a .gguf path), named in errors.
  std::string source = "<BpeVocab>";
};

/// Byte-level BPE (GPT-2, Llama 3, SmolLM, ...): added and special tokens matched whole, then the
/// model's pre-tokenizer regexes (PCRE2, Unicode properties), GPT-2's byte-to-unicode mapping and
/// merges by rank. Any byte string round trips: decode(encode(x)) == x (invalid UTF-8 included)
/// when the vocabulary has a token for every byte and the pre-tokenizer removes nothing and adds
/// no prefix space. A byte without a token becomes the unknown token when the model has one, else
/// it is dropped, as Hugging Face and llama.cpp do (SmolLM2 lacks 21 bytes, 0xC0, 0xC1 and
/// 0xF5..0xFF that UTF-8 never uses and a few control characters; see missing_bytes()).
/// Encoding is thread-safe.
///
/// Example:
///   auto tok = edkm::BpeTokenizer::from_tokenizer_json("/models/SmolLM2-135M/tokenizer.json");
///   std::vector<int64_t> ids = tok->encode("<|im_start|>user\nHello!");  // special token kept whole
///   std::string text = tok->decode(ids);
class EDKM_API BpeTokenizer : public Tokenizer {
 public:
  /// From GGUF metadata; throws c10::Error naming `vocab.source` and the problem (unknown
  /// pre-tokenizer, merge of an unknown token, id beyond the vocabulary, ...).
  explicit BpeTokenizer(const BpeVocab& vocab);
  /// From a Hugging Face tokenizer.json (BPE model; Split / ByteLevel / Digits pre-tokenizers;
  /// ByteLevel decoder). BOS / EOS come from tokenizer_config.json beside it when present.
  /// Anything it does not implement (a normalizer, byte_fallback, lstrip, ...) is refused by name.
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::string& path);
  ~BpeTokenizer() override;

  std::vector<int64_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  int64_t bos_id() const override;
  int64_t eos_id() const override;
  std::string name() const override;
  /// The id of a token given in its vocabulary form ("Ġthe", "<|im_start|>"), or -1.
  int64_t token_to_id(const std::string& token) const;
  /// The bytes the vocabulary has no token for (ascending): they do not round trip.
  std::vector<uint8_t> missing_bytes() const;

  /// This tokenizer as a Hugging Face tokenizer.json (the `tokenizers` library and transformers
  /// load it and give the same ids): the BPE model (vocab, merges as pairs, byte_fallback false,
  /// ignore_merges as the pre-tokenizer needs), added tokens (GGUF control tokens special, user
  /// defined ones not), the pre-tokenizer exactly as edkm runs it (GGUF "gpt2": ByteLevel with
  /// GPT-2's regex; "smollm": Digits(individual_digits) then ByteLevel; "llama-bpe": Llama 3's
  /// Split then ByteLevel without regex; from a tokenizer.json: its own), the ByteLevel decoder, no
  /// normalizer and no post-processor (encode adds no BOS / EOS, as edkm's). A token text held by
  /// several ids is written once, under the id encode gives it (the others cannot be decoded by
  /// Hugging Face). Throws c10::Error when a token is not valid UTF-8 (JSON cannot hold it).
  ///
  /// Example:
  ///   auto tok = edkm::load_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
  ///   std::string json = dynamic_cast<edkm::BpeTokenizer&>(*tok).to_tokenizer_json();
  std::string to_tokenizer_json() const;
  /// The tokenizer_config.json that goes beside it: bos_token / eos_token / unk_token by text,
  /// tokenizer_class PreTrainedTokenizerFast, clean_up_tokenization_spaces false (decode gives the
  /// bytes back unchanged).
  std::string to_tokenizer_config_json() const;

 private:
  explicit BpeTokenizer(const detail::BpeSpec& spec);
  const detail::BpeSpec& spec() const;
  struct State;
  std::unique_ptr<State> state_;
};

/// Whether edkm was built with PCRE2 (BpeTokenizer works).
EDKM_API bool has_pcre2();

/// Whether SentencePieceTokenizer works: edkm was built with libsentencepiece and its module
/// (libedkm_sentencepiece.so, loaded on first use; $EDKM_SENTENCEPIECE_MODULE overrides where) loads.
EDKM_API bool has_sentencepiece();
/// Where the SentencePiece module was loaded from, or why it could not be.
EDKM_API std::string sentencepiece_status();
/// Whether train_sentencepiece works (libsentencepiece_train was found).
EDKM_API bool has_sentencepiece_trainer();

/// Trains a SentencePiece model on a text file (one sentence per line) and writes
/// `<model_prefix>.model` and `.vocab`. `model_type`: "bpe" (as LLaMA) or "unigram".
/// Throws c10::Error when the trainer is unavailable or fails.
EDKM_API void train_sentencepiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                                  const std::string& model_type = "bpe");

/// The tokenizer a GGUF file carries (tokenizer.ggml.*): byte-level BPE ("gpt2" models: tokens,
/// merges, token types, bos/eos, pre-tokenizer name). Throws c10::Error naming the file for any
/// other tokenizer model (e.g. "llama", SentencePiece in GGUF) or missing metadata.
///
/// Example:
///   auto tok = edkm::load_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
EDKM_API std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path);

/// Writes `tok` as the tokenizer files of a Hugging Face directory (created if missing):
/// tokenizer.json and tokenizer_config.json (BpeTokenizer::to_tokenizer_json /
/// to_tokenizer_config_json), each written atomically. transformers' AutoTokenizer.from_pretrained(dir)
/// and BpeTokenizer::from_tokenizer_json(dir + "/tokenizer.json") then encode as `tok` does.
///
/// Example:
///   auto tok = edkm::load_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
///   edkm::save_hf_tokenizer(dynamic_cast<const edkm::BpeTokenizer&>(*tok), "out/smollm2-hf");
EDKM_API void save_hf_tokenizer(const BpeTokenizer& tok, const std::string& dir);

/// "bytes" -> ByteTokenizer; a GGUF file -> load_gguf_tokenizer; a directory -> its
/// tokenizer.model (SentencePiece) or else its tokenizer.json (byte-level BPE); a *.json file ->
/// BpeTokenizer; another file -> SentencePiece.
EDKM_API std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace edkm
