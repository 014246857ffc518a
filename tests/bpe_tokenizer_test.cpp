// Byte-level BPE on hand-built vocabularies: round trip of random bytes, merge priority, special
// tokens kept whole, the pre-tokenizers (GPT-2, Llama 3, SmolLM, Split behaviours), tokenizer.json
// and BpeVocab agreeing, and hostile files refused by name. Parity with Hugging Face on the real
// SmolLM2 tokenizer: tests/parity/test_bpe_parity.py.
#include <edkm/io/file_io.h>
#include <edkm/models/tokenizer.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "temp_dir.h"
#include "test_util.h"

namespace {

using nlohmann::json;

#define EDKM_SKIP_WITHOUT_PCRE2() \
  if (!edkm::has_pcre2()) GTEST_SKIP() << "edkm built without PCRE2 (libpcre2-dev)"

using edkm::test::byte_char;

/// The 256 byte tokens (id = byte), then `extra` tokens, with `merges`.
edkm::BpeVocab vocab_of(const std::vector<std::string>& extra, const std::vector<std::string>& merges,
                        const std::string& pre = "gpt2") {
  edkm::BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_char(b));
  v.tokens.insert(v.tokens.end(), extra.begin(), extra.end());
  v.merges = merges;
  v.pre = pre;
  v.source = "test-vocab";
  return v;
}

int64_t id_of(const edkm::BpeTokenizer& t, const std::string& token) {
  const int64_t id = t.token_to_id(token);
  EXPECT_GE(id, 0) << token;
  return id;
}

