// Hugging Face tokenizer.json -> BpeSpec: the BPE model, added tokens, the pre-tokenizer
// (Sequence / Split / ByteLevel / Digits) and the ByteLevel decoder. What it does not implement is
// refused by name, never ignored: a silently different tokenization is the worst outcome.
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "edkm/io/file_io.h"
#include "edkm/models/tokenizer.h"
#include "models/bpe_spec.h"
#include "util/json_parse.h"

namespace edkm {
namespace {

using detail::BpeSplit;
using nlohmann::json;

std::string type_of(const json& j) { return j.is_object() && j.contains("type") ? j["type"].get<std::string>() : ""; }

bool flag(const json& j, const char* key, bool fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<bool>() : fallback;
}

BpeSplit::Behavior behavior_of(const std::string& name, const std::string& path) {
  using B = BpeSplit::Behavior;
  if (name == "Removed") return B::kRemoved;
  if (name == "Isolated") return B::kIsolated;
  if (name == "MergedWithPrevious") return B::kMergedWithPrevious;
  if (name == "MergedWithNext") return B::kMergedWithNext;
  if (name == "Contiguous") return B::kContiguous;
  TORCH_CHECK(false, path, ": Split behavior '", name, "' is not supported");
}

/// Appends the splits of one pre-tokenizer; sets `byte_level` when it is (or holds) ByteLevel.
void add_pre_tokenizer(const json& pt, const std::string& path, std::vector<BpeSplit>& splits, bool& byte_level) {
  using B = BpeSplit::Behavior;
  const std::string type = type_of(pt);
  if (type == "Sequence") {
    for (const auto& p : pt.at("pretokenizers")) add_pre_tokenizer(p, path, splits, byte_level);
  } else if (type == "ByteLevel") {
    TORCH_CHECK(!byte_level, path, ": two ByteLevel pre-tokenizers");
    byte_level = true;
    BpeSplit s;
    s.kind = BpeSplit::Kind::kByteLevel;
    s.prefix_space = flag(pt, "add_prefix_space", false);
    if (flag(pt, "use_regex", true)) s.pattern = detail::kGpt2Pattern;
    splits.push_back(s);
  } else if (type == "Split") {
    TORCH_CHECK(!byte_level, path, ": a Split after ByteLevel would split byte-to-unicode text; not supported");
    BpeSplit s;
    const auto& pat = pt.at("pattern");
    if (pat.contains("Regex")) {
      s.pattern = pat["Regex"].get<std::string>();
    } else if (pat.contains("String")) {
      s.pattern = pat["String"].get<std::string>();
      s.literal = true;
    } else {
      TORCH_CHECK(false, path, ": Split pattern ", pat.dump(), " is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    TORCH_CHECK(!s.pattern.empty(), path, ": Split with an empty pattern");
    s.behavior = behavior_of(pt.at("behavior").get<std::string>(), path);
    s.invert = flag(pt, "invert", false);
    splits.push_back(s);
  } else if (type == "Digits") {
    TORCH_CHECK(!byte_level, path, ": Digits after ByteLevel is not supported");
    splits.push_back({R"(\p{N})", false, flag(pt, "individual_digits", false) ? B::kIsolated : B::kContiguous, false,
                      false, BpeSplit::Kind::kDigits});
  } else {
    TORCH_CHECK(false, path, ": pre_tokenizer '", type.empty() ? pt.dump() : type,
                "' is not supported (supported: Sequence, Split, ByteLevel, Digits)");
  }
}

/// A decoder that is ByteLevel, alone or in a Sequence.
void check_decoder(const json& d, const std::string& path) {
  const std::string type = type_of(d);
  if (type == "Sequence") {
    for (const auto& x : d.at("decoders")) check_decoder(x, path);
    return;
  }
  TORCH_CHECK(type == "ByteLevel", path, ": decoder '", type.empty() ? d.dump() : type,
              "' is not supported (only ByteLevel)");
}

/// tokenizer_config.json's bos_token / eos_token: a string or {"content": ...}.
int64_t special_id(const json& config, const char* key, const std::vector<std::string>& tokens,
                   const std::vector<bool>& present, const std::string& path) {
  if (!config.contains(key) || config[key].is_null()) return -1;
  const auto& v = config[key];
  TORCH_CHECK(v.is_string() || (v.is_object() && v.contains("content") && v["content"].is_string()), path, ": ", key,
              " is ", v.dump(), ", neither a string nor {\"content\": \"...\"}");
  const std::string text = v.is_string() ? v.get<std::string>() : v["content"].get<std::string>();
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (present[id] && tokens[id] == text) return static_cast<int64_t>(id);
  }
  TORCH_CHECK(false, path, ": ", key, " '", text, "' is not a token of the vocabulary");
}

detail::BpeSpec spec_of_json(const std::string& path) {
  const json j = detail::parse_json_bounded(read_text_file(path), path);
  TORCH_CHECK(j.is_object(), path, ": not a JSON object (not a tokenizer.json)");
  detail::BpeSpec s;
  s.source = path;
  s.kind = "tokenizer.json";
  TORCH_CHECK(j.contains("model") && j["model"].is_object(), path, ": no \"model\" (not a tokenizer.json)");
  const auto& model = j["model"];
  const std::string mtype = type_of(model);
  TORCH_CHECK(mtype == "BPE", path, ": model type '", mtype, "' is not supported (only BPE)");
  TORCH_CHECK(model.contains("merges") && model["merges"].is_array() && !model["merges"].empty(), path,
              ": the BPE model has no merges");
  TORCH_CHECK(model.contains("vocab") && model["vocab"].is_object() && !model["vocab"].empty(), path,
              ": the BPE model has no vocab");
  const auto dropout = model.value("dropout", json());
  TORCH_CHECK(dropout.is_null() || dropout.get<double>() == 0.0, path, ": BPE dropout ", dropout.dump(),
              " is not supported");
  TORCH_CHECK(!flag(model, "byte_fallback", false), path, ": BPE byte_fallback is not supported (byte-level only)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto v = model.value(key, json());
    TORCH_CHECK(v.is_null() || v.get<std::string>().empty(), path, ": BPE ", key, " '", v.get<std::string>(),
                "' is not supported");
  }
  s.ignore_merges = flag(model, "ignore_merges", false);
  // Merges as "a b" (tokenizers < 0.20) or as ["a", "b"].
  const auto& merges = model["merges"];
  s.merges.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& m = merges[r];
    if (m.is_string()) {
      const auto line = m.get<std::string>();
      const size_t sp = line.find(' ');
      TORCH_CHECK(sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos, path, ": merge ", r, " '",
                  line, "' is not two tokens separated by one space");
      s.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    } else {
      TORCH_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), path, ": merge ", r, " ",
                  m.dump(), " is neither \"a b\" nor [\"a\", \"b\"]");
      s.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }

