#pragma once
// Tokenizers for the LLaMA example: a byte-level tokenizer (no file needed: ids 0..255 are the
// bytes, 256 BOS, 257 EOS) and SentencePiece models (LLaMA's tokenizer.model) through
// libsentencepiece when edkm was built with it (EDKM_WITH_SENTENCEPIECE).
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

/// Whether edkm was built with libsentencepiece (SentencePieceTokenizer works).
EDKM_API bool has_sentencepiece();
/// Whether train_sentencepiece works (libsentencepiece_train was found).
EDKM_API bool has_sentencepiece_trainer();

/// Trains a SentencePiece model on a text file (one sentence per line) and writes
/// `<model_prefix>.model` and `.vocab`. `model_type`: "bpe" (as LLaMA) or "unigram".
/// Throws c10::Error when the trainer is unavailable or fails.
EDKM_API void train_sentencepiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                                  const std::string& model_type = "bpe");

/// "bytes" -> ByteTokenizer; a directory -> its tokenizer.model; a file -> that SentencePiece model.
EDKM_API std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace edkm