/// A tokenizer.json of the same vocabulary (merges as "a b" strings or as pairs).
json tokenizer_json(const edkm::BpeVocab& v, bool pair_merges, const json& pre_tokenizer) {
  json vocab = json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  json merges = json::array();
  for (const auto& m : v.merges) {
    const auto sp = m.find(' ');
    merges.push_back(pair_merges ? json::array({m.substr(0, sp), m.substr(sp + 1)}) : json(m));
  }
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

json byte_level(bool use_regex = true) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

/// Sequence[Split(pattern, behavior, invert), ByteLevel(use_regex=false)], as Llama 3's.
json split_then_bytes(const json& pattern, const std::string& behavior, bool invert = false) {
  const json split = {{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}};
  return {{"type", "Sequence"}, {"pretokenizers", {split, byte_level(false)}}};
}

TEST(BpeTokenizer, RandomBytesRoundTrip) {
  EDKM_SKIP_WITHOUT_PCRE2();
  const std::vector<std::string> extra = {"ab", "abc", "Ġt", "he", "Ġthe", "ĠĠ", "Ã©"};
  const std::vector<std::string> merges = {"a b", "ab c", "Ġ t", "h e", "Ġt he", "Ġ Ġ", "Ã ©"};
  std::mt19937 rng(19);
  for (const char* pre : {"gpt2", "llama-bpe", "smollm"}) {
    edkm::BpeTokenizer tok(vocab_of(extra, merges, pre));
    EXPECT_TRUE(tok.missing_bytes().empty());
    for (int trial = 0; trial < 300; ++trial) {
      std::string s(rng() % 200, '\0');
      // Half the strings from a small alphabet (merges fire), half any bytes (invalid UTF-8, NUL).
      const bool small = trial % 2 == 0;
      const std::string alphabet = "abc the\n\t 1234\xc3\xa9\xe4\xb8\xad'";
      for (auto& c : s) c = small ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() % 256);
      const auto ids = tok.encode(s);
      for (auto id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
      ASSERT_EQ(tok.decode(ids), s) << pre << " trial " << trial;
    }
  }
}

TEST(BpeTokenizer, MergesByRankThenLeftmost) {
  EDKM_SKIP_WITHOUT_PCRE2();
  {
    edkm::BpeTokenizer tok(vocab_of({"bc", "ab", "abc"}, {"b c", "a b", "a bc"}));
    EXPECT_EQ(tok.encode("abc"), std::vector<int64_t>{id_of(tok, "abc")});  // b c, then a bc
  }
  {
    edkm::BpeTokenizer tok(vocab_of({"bc", "ab"}, {"b c", "a b"}));
    EXPECT_EQ(tok.encode("abc"), (std::vector<int64_t>{'a', id_of(tok, "bc")}));  // rank 0 wins
  }
  {
    edkm::BpeTokenizer tok(vocab_of({"ab", "bc"}, {"a b", "b c"}));
    EXPECT_EQ(tok.encode("abc"), (std::vector<int64_t>{id_of(tok, "ab"), 'c'}));
  }
  {
    edkm::BpeTokenizer tok(vocab_of({"aa", "aaaa"}, {"a a", "aa aa"}));
    EXPECT_EQ(tok.encode("aaa"), (std::vector<int64_t>{id_of(tok, "aa"), 'a'}));  // equal ranks: leftmost
    EXPECT_EQ(tok.encode("aaaa"), std::vector<int64_t>{id_of(tok, "aaaa")});
    EXPECT_EQ(tok.encode("aaaaa"), (std::vector<int64_t>{id_of(tok, "aaaa"), 'a'}));
  }
  // A long word: the merged chain of 2000 "ab" is found through the heap (no quadratic rescans
  // to time here; the result is what matters).
  edkm::BpeTokenizer tok(vocab_of({"ab"}, {"a b"}));
  std::string word;
  for (int i = 0; i < 2000; ++i) word += "ab";
  const auto ids = tok.encode(word);
  EXPECT_EQ(ids, std::vector<int64_t>(2000, id_of(tok, "ab")));
}

TEST(BpeTokenizer, PreTokenizersSplitWords) {
  EDKM_SKIP_WITHOUT_PCRE2();
  // "oĠ" would merge across the word boundary: the GPT-2 regex keeps " w" apart from "o".
  edkm::BpeTokenizer gpt2(vocab_of({"oĠ", "Ġw", "Ġ1", "12"}, {"o Ġ", "Ġ w", "Ġ 1", "1 2"}));
  EXPECT_EQ(gpt2.encode("o w"), (std::vector<int64_t>{'o', id_of(gpt2, "Ġw")}));
  EXPECT_EQ(gpt2.encode("a 12"), (std::vector<int64_t>{'a', id_of(gpt2, "Ġ1"), '2'}));
  // SmolLM: every digit alone first (Hugging Face Digits(individual_digits) before ByteLevel).
  edkm::BpeTokenizer smollm(vocab_of({"oĠ", "Ġw", "Ġ1", "12"}, {"o Ġ", "Ġ w", "Ġ 1", "1 2"}, "smollm"));
  EXPECT_EQ(smollm.encode("a 12"), (std::vector<int64_t>{'a', ' ', '1', '2'}));
  EXPECT_EQ(smollm.encode("o w"), (std::vector<int64_t>{'o', id_of(smollm, "Ġw")}));
  // Llama 3: numbers in groups of three; a whole word in the vocabulary wins over the merges.
  edkm::BpeTokenizer llama(vocab_of({"12", "xyz"}, {"1 2"}, "llama-bpe"));
  EXPECT_EQ(llama.encode("12345"), (std::vector<int64_t>{id_of(llama, "12"), '3', '4', '5'}));
  EXPECT_EQ(llama.encode("xyz"), std::vector<int64_t>{id_of(llama, "xyz")});
  edkm::BpeTokenizer no_ignore(vocab_of({"12", "xyz"}, {"1 2"}, "gpt2"));
  EXPECT_EQ(no_ignore.encode("xyz"), (std::vector<int64_t>{'x', 'y', 'z'}));
  // Unicode properties: a letter outside ASCII joins its word ("Ġé" merges), CJK too.
  edkm::BpeTokenizer uni(vocab_of({"Ġ\xc3\x83", "Ġ\xc3\x83\xc2\xa9"}, {"Ġ \xc3\x83", "Ġ\xc3\x83 \xc2\xa9"}));
  EXPECT_EQ(uni.encode("x \xc3\xa9"), (std::vector<int64_t>{'x', id_of(uni, "Ġ\xc3\x83\xc2\xa9")}));
}

TEST(BpeTokenizer, SpecialTokensKeptWhole) {
  EDKM_SKIP_WITHOUT_PCRE2();
  // "<|im" can only come from merges inside one piece: a prefix of a special token stays text.
  auto v = vocab_of({"<|im_start|>", "<|im_end|>", "<|", "<|i", "<|im"}, {"< |", "<| i", "<|i m"});
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types[256] = 3;  // control
  v.token_types[257] = 4;  // user defined
  v.bos_id = 256;
  v.eos_id = 257;
  edkm::BpeTokenizer tok(v);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  const std::string text = "<|im_start|>user\nhi<|im_end|><|im_sta";
  const auto ids = tok.encode(text);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 256);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 256), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 257), 1);
  const auto tail = tok.encode("<|im_sta");
  ASSERT_EQ(ids[ids.size() - tail.size() - 1], 257);
  EXPECT_EQ(std::vector<int64_t>(ids.end() - static_cast<std::ptrdiff_t>(tail.size()), ids.end()), tail);
  EXPECT_EQ(tail.front(), id_of(tok, "<|"));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.decode({256}), "<|im_start|>");
}

