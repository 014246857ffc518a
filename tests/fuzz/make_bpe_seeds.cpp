// Writes the BPE fuzzer's seeds (fuzz_bpe.cpp's input layout): a byte-level vocabulary (GPT-2's
// 256 byte tokens, a few merged tokens, a special token), its merges and a text, once per
// pre-tokenizer and flag set.
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {
// GPT-2's bytes_to_unicode as UTF-8 strings.
std::vector<std::string> byte_tokens() {
  auto utf8 = [](unsigned cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  std::vector<std::string> out(256);
  unsigned extra = 0;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    out[b] = utf8(printable ? b : 256 + extra++);
  }
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_bpe_seeds DIR\n";
    return 2;
  }
  std::string tokens;
  for (const auto& t : byte_tokens()) tokens += t + "\n";
  tokens += "\xC4\xA0t\n\xC4\xA0th\n\xC4\xA0the\nhe\n12\n<|im_start|>";
  const std::string merges = "\xC4\xA0 t\n\xC4\xA0t h\n\xC4\xA0th e\nh e\n1 2";
  const std::string text = "Hello the world <|im_start|>user 123 h\xC3\xA9llo \xFF\xFE";
  for (const int mode : {0, 1, 2, 3, 8 + 16 + 32}) {
    std::ofstream f(std::string(argv[1]) + "/seed" + std::to_string(mode), std::ios::binary);
    f << static_cast<char>(mode) << tokens << '\0' << merges << '\0' << text;
    if (!f) return 1;
  }
  return 0;
}
