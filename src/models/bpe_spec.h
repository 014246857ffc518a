#pragma once
// What a byte-level BPE tokenizer is made of, whatever file it came from: BpeVocab (GGUF metadata)
// and tokenizer.json (bpe_tokenizer_json.cpp) both turn into a BpeSpec, which BpeTokenizer checks
// and compiles (bpe_tokenizer.cpp).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace edkm::detail {

/// One regex split of the pre-tokenizer (Hugging Face's Split; ByteLevel's regex is one too).
struct BpeSplit {
  /// What becomes of the matches (Hugging Face's SplitDelimiterBehavior).
  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
  std::string pattern;
  bool literal = false;  // pattern is a plain string, not a regex
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;  // the pieces between matches are the delimiters
  /// Hugging Face's ByteLevel(add_prefix_space): a space is put before each piece that does not
  /// start with one, before this split runs.
  bool prefix_space = false;
  /// The Hugging Face pre-tokenizer it stands for, so it is written back as it was read:
  /// ByteLevel (the byte-to-unicode step; its regex is GPT-2's when pattern is set) and Digits
  /// (pattern \p{N}) are splits too.
  enum class Kind { kSplit, kByteLevel, kDigits };
  Kind kind = Kind::kSplit;
};

/// A token matched whole in the raw text before pre-tokenization (special and added tokens).
struct BpeAddedToken {
  std::string content;
  int64_t id = -1;
  /// Matched in a second pass, inside what the first pass (normalized == false) left.
  bool normalized = false;
  /// Hugging Face's "special" (GGUF control tokens); written back, does not change encoding.
  bool special = false;
};

struct BpeSpec {
  std::string source;  // file named in errors
  std::string kind;    // "tokenizer.json" or "gguf (pre smollm)", for name()
  /// Token texts by id in byte-to-unicode form; ids without a token are empty and flagged.
  std::vector<std::string> tokens;
  std::vector<bool> present;
  std::vector<std::pair<std::string, std::string>> merges;  // by rank
  std::vector<BpeAddedToken> added;
  std::vector<BpeSplit> splits;  // applied in order, each to the pieces of the one before
  /// A word that is a token as a whole is that token, whatever the merges say (Llama 3).
  bool ignore_merges = false;
  /// What stands for a byte the vocabulary has no token for (-1: the byte is dropped, as Hugging
  /// Face and llama.cpp do); `fuse_unk` makes a run of them one unknown token.
  int64_t unk_id = -1;
  bool fuse_unk = false;
  int64_t bos_id = -1, eos_id = -1;
};

/// GPT-2's regex (Hugging Face ByteLevel(use_regex=true)).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
/// Llama 3's regex (its tokenizer.json Split).
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace edkm::detail