TEST(BpeTokenizer, TokenizerJsonAgreesWithVocab) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  const auto v = vocab_of({"ab", "abc", "Ġt", "he", "Ġthe", "<|endoftext|>"}, {"a b", "ab c", "Ġ t", "h e", "Ġt he"});
  edkm::BpeTokenizer from_vocab(v);
  const std::string sample = "abc the theabc\n\n  12 \xe4\xb8\xad\xe6\x96\x87 abcabc";
  for (bool pairs : {false, true}) {
    json j = tokenizer_json(v, pairs, byte_level());
    j["added_tokens"] = json::array({{{"id", 261},
                                      {"content", "<|endoftext|>"},
                                      {"single_word", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"normalized", false},
                                      {"special", true}}});
    edkm::make_directories(dir.path("ckpt"));
    edkm::write_text_file(dir.path("ckpt/tokenizer.json"), j.dump());
    edkm::write_text_file(dir.path("ckpt/tokenizer_config.json"),
                          json{{"bos_token", "<|endoftext|>"}, {"eos_token", {{"content", "<|endoftext|>"}}}}.dump());
    auto tok = edkm::BpeTokenizer::from_tokenizer_json(dir.path("ckpt/tokenizer.json"));
    EXPECT_EQ(tok->encode(sample), from_vocab.encode(sample));
    EXPECT_EQ(tok->bos_id(), 261);
    EXPECT_EQ(tok->eos_id(), 261);
    EXPECT_EQ(tok->encode("a<|endoftext|>b"), (std::vector<int64_t>{'a', 261, 'b'}));
    // The directory loads through load_tokenizer (no tokenizer.model there).
    auto loaded = edkm::load_tokenizer(dir.path("ckpt"));
    EXPECT_EQ(loaded->encode(sample), from_vocab.encode(sample));
    EXPECT_NE(loaded->name().find("tokenizer.json"), std::string::npos);
    EXPECT_EQ(edkm::load_tokenizer(dir.path("ckpt/tokenizer.json"))->encode(sample), from_vocab.encode(sample));
  }
}

