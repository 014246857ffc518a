#include "edkm/models/tokenizer.h"
#include "edkm/io/gguf.h"

#include <c10/util/Exception.h>
#include "edkm/io/file_io.h"

#include <fstream>
#include <string>

#if defined(EDKM_WITH_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif
#if defined(EDKM_WITH_SENTENCEPIECE_TRAINER)
#include <sentencepiece_trainer.h>
#endif

namespace edkm {

std::vector<int64_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < vocab_size(), "ByteTokenizer: id ", id, " is outside the vocabulary 0..257");
    if (id < 256) out.push_back(static_cast<char>(id));
  }
  return out;
}

#if defined(EDKM_WITH_SENTENCEPIECE)
struct SentencePieceTokenizer::State {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file)
    : state_(std::make_unique<State>()), path_(model_file) {
  const auto status = state_->sp.Load(model_file);
  TORCH_CHECK(status.ok(), "cannot load SentencePiece model ", model_file, ": ", status.ToString());
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = state_->sp.Encode(text, &ids);
  TORCH_CHECK(status.ok(), "SentencePiece encode failed: ", status.ToString());
  return {ids.begin(), ids.end()};
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> narrow;
  narrow.reserve(ids.size());
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < vocab_size(), "SentencePieceTokenizer: id ", id, " is outside the vocabulary of ",
                vocab_size());
    narrow.push_back(static_cast<int>(id));
  }
  std::string out;
  const auto status = state_->sp.Decode(narrow, &out);
  TORCH_CHECK(status.ok(), "SentencePiece decode failed: ", status.ToString());
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return state_->sp.GetPieceSize(); }
int64_t SentencePieceTokenizer::bos_id() const { return state_->sp.bos_id(); }
int64_t SentencePieceTokenizer::eos_id() const { return state_->sp.eos_id(); }
bool has_sentencepiece() { return true; }
#else
struct SentencePieceTokenizer::State {};
SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file) : path_(model_file) {
  TORCH_CHECK(false, "edkm was built without SentencePiece (libsentencepiece-dev): cannot load ", model_file);
}
std::vector<int64_t> SentencePieceTokenizer::encode(const std::string&) const { return {}; }
std::string SentencePieceTokenizer::decode(const std::vector<int64_t>&) const { return {}; }
int64_t SentencePieceTokenizer::vocab_size() const { return 0; }
int64_t SentencePieceTokenizer::bos_id() const { return -1; }
int64_t SentencePieceTokenizer::eos_id() const { return -1; }
bool has_sentencepiece() { return false; }
#endif

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::string SentencePieceTokenizer::name() const {
  return "sentencepiece:" + path_ + " (" + std::to_string(vocab_size()) + " pieces)";
}

#if defined(EDKM_WITH_SENTENCEPIECE_TRAINER)
bool has_sentencepiece_trainer() { return true; }
void train_sentencepiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                         const std::string& model_type) {
  TORCH_CHECK(model_type == "bpe" || model_type == "unigram",
              "train_sentencepiece: model_type must be bpe or unigram, got ", model_type);
  TORCH_CHECK(vocab_size > 3, "train_sentencepiece: vocab_size must exceed 3, got ", vocab_size);
  // The trainer's options are one space-separated string: paths go around it (a path with a space
  // broke --input / --model_prefix), the lines through an iterator and the model back as bytes.
  struct Lines : sentencepiece::SentenceIterator {
    std::ifstream in;
    std::string line;
    bool end = false;
    explicit Lines(const std::string& path) : in(path) { Next(); }
    bool done() const override { return end; }
    void Next() override { end = !std::getline(in, line); }
    const std::string& value() const override { return line; }
    sentencepiece::util::Status status() const override { return {}; }
  } lines(text_file);
  TORCH_CHECK(lines.in.is_open(), "train_sentencepiece: cannot read ", text_file);
  const std::string args = "--vocab_size=" + std::to_string(vocab_size) + " --model_type=" + model_type +
                           " --character_coverage=1.0 --byte_fallback=true --minloglevel=2 --num_threads=1";
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  TORCH_CHECK(status.ok(), "SentencePiece training on ", text_file, " failed: ", status.ToString());
  write_text_file(model_prefix + ".model", model);  // atomic, as every file edkm writes
}
#else
bool has_sentencepiece_trainer() { return false; }
void train_sentencepiece(const std::string& text_file, const std::string&, int64_t, const std::string&) {
  TORCH_CHECK(false, "edkm was built without the SentencePiece trainer: cannot train on ", text_file);
}
#endif

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path) {
  const GgufFile f(path);
  const std::string model = f.get_string_or("tokenizer.ggml.model", "");
  TORCH_CHECK(model == "gpt2", "edkm: ", path, ": the tokenizer is tokenizer.ggml.model '", model,
              "'; edkm reads byte-level BPE ('gpt2') tokenizers from GGUF files (for a SentencePiece model pass its "
              "tokenizer.model)");
  BpeVocab v;
  v.source = path;
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  v.merges = f.get_string_array("tokenizer.ggml.merges");
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) {
      TORCH_CHECK(t >= 0 && t <= 6, "edkm: ", path, ": tokenizer.ggml.token_type holds ", t, " (expected 0..6)");
      v.token_types.push_back(static_cast<int32_t>(t));
    }
  }
  v.bos_id = f.has("tokenizer.ggml.bos_token_id") ? f.get_int("tokenizer.ggml.bos_token_id") : -1;
  v.eos_id = f.has("tokenizer.ggml.eos_token_id") ? f.get_int("tokenizer.ggml.eos_token_id") : -1;
  v.pre = f.get_string_or("tokenizer.ggml.pre", "");
  return std::make_unique<BpeTokenizer>(v);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (is_gguf_file(spec)) return load_gguf_tokenizer(spec);
  TORCH_CHECK(is_file(spec) || is_directory(spec), "tokenizer '", spec, "' does not exist (expected \"bytes\", a ",
              "checkpoint directory with tokenizer.model or tokenizer.json, a SentencePiece model file or a ",
              "tokenizer.json)");
  if (is_directory(spec)) {
    if (!is_file(spec + "/tokenizer.model") && is_file(spec + "/tokenizer.json"))
      return BpeTokenizer::from_tokenizer_json(spec + "/tokenizer.json");
    return std::make_unique<SentencePieceTokenizer>(spec + "/tokenizer.model");
  }
  if (spec.size() >= 5 && spec.compare(spec.size() - 5, 5, ".json") == 0)
    return BpeTokenizer::from_tokenizer_json(spec);
  return std::make_unique<SentencePieceTokenizer>(spec);
}

}  // namespace edkm