  // Ids: model vocab, then added tokens (whose ids may follow it, as Llama 3's). They may leave
  // holes (a vocabulary that held a text under several ids, written back by to_tokenizer_json,
  // keeps it once) but are bounded by twice the number of entries, so an absurd id cannot make a
  // huge table.
  const auto& vocab = model["vocab"];
  const json added = j.value("added_tokens", json::array());
  TORCH_CHECK(added.is_array(), path, ": added_tokens is not an array");
  const int64_t entries = 2 * static_cast<int64_t>(vocab.size() + added.size());
  auto place = [&](const std::string& token, const json& idj) {
    TORCH_CHECK(idj.is_number_integer(), path, ": token '", token, "' has id ", idj.dump(), ", not an integer");
    const auto id = idj.get<int64_t>();
    TORCH_CHECK(id >= 0 && id < entries, path, ": token '", token, "' has id ", id, ", beyond the vocabulary of ",
                entries, " entries");
    if (id >= static_cast<int64_t>(s.tokens.size())) {
      s.tokens.resize(id + 1);
      s.present.resize(id + 1, false);
    }
    TORCH_CHECK(!s.present[id] || s.tokens[id] == token, path, ": id ", id, " is both '", s.tokens[id], "' and '",
                token, "'");
    s.tokens[id] = token;
    s.present[id] = true;
    return id;
  };
  for (const auto& [token, id] : vocab.items()) place(token, id);
  for (const auto& a : added) {
    const auto content = a.at("content").get<std::string>();
    for (const char* key : {"lstrip", "rstrip", "single_word"}) {
      TORCH_CHECK(!flag(a, key, false), path, ": added token '", content, "' has ", key, "=true, not supported");
    }
    const int64_t id = place(content, a.at("id"));
    s.added.push_back({content, id, flag(a, "normalized", false), flag(a, "special", false)});
  }

