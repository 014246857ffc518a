#include "edkm/models/tokenizer.h"
#include "edkm/io/gguf.h"

#include <c10/util/Exception.h>
#include "edkm/io/file_io.h"

#include <cstdlib>
#include <string>
#include <vector>

#if defined(EDKM_WITH_SENTENCEPIECE)
#include <dlfcn.h>

#include "models/sentencepiece_module.h"
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

// SentencePiece lives in the libedkm_sentencepiece module, loaded on first use into a linker
// namespace of its own (why: models/sentencepiece_module.h).
namespace {

#if defined(EDKM_WITH_SENTENCEPIECE)
struct SpmModule {
  edkm_spm_has_trainer_fn has_trainer = nullptr;
  edkm_spm_load_fn load = nullptr;
  edkm_spm_free_fn free = nullptr;
  edkm_spm_info_fn info = nullptr;
  edkm_spm_encode_fn encode = nullptr;
  edkm_spm_decode_fn decode = nullptr;
  edkm_spm_train_fn train = nullptr;
  std::string error;  // why it did not load; empty once it did
  std::string path;   // where it was loaded from
};

// Where the module may be: $EDKM_SENTENCEPIECE_MODULE alone when set; otherwise beside the
// library (or program) holding this code and in its ../lib, then where the build wrote it and
// where `cmake --install` puts it.
std::vector<std::string> spm_module_candidates() {
  const char* forced = std::getenv("EDKM_SENTENCEPIECE_MODULE");
  if (forced && *forced) return {forced};
  const std::string file = "libedkm_sentencepiece.so";
  std::vector<std::string> out;
  Dl_info self{};
  if (::dladdr(reinterpret_cast<void*>(&spm_module_candidates), &self) && self.dli_fname) {
    std::string dir = self.dli_fname;
    const auto slash = dir.rfind('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash);
    out.push_back(dir + "/" + file);
    out.push_back(dir + "/../lib/" + file);
  }
  out.push_back(EDKM_SPM_BUILD_PATH);
  out.push_back(EDKM_SPM_INSTALL_PATH);
  return out;
}

const SpmModule& spm_module() {
  static const SpmModule module = [] {
    SpmModule m;
    // A namespace of its own (dlmopen): sentencepiece, and the C and C++ runtimes it is given
    // there, bind to their own symbols. RTLD_DEEPBIND is not enough: with it sentencepiece wrote to
    // the std::cerr the program's copy relocation left unconstructed in libstdc++.
    std::string tried;
    void* lib = nullptr;
    for (const auto& path : spm_module_candidates()) {
      lib = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        m.path = path;
        break;
      }
      const char* why = ::dlerror();
      tried += "\n  " + path + ": " + (why ? why : "not loadable");
    }
    if (!lib) {
      m.error = "edkm cannot load its SentencePiece module (set EDKM_SENTENCEPIECE_MODULE to its path):" + tried;
      return m;
    }
    const auto sym = [&](const char* name) { return ::dlsym(lib, name); };
    const auto version = reinterpret_cast<edkm_spm_abi_version_fn>(sym("edkm_spm_abi_version"));
    if (!version || version() != EDKM_SPM_ABI_VERSION) {
      m.error = "edkm's SentencePiece module does not match this edkm build (interface version " +
                std::to_string(version ? version() : -1) + ", expected " + std::to_string(EDKM_SPM_ABI_VERSION) +
                "): reinstall edkm";
      return m;
    }
    m.has_trainer = reinterpret_cast<edkm_spm_has_trainer_fn>(sym("edkm_spm_has_trainer"));
    m.load = reinterpret_cast<edkm_spm_load_fn>(sym("edkm_spm_load"));
    m.free = reinterpret_cast<edkm_spm_free_fn>(sym("edkm_spm_free"));
    m.info = reinterpret_cast<edkm_spm_info_fn>(sym("edkm_spm_info"));
    m.encode = reinterpret_cast<edkm_spm_encode_fn>(sym("edkm_spm_encode"));
    m.decode = reinterpret_cast<edkm_spm_decode_fn>(sym("edkm_spm_decode"));
    m.train = reinterpret_cast<edkm_spm_train_fn>(sym("edkm_spm_train"));
    if (!m.has_trainer || !m.load || !m.free || !m.info || !m.encode || !m.decode || !m.train) {
      m.error = "edkm's SentencePiece module lacks a function: reinstall edkm";
    }
    return m;
  }();
  return module;
}

const SpmModule& spm_or_throw(const std::string& what) {
  const auto& m = spm_module();
  TORCH_CHECK(m.error.empty(), "cannot ", what, ": ", m.error);
  return m;
}

void append_bytes(void* ctx, const char* data, size_t n) { static_cast<std::string*>(ctx)->append(data, n); }
void append_ids(void* ctx, const int* ids, size_t n) {
  static_cast<std::vector<int64_t>*>(ctx)->insert(static_cast<std::vector<int64_t>*>(ctx)->end(), ids, ids + n);
}
#endif

}  // namespace