TEST(BpeTokenizer, SplitBehaviours) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  const auto v = vocab_of({"aĠ", "Ġb", "ĠĠ"}, {"a Ġ", "Ġ b", "Ġ Ġ"});
  auto run = [&](const std::string& behavior, bool invert, const std::string& text) {
    json j = tokenizer_json(v, false, split_then_bytes({{"String", " "}}, behavior, invert));
    edkm::write_text_file(dir.path("t.json"), j.dump());
    return edkm::BpeTokenizer::from_tokenizer_json(dir.path("t.json"))->encode(text);
  };
  edkm::BpeTokenizer ids(v);
  const int64_t a_sp = id_of(ids, "aĠ"), sp_b = id_of(ids, "Ġb"), sp_sp = id_of(ids, "ĠĠ");
  EXPECT_EQ(run("Isolated", false, "a b"), (std::vector<int64_t>{'a', ' ', 'b'}));
  EXPECT_EQ(run("Removed", false, "a b"), (std::vector<int64_t>{'a', 'b'}));
  EXPECT_EQ(run("MergedWithPrevious", false, "a b"), (std::vector<int64_t>{a_sp, 'b'}));
  EXPECT_EQ(run("MergedWithNext", false, "a b"), (std::vector<int64_t>{'a', sp_b}));
  EXPECT_EQ(run("Contiguous", false, "a  b"), (std::vector<int64_t>{'a', sp_sp, 'b'}));
  EXPECT_EQ(run("Isolated", false, "a  b"), (std::vector<int64_t>{'a', ' ', ' ', 'b'}));
  // Inverted: the words are the delimiters; "Removed" keeps only the spaces.
  EXPECT_EQ(run("Removed", true, "a  b"), (std::vector<int64_t>{' ', ' '}));
}

TEST(BpeTokenizer, MissingBytesDroppedOrUnknown) {
  EDKM_SKIP_WITHOUT_PCRE2();
  auto v = vocab_of({"<unk>"}, {"a b"});
  v.tokens.push_back("ab");
  v.tokens[4] = "unused-4";  // no token for byte 0x04 any more
  edkm::BpeTokenizer tok(v);
  EXPECT_EQ(tok.missing_bytes(), std::vector<uint8_t>{4});
  EXPECT_EQ(tok.encode("a\x04"
                       "b"),
            (std::vector<int64_t>{'a', 'b'}));  // dropped, as Hugging Face
  EXPECT_EQ(tok.encode("ab"), std::vector<int64_t>{257});
  // With unk_token (tokenizer.json), a run of them is one unknown token under fuse_unk.
  edkm::test::TempDir dir;
  json j = tokenizer_json(v, false, byte_level());
  j["model"]["unk_token"] = "<unk>";
  j["model"]["fuse_unk"] = true;
  edkm::write_text_file(dir.path("t.json"), j.dump());
  auto unk = edkm::BpeTokenizer::from_tokenizer_json(dir.path("t.json"));
  EXPECT_EQ(unk->encode("\x04\x04"), std::vector<int64_t>{256});
  EXPECT_EQ(unk->encode("\x04"), std::vector<int64_t>{256});
}

TEST(BpeTokenizer, EncodesFromManyThreads) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::BpeTokenizer tok(vocab_of({"ab", "abc", "Ġt", "he", "Ġthe"}, {"a b", "ab c", "Ġ t", "h e", "Ġt he"}));
  std::string text;
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) text.push_back("abc the xyz\n"[rng() % 12]);
  const auto expected = tok.encode(text);
  std::vector<std::vector<int64_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = tok.encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, expected);
}