  const auto unk = model.value("unk_token", json());
  if (!unk.is_null()) {
    const auto u = unk.get<std::string>();
    for (size_t id = 0; id < s.tokens.size() && s.unk_id < 0; ++id) {
      if (s.present[id] && s.tokens[id] == u) s.unk_id = static_cast<int64_t>(id);
    }
    TORCH_CHECK(s.unk_id >= 0, path, ": unk_token '", u, "' is not in the vocabulary");
    s.fuse_unk = flag(model, "fuse_unk", false);
  }
  const auto normalizer = j.value("normalizer", json());
  const bool no_normalizer = normalizer.is_null() || (type_of(normalizer) == "Sequence" &&
                                                      normalizer.value("normalizers", json::array()).empty());
  TORCH_CHECK(no_normalizer, path, ": normalizer '", type_of(normalizer), "' is not supported");
  const auto pre = j.value("pre_tokenizer", json());
  bool byte_level = false;
  if (!pre.is_null()) add_pre_tokenizer(pre, path, s.splits, byte_level);
  TORCH_CHECK(byte_level, path, ": no ByteLevel pre-tokenizer: not a byte-level BPE");
  const auto dec = j.value("decoder", json());
  TORCH_CHECK(!dec.is_null(), path, ": no decoder (a byte-level BPE needs the ByteLevel decoder)");
  check_decoder(dec, path);
  const auto post = j.value("post_processor", json());
  if (!post.is_null()) {
    // They only add special tokens around sequences (or fix offsets); encode adds none.
    std::vector<json> todo{post};
    while (!todo.empty()) {
      const json p = todo.back();
      todo.pop_back();
      const std::string t = type_of(p);
      if (t == "Sequence") {
        for (const auto& x : p.at("processors")) todo.push_back(x);
        continue;
      }
      TORCH_CHECK(t == "ByteLevel" || t == "TemplateProcessing", path, ": post_processor '", t,
                  "' is not supported (ByteLevel, TemplateProcessing)");
    }
  }

  // BOS / EOS live in tokenizer_config.json beside it.
  const auto slash = path.find_last_of('/');
  const std::string config_path =
      (slash == std::string::npos ? "" : path.substr(0, slash + 1)) + "tokenizer_config.json";
  std::string config_text;
  try {
    config_text = read_text_file(config_path);
  } catch (const c10::Error&) {
    return s;  // none: no BOS / EOS
  }
  const json config = detail::parse_json_bounded(config_text, config_path);
  TORCH_CHECK(config.is_object(), config_path, ": not a JSON object");
  s.bos_id = special_id(config, "bos_token", s.tokens, s.present, config_path);
  s.eos_id = special_id(config, "eos_token", s.tokens, s.present, config_path);
  return s;
}

const char* behavior_name(BpeSplit::Behavior b) {
  using B = BpeSplit::Behavior;
  switch (b) {
    case B::kRemoved:
      return "Removed";
    case B::kIsolated:
      return "Isolated";
    case B::kMergedWithPrevious:
      return "MergedWithPrevious";
    case B::kMergedWithNext:
      return "MergedWithNext";
    case B::kContiguous:
      return "Contiguous";
  }
  return "Isolated";
}

/// One split as the Hugging Face pre-tokenizer it came from.
json pre_tokenizer_of(const BpeSplit& sp, const std::string& source) {
  using K = BpeSplit::Kind;
  TORCH_CHECK(!sp.prefix_space || sp.kind == K::kByteLevel, source,
              ": a prefix space on a split that is not ByteLevel has no tokenizer.json form");
  if (sp.kind == K::kByteLevel) {
    TORCH_CHECK(sp.pattern.empty() || sp.pattern == detail::kGpt2Pattern, source,
                ": a ByteLevel step with a regex other than GPT-2's has no tokenizer.json form");
    return {{"type", "ByteLevel"},
            {"add_prefix_space", sp.prefix_space},
            {"trim_offsets", true},
            {"use_regex", !sp.pattern.empty()}};
  }
  if (sp.kind == K::kDigits) {
    return {{"type", "Digits"}, {"individual_digits", sp.behavior == BpeSplit::Behavior::kIsolated}};
  }
  return {{"type", "Split"},
          {"pattern", {{sp.literal ? "String" : "Regex", sp.pattern}}},
          {"behavior", behavior_name(sp.behavior)},
          {"invert", sp.invert}};
}

/// json::dump, with a token that is not valid UTF-8 named in a c10::Error.
std::string dump_checked(const json& j, const std::string& source, int indent = -1) {
  try {
    return j.dump(indent, ' ', false, json::error_handler_t::strict) + "\n";
  } catch (const json::type_error& e) {
    TORCH_CHECK(false, source, ": cannot be written as tokenizer.json, a token is not valid UTF-8: ", e.what());
  }
}

}  // namespace