#if defined(EDKM_WITH_SENTENCEPIECE)
struct SentencePieceTokenizer::State {
  const SpmModule* module = nullptr;
  void* handle = nullptr;
  int64_t vocab_size = 0, bos_id = -1, eos_id = -1;
  ~State() {
    if (handle) module->free(handle);
  }
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file)
    : state_(std::make_unique<State>()), path_(model_file) {
  state_->module = &spm_or_throw("load the SentencePiece model " + model_file);
  char err[1024];
  TORCH_CHECK(state_->module->load(model_file.c_str(), &state_->handle, err, sizeof err) == 0,
              "cannot load SentencePiece model ", model_file, ": ", err);
  state_->module->info(state_->handle, &state_->vocab_size, &state_->bos_id, &state_->eos_id);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  char err[1024];
  TORCH_CHECK(state_->module->encode(state_->handle, text.data(), text.size(), append_ids, &ids, err, sizeof err) == 0,
              "SentencePiece encode failed: ", err);
  return ids;
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
  char err[1024];
  TORCH_CHECK(
      state_->module->decode(state_->handle, narrow.data(), narrow.size(), append_bytes, &out, err, sizeof err) == 0,
      "SentencePiece decode failed: ", err);
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return state_->vocab_size; }
int64_t SentencePieceTokenizer::bos_id() const { return state_->bos_id; }
int64_t SentencePieceTokenizer::eos_id() const { return state_->eos_id; }
bool has_sentencepiece() { return spm_module().error.empty(); }
std::string sentencepiece_status() {
  const auto& m = spm_module();
  return m.error.empty() ? "SentencePiece module loaded from " + m.path : m.error;
}
bool has_sentencepiece_trainer() { return has_sentencepiece() && spm_module().has_trainer(); }

void train_sentencepiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                         const std::string& model_type) {
  TORCH_CHECK(model_type == "bpe" || model_type == "unigram",
              "train_sentencepiece: model_type must be bpe or unigram, got ", model_type);
  TORCH_CHECK(vocab_size > 3, "train_sentencepiece: vocab_size must exceed 3, got ", vocab_size);
  const auto& m = spm_or_throw("train a SentencePiece model on " + text_file);
  TORCH_CHECK(m.has_trainer(), "edkm was built without the SentencePiece trainer: cannot train on ", text_file);
  std::string model;
  char err[1024];
  TORCH_CHECK(m.train(text_file.c_str(), vocab_size, model_type.c_str(), append_bytes, &model, err, sizeof err) == 0,
              "SentencePiece training on ", text_file, " failed: ", err);
  write_text_file(model_prefix + ".model", model);  // atomic, as every file edkm writes
}
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
std::string sentencepiece_status() { return "edkm was built without SentencePiece (libsentencepiece-dev)"; }
bool has_sentencepiece_trainer() { return false; }
void train_sentencepiece(const std::string& text_file, const std::string&, int64_t, const std::string&) {
  TORCH_CHECK(false, "edkm was built without SentencePiece (libsentencepiece-dev): cannot train on ", text_file);
}
#endif

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::string SentencePieceTokenizer::name() const {
  return "sentencepiece:" + path_ + " (" + std::to_string(vocab_size()) + " pieces)";
}

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
    TORCH_CHECK(is_file(spec + "/tokenizer.model"), "the directory ", spec,
                " holds no tokenizer (tokenizer.model or tokenizer.json); name one, or \"bytes\" for a model "
                "trained on bytes (what edkm's tiny preset writes)");
    return std::make_unique<SentencePieceTokenizer>(spec + "/tokenizer.model");
  }
  if (spec.size() >= 5 && spec.compare(spec.size() - 5, 5, ".json") == 0)
    return BpeTokenizer::from_tokenizer_json(spec);
  return std::make_unique<SentencePieceTokenizer>(spec);
}

}  // namespace edkm