TEST(BpeTokenizer, RejectsHostileVocabularies) {
  EDKM_SKIP_WITHOUT_PCRE2();
  auto bad = [](auto edit, std::initializer_list<std::string> parts) {
    auto v = vocab_of({"ab"}, {"a b"});
    edit(v);
    edkm::test::expect_error([&] { edkm::BpeTokenizer t(v); }, parts);
  };
  bad([](edkm::BpeVocab& v) { v.merges.clear(); }, {"test-vocab", "no merges"});
  bad([](edkm::BpeVocab& v) { v.merges.push_back("a zz"); }, {"test-vocab", "'zz'", "not in the vocabulary"});
  bad([](edkm::BpeVocab& v) { v.merges.push_back("b a"); }, {"test-vocab", "'ba'", "not in the vocabulary"});
  bad([](edkm::BpeVocab& v) { v.merges.push_back("ab"); }, {"test-vocab", "merge 1", "separated"});
  bad([](edkm::BpeVocab& v) { v.bos_id = 257; }, {"test-vocab", "BOS id 257", "beyond"});
  bad([](edkm::BpeVocab& v) { v.eos_id = -7; }, {"test-vocab", "EOS id -7"});
  bad([](edkm::BpeVocab& v) { v.pre = "qwen2"; }, {"test-vocab", "'qwen2'", "not supported"});
  bad([](edkm::BpeVocab& v) { v.token_types = {1, 2}; }, {"test-vocab", "2 token types for 257 tokens"});
  bad([](edkm::BpeVocab& v) { v.tokens.resize(100); }, {"test-vocab", "no token for", "not a byte-level"});
  edkm::BpeTokenizer tok(vocab_of({"ab"}, {"a b"}));
  edkm::test::expect_error([&] { tok.decode({257}); }, {"test-vocab", "257", "outside"});
  edkm::test::expect_error([&] { tok.decode({-1}); }, {"-1", "outside"});
}

TEST(BpeTokenizer, SaysWhenBuiltWithoutPcre2) {
  if (edkm::has_pcre2()) GTEST_SKIP() << "built with PCRE2";
  edkm::test::expect_error([] { edkm::BpeTokenizer t(vocab_of({"ab"}, {"a b"})); }, {"without PCRE2", "test-vocab"});
}

