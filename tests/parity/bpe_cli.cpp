// edkm's BpeTokenizer for tests/parity/test_bpe_parity.py: loads a tokenizer.json or a BpeVocab
// written as JSON (what a GGUF holds), encodes and decodes texts, prints JSON.
//
//   edkm_bpe_cli (--tokenizer-json PATH | --vocab-json PATH | --gguf PATH) --texts TEXTS.json [--bench FILE]
//
// TEXTS.json is a list of strings. Output: {"name", "vocab_size", "bos_id", "eos_id", "ids": [[...]],
// "decoded": [...], "bench": {"bytes", "tokens", "cold_s", "warm_s"}} (bench only with --bench:
// encode of the whole file on a fresh tokenizer, then again with its word cache warm).
#include <edkm/io/file_io.h>
#include <edkm/models/tokenizer.h>

#include <c10/util/Exception.h>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace {

using nlohmann::json;

std::unique_ptr<edkm::BpeTokenizer> load(const std::string& kind, const std::string& path) {
  if (kind == "--tokenizer-json") return edkm::BpeTokenizer::from_tokenizer_json(path);
  if (kind == "--gguf") {  // the GGUF's own tokenizer metadata, read by edkm
    auto tok = edkm::load_gguf_tokenizer(path);
    auto* bpe = dynamic_cast<edkm::BpeTokenizer*>(tok.get());
    if (!bpe) throw std::runtime_error(path + ": not a byte-level BPE tokenizer");
    tok.release();
    return std::unique_ptr<edkm::BpeTokenizer>(bpe);
  }
  const json j = json::parse(edkm::read_text_file(path));
  edkm::BpeVocab v;
  v.tokens = j.at("tokens").get<std::vector<std::string>>();
  v.merges = j.at("merges").get<std::vector<std::string>>();
  v.token_types = j.value("token_types", std::vector<int32_t>{});
  v.bos_id = j.value("bos_id", int64_t{-1});
  v.eos_id = j.value("eos_id", int64_t{-1});
  v.pre = j.value("pre", std::string());
  v.source = j.value("source", path);
  return std::make_unique<edkm::BpeTokenizer>(v);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string kind, path, texts_path, bench_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tokenizer-json" || a == "--vocab-json" || a == "--gguf") {
      kind = a, path = argv[i + 1];
    } else if (a == "--texts") {
      texts_path = argv[i + 1];
    } else if (a == "--bench") {
      bench_path = argv[i + 1];
    }
  }
  if (kind.empty() || texts_path.empty()) {
    std::cerr << "usage: edkm_bpe_cli (--tokenizer-json PATH | --vocab-json PATH | --gguf PATH) --texts TEXTS.json "
                 "[--bench FILE]\n";
    return 2;
  }
  try {
    auto tok = load(kind, path);
    json out = {{"name", tok->name()},     {"vocab_size", tok->vocab_size()},
                {"bos_id", tok->bos_id()}, {"eos_id", tok->eos_id()},
                {"ids", json::array()},    {"decoded", json::array()}};
    for (const auto& text : json::parse(edkm::read_text_file(texts_path))) {
      const auto ids = tok->encode(text.get<std::string>());
      out["ids"].push_back(ids);
      out["decoded"].push_back(tok->decode(ids));
    }
    if (!bench_path.empty()) {
      const std::string text = edkm::read_text_file(bench_path);
      auto fresh = load(kind, path);
      auto t0 = std::chrono::steady_clock::now();
      const auto ids = fresh->encode(text);
      const double cold = seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
      const auto again = fresh->encode(text);
      const double warm = seconds_since(t0);
      TORCH_CHECK(again == ids, "edkm_bpe_cli: two encodes of ", bench_path, " differ");
      out["bench"] = {{"bytes", text.size()}, {"tokens", ids.size()}, {"cold_s", cold}, {"warm_s", warm}};
    }
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "edkm_bpe_cli: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