std::string BpeTokenizer::to_tokenizer_json() const {
  const detail::BpeSpec& s = spec();
  // Each token text once, under the id encode gives it (the last id holding it, as BpeTokenizer's
  // table); empty texts (ids without a token) are left out.
  json vocab = json::object();
  for (size_t id = 0; id < s.tokens.size(); ++id) {
    if (s.present[id] && !s.tokens[id].empty()) vocab[s.tokens[id]] = static_cast<int64_t>(id);
  }
  json merges = json::array();
  for (const auto& [a, b] : s.merges) merges.push_back(json::array({a, b}));
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", s.unk_id >= 0 ? json(s.tokens[s.unk_id]) : json()},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", s.fuse_unk},
                {"byte_fallback", false},
                {"ignore_merges", s.ignore_merges},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  json added = json::array();
  for (const auto& a : s.added) {
    const auto it = model["vocab"].find(a.content);
    if (it != model["vocab"].end() && it->get<int64_t>() != a.id) continue;  // shadowed by a later id
    added.push_back({{"id", a.id},
                     {"content", a.content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", a.normalized},
                     {"special", a.special}});
  }
  json pre = json::array();
  bool byte_level = false;
  for (const auto& sp : s.splits) {
    pre.push_back(pre_tokenizer_of(sp, s.source));
    byte_level = byte_level || sp.kind == BpeSplit::Kind::kByteLevel;
  }
  TORCH_CHECK(byte_level, s.source, ": no ByteLevel step among the pre-tokenizers; cannot write a tokenizer.json");
  const json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre.size() == 1 ? pre[0] : json{{"type", "Sequence"}, {"pretokenizers", pre}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", std::move(model)}};
  return dump_checked(j, s.source);
}

std::string BpeTokenizer::to_tokenizer_config_json() const {
  const detail::BpeSpec& s = spec();
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"clean_up_tokenization_spaces", false},
                 {"add_bos_token", false},
                 {"add_eos_token", false}};
  if (s.bos_id >= 0) config["bos_token"] = s.tokens[s.bos_id];
  if (s.eos_id >= 0) config["eos_token"] = s.tokens[s.eos_id];
  if (s.unk_id >= 0) config["unk_token"] = s.tokens[s.unk_id];
  return dump_checked(config, s.source, 2);
}

void save_hf_tokenizer(const BpeTokenizer& tok, const std::string& dir) {
  const std::string json_text = tok.to_tokenizer_json(), config_text = tok.to_tokenizer_config_json();
  make_directories(dir);
  write_text_file(dir + "/tokenizer.json", json_text);
  write_text_file(dir + "/tokenizer_config.json", config_text);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const std::string& path) {
  detail::BpeSpec spec;
  try {
    spec = spec_of_json(path);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, path, ": malformed tokenizer.json: ", e.what());
  }
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(spec));
}

}  // namespace edkm