TEST(BpeTokenizer, RejectsHostileTokenizerJson) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  const auto v = vocab_of({"ab"}, {"a b"});
  const std::string path = dir.path("tokenizer.json");
  auto bad = [&](auto edit, std::initializer_list<std::string> parts) {
    json j = tokenizer_json(v, false, byte_level());
    edit(j);
    edkm::write_text_file(path, j.dump());
    edkm::test::expect_error([&] { edkm::BpeTokenizer::from_tokenizer_json(path); }, parts);
  };
  bad([](json& j) { j["model"].erase("merges"); }, {path, "no merges"});
  bad([](json& j) { j["model"]["merges"] = json::array(); }, {path, "no merges"});
  bad([](json& j) { j["model"]["merges"].push_back("a zz"); }, {path, "'zz'", "not in the vocabulary"});
  bad([](json& j) { j["model"]["merges"].push_back(json::array({"a"})); }, {path, "merge 1"});
  bad([](json& j) { j["model"]["vocab"]["zz"] = 5000; }, {path, "'zz'", "5000", "beyond the vocabulary"});
  bad([](json& j) { j["model"]["vocab"]["zz"] = -3; }, {path, "-3", "beyond the vocabulary"});
  bad([](json& j) { j["model"]["vocab"]["zz"] = 3; }, {path, "id 3 is both"});
  bad([](json& j) { j["model"]["type"] = "WordPiece"; }, {path, "'WordPiece'", "only BPE"});
  bad([](json& j) { j["model"]["byte_fallback"] = true; }, {path, "byte_fallback"});
  bad([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }, {path, "continuing_subword_prefix"});
  bad([](json& j) { j["model"]["dropout"] = 0.1; }, {path, "dropout"});
  bad([](json& j) { j["model"]["unk_token"] = "<nope>"; }, {path, "'<nope>'"});
  bad([](json& j) { j["normalizer"] = {{"type", "NFC"}}; }, {path, "normalizer 'NFC'", "not supported"});
  bad([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {path, "'Whitespace'", "not supported"});
  bad([](json& j) { j["pre_tokenizer"] = nullptr; }, {path, "no ByteLevel"});
  bad([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, {path, "decoder 'WordPiece'"});
  bad([](json& j) { j["decoder"] = nullptr; }, {path, "no decoder"});
  bad([](json& j) { j["post_processor"] = {{"type", "BertProcessing"}}; }, {path, "'BertProcessing'"});
  bad(
      [](json& j) {
        j["pre_tokenizer"] = split_then_bytes({{"Regex", "(\\p{L}+"}}, "Isolated");
      },
      {path, "'(\\p{L}+'", "does not compile"});
  bad([](json& j) { j["pre_tokenizer"] = split_then_bytes({{"Regex", "a"}}, "Sideways"); }, {path, "'Sideways'"});
  bad(
      [](json& j) {
        j["added_tokens"] = json::array({{{"id", 258}, {"content", "<x>"}, {"lstrip", true}}});
      },
      {path, "'<x>'", "lstrip"});
  bad(
      [](json& j) {
        j["added_tokens"] = json::array({{{"id", 9999}, {"content", "<x>"}}});
      },
      {path, "'<x>'", "9999", "beyond"});
  bad([](json& j) { j["model"]["vocab"] = "many"; }, {path, "no vocab"});
  bad([](json& j) { j["model"]["vocab"]["zz"] = "one"; }, {path, "'zz'", "not an integer"});
  edkm::write_text_file(path, "{\"model\": ");
  edkm::test::expect_error([&] { edkm::BpeTokenizer::from_tokenizer_json(path); },
                           {path, "not valid JSON", "unexpected end of input"});
  // 100,000 nested pre-tokenizer Sequences: refused while parsing (copying such a value overflowed
  // the stack: a crash, not an error).
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "{\"type\": \"Sequence\", \"pretokenizers\": [";
  deep += "{\"type\": \"ByteLevel\"}";
  for (int i = 0; i < 100000; ++i) deep += "]}";
  std::string text = tokenizer_json(v, false, byte_level()).dump();
  const std::string key = "\"pre_tokenizer\":";
  text.insert(text.find(key) + key.size(), deep + ", \"unused\":");
  edkm::write_text_file(path, text);
  edkm::test::expect_error([&] { edkm::BpeTokenizer::from_tokenizer_json(path); }, {path, "nested deeper than 64"});
  // tokenizer_config.json's special tokens: a string or {"content": ...}, named in its file.
  edkm::write_text_file(path, tokenizer_json(v, false, byte_level()).dump());
  edkm::write_text_file(dir.path("tokenizer_config.json"), "{\"bos_token\": 5}");
  edkm::test::expect_error([&] { edkm::BpeTokenizer::from_tokenizer_json(path); },
                           {dir.path("tokenizer_config.json"), "bos_token is 5", "neither a string"});
  edkm::test::expect_error([&] { edkm::BpeTokenizer::from_tokenizer_json(dir.path("none.json")); }, {"none.json"});
}

}  // namespace

/// Random text over an alphabet that makes merges, digits, special tokens and Unicode fire (and
/// any bytes every other call).
std::string random_text(std::mt19937& rng, int trial) {
  static const std::vector<std::string> pieces = {"a",
                                                  "b",
                                                  "c",
                                                  "ab",
                                                  "the",
                                                  " ",
                                                  "  ",
                                                  "\n",
                                                  "\t",
                                                  "1",
                                                  "2",
                                                  "3",
                                                  "12",
                                                  "123",
                                                  "xyz",
                                                  "'s",
                                                  "\xc3\xa9",
                                                  "\xe4\xb8\xad",
                                                  "<|im_start|>",
                                                  "<tool>",
                                                  "<|endoftext|>",
                                                  "!",
                                                  "?."};
  std::string s;
  const int n = static_cast<int>(rng() % 80);
  for (int i = 0; i < n; ++i) {
    if (trial % 2 == 1 && rng() % 4 == 0) {
      s.push_back(static_cast<char>(rng() % 256));
    } else {
      s += pieces[rng() % pieces.size()];
    }
  }
  return s;
}

