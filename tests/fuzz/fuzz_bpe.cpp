// libFuzzer target: BpeTokenizer built from a hostile vocabulary (what a GGUF's tokenizer.ggml.*
// metadata gives), then encode / decode of hostile text and ids. Whatever the input, construction
// throws c10::Error or gives a tokenizer whose encode, decode and round trips never crash.
// Input: byte 0 picks the pre-tokenizer and flags; then NUL-separated sections: tokens ('\n'
// separated), merges ('\n' separated "a b"), text. Built and run by run_fuzzer.sh (ctest fuzz_bpe).
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

#include "edkm/models/tokenizer.h"

namespace {
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(b, i - b));
      b = i + 1;
    }
  }
  return out;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* pres[] = {"gpt2", "smollm", "llama3", "llama-bpe", "default", "qwen2", "", "nope"};
  const uint8_t mode = data[0];
  const auto parts = split(std::string(reinterpret_cast<const char*>(data + 1), size - 1), '\0');
  edkm::BpeVocab v;
  v.pre = pres[mode & 7];
  if (!parts.empty()) v.tokens = split(parts[0], '\n');
  if (parts.size() > 1 && !parts[1].empty()) v.merges = split(parts[1], '\n');
  if (mode & 8) {
    v.token_types.assign(v.tokens.size(), 1);
    if (!v.token_types.empty()) v.token_types[0] = (mode >> 4) % 7;
  }
  v.bos_id = (mode & 16) ? 0 : -1;
  v.eos_id = (mode & 32) ? static_cast<int64_t>(v.tokens.size()) - 1 + ((mode >> 6) & 1) : -1;
  try {
    edkm::BpeTokenizer tok(v);
    const std::string text = parts.size() > 2 ? parts[2] : std::string();
    const auto ids = tok.encode(text);
    (void)tok.decode(ids);
    std::vector<int64_t> hostile;
    for (unsigned char c : text) hostile.push_back(static_cast<int64_t>(c) - 3);
    try {
      (void)tok.decode(hostile);
    } catch (const c10::Error&) {
    }
    try {
      (void)tok.to_tokenizer_json();
    } catch (const c10::Error&) {
    }
    (void)tok.missing_bytes();
  } catch (const c10::Error&) {
  }
  return 0;
}