TEST(BpeTokenizer, TokenizerJsonWrittenAndReadBackGivesSameIds) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  // "xyz" is a whole-word token no merge makes: Llama 3's ignore_merges picks it, the others don't.
  const std::vector<std::string> extra = {"ab", "abc", "Ġt",  "he",           "Ġthe",   "ĠĠ",           "Ã©",
                                          "12", "Ġ1",  "xyz", "<|im_start|>", "<tool>", "<|endoftext|>"};
  const std::vector<std::string> merges = {"a b", "ab c", "Ġ t", "h e", "Ġt he", "Ġ Ġ", "Ã ©", "1 2", "Ġ 1"};
  const std::map<std::string, std::string> expected_pre = {
      {"gpt2", R"({"add_prefix_space":false,"trim_offsets":true,"type":"ByteLevel","use_regex":true})"},
      {"smollm",
       R"({"pretokenizers":[{"individual_digits":true,"type":"Digits"},)"
       R"({"add_prefix_space":false,"trim_offsets":true,"type":"ByteLevel","use_regex":true}],"type":"Sequence"})"},
      {"llama-bpe", ""}};
  std::mt19937 rng(5);
  for (const char* pre : {"gpt2", "llama-bpe", "smollm"}) {
    auto v = vocab_of(extra, merges, pre);
    v.token_types.assign(v.tokens.size(), 1);
    v.token_types[266] = 3;  // <|im_start|>: control
    v.token_types[267] = 4;  // <tool>: user defined
    v.token_types[268] = 3;
    v.bos_id = 268;
    v.eos_id = 266;
    edkm::BpeTokenizer tok(v);
    const std::string out = dir.path(std::string("hf-") + pre);
    edkm::save_hf_tokenizer(tok, out);
    const json j = json::parse(edkm::read_text_file(out + "/tokenizer.json"));
    EXPECT_EQ(j["model"]["type"], "BPE");
    EXPECT_EQ(j["model"]["byte_fallback"], false);
    EXPECT_EQ(j["model"]["ignore_merges"], std::string(pre) == "llama-bpe") << pre;
    EXPECT_EQ(j["model"]["vocab"].size(), v.tokens.size());
    EXPECT_EQ(j["model"]["merges"].size(), merges.size());
    EXPECT_TRUE(j["normalizer"].is_null());
    EXPECT_TRUE(j["post_processor"].is_null());
    EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
    ASSERT_EQ(j["added_tokens"].size(), 3u);
    EXPECT_EQ(j["added_tokens"][0]["content"], "<|im_start|>");
    EXPECT_EQ(j["added_tokens"][0]["special"], true);
    EXPECT_EQ(j["added_tokens"][1]["content"], "<tool>");
    EXPECT_EQ(j["added_tokens"][1]["special"], false);
    if (std::string(pre) == "llama-bpe") {
      const auto& seq = j["pre_tokenizer"]["pretokenizers"];
      ASSERT_EQ(seq.size(), 2u);
      EXPECT_EQ(seq[0]["type"], "Split");
      EXPECT_EQ(seq[0]["behavior"], "Isolated");
      EXPECT_EQ(seq[0]["pattern"]["Regex"].get<std::string>().substr(0, 6), "(?i:'s");
      EXPECT_EQ(seq[1]["use_regex"], false);
    } else {
      EXPECT_EQ(j["pre_tokenizer"].dump(), expected_pre.at(pre));
    }
    const json config = json::parse(edkm::read_text_file(out + "/tokenizer_config.json"));
    EXPECT_EQ(config["bos_token"], "<|endoftext|>");
    EXPECT_EQ(config["eos_token"], "<|im_start|>");

    auto back = edkm::BpeTokenizer::from_tokenizer_json(out + "/tokenizer.json");
    EXPECT_EQ(back->bos_id(), 268);
    EXPECT_EQ(back->eos_id(), 266);
    EXPECT_EQ(back->vocab_size(), tok.vocab_size());
    // Written again from what was read: the same file.
    EXPECT_EQ(back->to_tokenizer_json(), tok.to_tokenizer_json()) << pre;
    EXPECT_EQ(tok.encode("xyz")[0], std::string(pre) == "llama-bpe" ? id_of(tok, "xyz") : 'x') << pre;
    for (int trial = 0; trial < 400; ++trial) {
      const std::string s = random_text(rng, trial);
      const auto ids = tok.encode(s);
      ASSERT_EQ(back->encode(s), ids) << pre << " trial " << trial;
      ASSERT_EQ(back->decode(ids), tok.decode(ids));
    }
  }
}

TEST(BpeTokenizer, TokenizerJsonRoundTripKeepsItsOwnPreTokenizer) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  auto v = vocab_of({"<unk>", "aĠ", "Ġb", "ĠĠ", "Ġa"}, {"a Ġ", "Ġ b", "Ġ Ġ", "Ġ a"});
  v.tokens[4] = "unused-4";  // byte 0x04 becomes <unk>
  // Split(" " literal, MergedWithPrevious) + Digits(contiguous) + ByteLevel(add_prefix_space, regex).
  json j = tokenizer_json(v, false, json());
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"}, {"invert", false}},
        {{"type", "Digits"}, {"individual_digits", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}}}};
  j["model"]["unk_token"] = "<unk>";
  j["model"]["fuse_unk"] = true;
  edkm::write_text_file(dir.path("in.json"), j.dump());
  auto tok = edkm::BpeTokenizer::from_tokenizer_json(dir.path("in.json"));
  edkm::save_hf_tokenizer(*tok, dir.path("out"));
  const json w = json::parse(edkm::read_text_file(dir.path("out/tokenizer.json")));
  EXPECT_EQ(w["pre_tokenizer"], j["pre_tokenizer"]);
  EXPECT_EQ(w["model"]["unk_token"], "<unk>");
  EXPECT_EQ(w["model"]["fuse_unk"], true);
  auto back = edkm::BpeTokenizer::from_tokenizer_json(dir.path("out/tokenizer.json"));
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string s = random_text(rng, trial) + (trial % 3 == 0 ? "\x04\x04" : "");
    ASSERT_EQ(back->encode(s), tok->encode(s)) << trial;
  }
  const auto unk_ids = back->encode("\x04\x04");
  EXPECT_EQ(unk_ids, tok->encode("\x04\x04"));
  EXPECT_EQ(std::count(unk_ids.begin(), unk_ids.end(), 256), 1);  // fused
}

TEST(BpeTokenizer, TokenizerJsonKeepsARepeatedTokenTextOnce) {
  EDKM_SKIP_WITHOUT_PCRE2();
  edkm::test::TempDir dir;
  // "ab" under ids 256 and 259, an empty text at 258 (GGUF vocabularies have both): written once,
  // under the id encode gives (the last), and read back with the holes.
  auto v = vocab_of({"ab", "abc", "", "ab", "he"}, {"a b", "ab c", "h e"});
  edkm::BpeTokenizer tok(v);
  const int64_t ab = tok.encode("ab").at(0);
  edkm::save_hf_tokenizer(tok, dir.path("hf"));
  const json j = json::parse(edkm::read_text_file(dir.path("hf/tokenizer.json")));
  EXPECT_EQ(j["model"]["vocab"].size(), v.tokens.size() - 2);
  EXPECT_EQ(j["model"]["vocab"]["ab"], ab);
  auto back = edkm::BpeTokenizer::from_tokenizer_json(dir.path("hf/tokenizer.json"));
  EXPECT_EQ(back->vocab_size(), tok.vocab_size());
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string s = random_text(rng, trial);
    ASSERT_EQ(back->encode(s), tok.encode(s)) << trial;
  }
}
