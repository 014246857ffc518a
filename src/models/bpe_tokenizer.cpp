// Byte-level BPE: the checks and compilation of a BpeSpec, encode (added tokens, regex splits,
// byte-to-unicode, merges by rank) and decode; BpeVocab (GGUF metadata) and its pre-tokenizer
// names. tokenizer.json is read by bpe_tokenizer_json.cpp.
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "edkm/models/tokenizer.h"
#include "models/bpe_spec.h"

#if defined(EDKM_WITH_PCRE2)
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace edkm {
namespace {

using detail::BpeSplit;

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
/// U+0100 upwards, so every byte is one visible character.
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cp[b] = printable ? b : next++;
  }
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

/// The bytes a vocabulary token stands for: through the byte-to-unicode table when every character
/// is in it (Hugging Face's ByteLevel decoder), else the token's own UTF-8 (added tokens such as
/// "\n\n" written as text).
std::string token_bytes(const std::string& token, const std::unordered_map<uint32_t, uint8_t>& byte_of) {
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const auto c = static_cast<unsigned char>(token[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c >> 5) == 0x6 && i + 1 < token.size()) {
      cp = ((c & 0x1F) << 6) | (token[i + 1] & 0x3F), len = 2;
    } else if ((c >> 4) == 0xE && i + 2 < token.size()) {
      cp = ((c & 0x0F) << 12) | ((token[i + 1] & 0x3F) << 6) | (token[i + 2] & 0x3F), len = 3;
    } else {
      return token;  // 4-byte or malformed: never a byte-to-unicode character
    }
    const auto it = byte_of.find(cp);
    if (it == byte_of.end()) return token;
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return out;
}

/// The unknown token for bytes without one (id -1: dropped).
struct Unknown {
  int32_t id;
  bool fuse;
};

/// (left id, right id) -> (rank, merged id).
using MergeMap = std::unordered_map<uint64_t, std::pair<int32_t, int32_t>>;
uint64_t merge_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

/// Leftmost-longest matching of whole tokens in raw text (Hugging Face's AddedVocabulary).
struct AddedMatcher {
  std::unordered_map<std::string, int32_t> ids;
  std::vector<size_t> lengths;  // distinct, longest first
  std::array<bool, 256> first{};

  void add(const std::string& content, int32_t id) {
    ids[content] = id;
    first[static_cast<unsigned char>(content[0])] = true;
    if (std::find(lengths.begin(), lengths.end(), content.size()) == lengths.end()) lengths.push_back(content.size());
    std::sort(lengths.rbegin(), lengths.rend());
  }
};

/// A piece of the input: raw text to tokenize (id < 0) or a token matched whole.
struct Segment {
  std::string_view text;
  int32_t id;
};

void split_added(const AddedMatcher& m, std::string_view text, std::vector<Segment>& out) {
  if (m.ids.empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return;
  }
  size_t gap = 0, i = 0;
  std::string probe;
  while (i < text.size()) {
    int32_t found = -1;
    size_t found_len = 0;
    if (m.first[static_cast<unsigned char>(text[i])]) {
      for (size_t len : m.lengths) {
        if (i + len > text.size()) continue;
        probe.assign(text.data() + i, len);
        const auto it = m.ids.find(probe);
        if (it != m.ids.end()) {
          found = it->second, found_len = len;
          break;
        }
      }
    }
    if (found < 0) {
      ++i;
      continue;
    }
    if (i > gap) out.push_back({text.substr(gap, i - gap), -1});
    out.push_back({text.substr(i, found_len), found});
    i += found_len;
    gap = i;
  }
  if (gap < text.size()) out.push_back({text.substr(gap), -1});
}

}  // namespace

#if defined(EDKM_WITH_PCRE2)
namespace {
struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
}  // namespace
#endif

struct BpeTokenizer::State {
  std::string source, kind;
  int64_t n = 0;
  std::vector<std::string> bytes_of;  // id -> the bytes it decodes to
  std::vector<bool> present;
  std::unordered_map<std::string, int32_t> text_to_id;  // vocabulary form -> id
  std::unordered_map<std::string, int32_t> word_to_id;  // bytes -> id (ignore_merges)
  std::array<int32_t, 256> byte_id{};
  MergeMap merges;
  AddedMatcher added_raw, added_normalized;
  struct Split {
    BpeSplit spec;
#if defined(EDKM_WITH_PCRE2)
    std::unique_ptr<pcre2_code, CodeDeleter> code;  // null: prefix space only
#endif
  };
  std::vector<Split> splits;
  bool ignore_merges = false;
  Unknown unk{-1, false};
  std::vector<uint8_t> missing_bytes;
  int64_t bos = -1, eos = -1;
  detail::BpeSpec spec;  // what it was built from (present filled in), for to_tokenizer_json
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // word bytes -> ids
};

#if defined(EDKM_WITH_PCRE2)
bool has_pcre2() { return true; }

namespace {

struct Candidate {
  int32_t rank, pos, merged;
  // Heap order: lowest rank first, then leftmost (as Hugging Face's Word::merge_all).
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};
struct Symbol {
  int32_t id, prev, next, len;
};

/// Scratch space of one encode call.
struct Workspace {
  pcre2_match_data* md = nullptr;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> spans;
  std::deque<std::string> owned;  // pieces with a prefix space
};

}  // namespace

namespace {
/// Hugging Face's split of one piece: matches and the gaps between them, then the behaviour.
void split_piece(const std::string& source, const pcre2_code* code, const BpeSplit& sp, std::string_view p,
                 Workspace& ws, std::vector<std::string_view>& out) {
  auto& spans = ws.spans;
  spans.clear();
  size_t off = 0, last = 0;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(p.data());
  while (off <= p.size()) {
    const int rc = pcre2_match(code, subject, p.size(), off, 0, ws.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      TORCH_CHECK(false, source, ": pre-tokenizer regex '", sp.pattern, "' failed: ", reinterpret_cast<char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ws.md);
    const size_t s = ov[0], e = ov[1];
    if (e == s) {  // empty matches split nothing
      off = s + 1;
      while (off < p.size() && (static_cast<unsigned char>(p[off]) & 0xC0) == 0x80) ++off;
      continue;
    }
    if (s > last) spans.push_back({{last, s}, false});
    spans.push_back({{s, e}, true});
    last = off = e;
  }
  if (last < p.size()) spans.push_back({{last, p.size()}, false});
  if (sp.invert) {
    for (auto& s : spans) s.second = !s.second;
  }
  using B = BpeSplit::Behavior;
  std::vector<std::pair<size_t, size_t>> pieces;
  bool previous_match = false;
  switch (sp.behavior) {
    case B::kRemoved:
      for (const auto& [r, m] : spans) {
        if (!m) pieces.push_back(r);
      }
      break;
    case B::kIsolated:
      for (const auto& [r, m] : spans) pieces.push_back(r);
      break;
    case B::kMergedWithPrevious:
      for (const auto& [r, m] : spans) {
        if (m && !previous_match && !pieces.empty()) {
          pieces.back().second = r.second;
        } else {
          pieces.push_back(r);
        }
        previous_match = m;
      }
      break;
    case B::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->second && !previous_match && !pieces.empty()) {
          pieces.back().first = it->first.first;
        } else {
          pieces.push_back(it->first);
        }
        previous_match = it->second;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    case B::kContiguous:
      for (const auto& [r, m] : spans) {
        if (m == previous_match && !pieces.empty()) {
          pieces.back().second = r.second;
        } else {
          pieces.push_back(r);
        }
        previous_match = m;
      }
      break;
  }
  for (const auto& r : pieces) {
    if (r.second > r.first) out.push_back(p.substr(r.first, r.second - r.first));
  }
}

/// Merges by rank over a linked list of symbols, one per byte, with a heap of candidate pairs.
void merge_word(const MergeMap& merges, const std::array<int32_t, 256>& byte_id, Unknown unk, std::string_view word,
                Workspace& ws, std::vector<int32_t>& ids) {
  auto& sym = ws.symbols;
  auto& heap = ws.heap;
  sym.clear();
  heap.clear();
  bool pending_unk = false;  // the last symbol is an unknown byte (fuse_unk extends it)
  for (char c : word) {
    int32_t id = byte_id[static_cast<unsigned char>(c)];
    if (id < 0) {
      if (unk.id < 0) continue;  // dropped, as Hugging Face without unk_token
      if (unk.fuse && pending_unk) {
        ++sym.back().len;
        continue;
      }
      id = unk.id;
      pending_unk = true;
    } else {
      pending_unk = false;
    }
    sym.push_back({id, static_cast<int32_t>(sym.size()) - 1, -1, 1});
    if (sym.size() > 1) sym[sym.size() - 2].next = static_cast<int32_t>(sym.size()) - 1;
  }
  const auto n = static_cast<int32_t>(sym.size());
  auto push = [&](int32_t left) {
    if (left < 0 || sym[left].next < 0) return;
    const auto it = merges.find(merge_key(sym[left].id, sym[sym[left].next].id));
    if (it == merges.end()) return;
    heap.push_back({it->second.first, left, it->second.second});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const auto it = merges.find(merge_key(left.id, right.id));
    if (it == merges.end() || it->second.second != top.merged) continue;  // stale
    left.id = top.merged;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    push(left.prev);
    push(top.pos);
  }
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
}

}  // namespace

std::vector<int64_t> BpeTokenizer::encode(const std::string& text) const {
  const State& st = *state_;
  Workspace ws;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create(1, nullptr));
  TORCH_CHECK(md, "BpeTokenizer: out of memory for PCRE2 match data");
  ws.md = md.get();

  std::vector<Segment> first, segments;
  split_added(st.added_raw, text, first);
  for (const auto& s : first) {
    if (s.id >= 0) {
      segments.push_back(s);
    } else {
      split_added(st.added_normalized, s.text, segments);
    }
  }
  std::vector<int64_t> out;
  out.reserve(text.size() / 3);
  std::vector<std::string_view> pieces, next;
  std::vector<int32_t> ids;
  std::string key;
  for (const auto& seg : segments) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    pieces.assign(1, seg.text);
    for (const auto& split : st.splits) {
      if (split.spec.prefix_space) {
        for (auto& p : pieces) {
          if (p.empty() || p[0] != ' ') p = ws.owned.emplace_back(" " + std::string(p));
        }
      }
      if (!split.code) continue;
      next.clear();
      for (auto p : pieces) split_piece(st.source, split.code.get(), split.spec, p, ws, next);
      std::swap(pieces, next);
    }
    for (auto p : pieces) {
      if (p.size() == 1 && st.byte_id[static_cast<unsigned char>(p[0])] >= 0) {
        out.push_back(st.byte_id[static_cast<unsigned char>(p[0])]);
        continue;
      }
      key.assign(p.data(), p.size());
      {
        std::lock_guard<std::mutex> lock(st.cache_mutex);
        const auto it = st.cache.find(key);
        if (it != st.cache.end()) {
          out.insert(out.end(), it->second.begin(), it->second.end());
          continue;
        }
      }
      if (st.ignore_merges) {
        const auto it = st.word_to_id.find(key);
        if (it != st.word_to_id.end()) {
          out.push_back(it->second);
          continue;
        }
      }
      ids.clear();
      merge_word(st.merges, st.byte_id, st.unk, p, ws, ids);
      out.insert(out.end(), ids.begin(), ids.end());
      std::lock_guard<std::mutex> lock(st.cache_mutex);
      if (st.cache.size() >= (1u << 16)) st.cache.clear();  // bounded: a long tail of rare words
      st.cache.emplace(key, ids);
    }
  }
  return out;
}
#else
bool has_pcre2() { return false; }
std::vector<int64_t> BpeTokenizer::encode(const std::string&) const { return {}; }
#endif

BpeTokenizer::BpeTokenizer(const detail::BpeSpec& spec) : state_(std::make_unique<State>()) {
  State& st = *state_;
  st.source = spec.source;
  st.kind = spec.kind;
#if !defined(EDKM_WITH_PCRE2)
  TORCH_CHECK(false, "edkm was built without PCRE2 (libpcre2-dev), which byte-level BPE pre-tokenization needs: ",
              "cannot load ", spec.source);
#endif
  const auto& src = spec.source;
  st.n = static_cast<int64_t>(spec.tokens.size());
  TORCH_CHECK(st.n > 0, src, ": the vocabulary is empty");
  TORCH_CHECK(st.n < (int64_t{1} << 31), src, ": ", st.n, " tokens is more than int32 ids hold");
  TORCH_CHECK(!spec.merges.empty(), src, ": the BPE model has no merges");

  const auto cps = byte_to_codepoint();
  std::unordered_map<uint32_t, uint8_t> byte_of;
  for (int b = 0; b < 256; ++b) byte_of[cps[b]] = static_cast<uint8_t>(b);
  st.present = spec.present.empty() ? std::vector<bool>(spec.tokens.size(), true) : spec.present;
  st.bytes_of.resize(spec.tokens.size());
  std::vector<bool> is_added(spec.tokens.size(), false);
  for (const auto& a : spec.added) {
    TORCH_CHECK(a.id >= 0 && a.id < st.n, src, ": added token '", a.content, "' has id ", a.id,
                ", beyond the vocabulary of ", st.n, " tokens");
    TORCH_CHECK(!a.content.empty(), src, ": added token ", a.id, " is empty");
    is_added[a.id] = true;
  }
  for (int64_t id = 0; id < st.n; ++id) {
    if (!st.present[id]) continue;
    const auto& t = spec.tokens[id];
    st.text_to_id[t] = static_cast<int32_t>(id);
    st.bytes_of[id] = token_bytes(t, byte_of);
    if (!is_added[id]) st.word_to_id[st.bytes_of[id]] = static_cast<int32_t>(id);
  }
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, cps[b]);
    const auto it = st.text_to_id.find(ch);
    st.byte_id[b] = it == st.text_to_id.end() ? -1 : it->second;
    if (it == st.text_to_id.end()) st.missing_bytes.push_back(static_cast<uint8_t>(b));
  }
  // Real vocabularies lack a few bytes (SmolLM2: 21, those never in UTF-8 and some controls);
  // one lacking most is not byte-level.
  TORCH_CHECK(st.missing_bytes.size() <= 128, src, ": the vocabulary has no token for ", st.missing_bytes.size(),
              " of the 256 bytes: not a byte-level BPE vocabulary");
  TORCH_CHECK(spec.unk_id >= -1 && spec.unk_id < st.n && (spec.unk_id < 0 || st.present[spec.unk_id]), src,
              ": unknown-token id ", spec.unk_id, " is beyond the vocabulary of ", st.n, " tokens");
  st.unk = {static_cast<int32_t>(spec.unk_id), spec.fuse_unk};
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto& [a, b] = spec.merges[r];
    const auto ia = st.text_to_id.find(a), ib = st.text_to_id.find(b), iab = st.text_to_id.find(a + b);
    for (const auto* part : {&a, &b}) {
      TORCH_CHECK(st.text_to_id.count(*part), src, ": merge ", r, " '", a, " ", b, "' names '", *part,
                  "', which is not in the vocabulary");
    }
    TORCH_CHECK(iab != st.text_to_id.end(), src, ": merge ", r, " '", a, " ", b, "' makes '", a + b,
                "', which is not in the vocabulary");
    st.merges[merge_key(ia->second, ib->second)] = {static_cast<int32_t>(r), iab->second};  // later ranks win, as HF
  }
  for (const auto& a : spec.added) {
    (a.normalized ? st.added_normalized : st.added_raw).add(a.content, static_cast<int32_t>(a.id));
  }
  for (const auto* id : {&spec.bos_id, &spec.eos_id}) {
    TORCH_CHECK(*id >= -1 && *id < st.n && (*id < 0 || st.present[*id]), src, ": ", id == &spec.bos_id ? "BOS" : "EOS",
                " id ", *id, " is beyond the vocabulary of ", st.n, " tokens");
  }
  st.bos = spec.bos_id;
  st.eos = spec.eos_id;
  st.ignore_merges = spec.ignore_merges;
  st.spec = spec;
  st.spec.present = st.present;
#if defined(EDKM_WITH_PCRE2)
  for (const auto& sp : spec.splits) {
    State::Split s{sp, nullptr};
    if (!sp.pattern.empty()) {
      int err = 0;
      PCRE2_SIZE at = 0;
      // PCRE2_LITERAL allows no PCRE2_UCP (a plain string has no classes to widen).
      const uint32_t flags = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (sp.literal ? PCRE2_LITERAL : PCRE2_UCP);
      s.code.reset(
          pcre2_compile(reinterpret_cast<PCRE2_SPTR>(sp.pattern.data()), sp.pattern.size(), flags, &err, &at, nullptr));
      if (!s.code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        TORCH_CHECK(false, src, ": pre-tokenizer regex '", sp.pattern, "' does not compile at offset ", at, ": ",
                    reinterpret_cast<char*>(msg));
      }
      pcre2_jit_compile(s.code.get(), PCRE2_JIT_COMPLETE);  // when JIT is unavailable, the interpreter runs
    }
    st.splits.push_back(std::move(s));
  }
#endif
}

BpeTokenizer::~BpeTokenizer() = default;

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  const State& st = *state_;
  std::string out;
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < st.n && st.present[id], "BpeTokenizer (", st.source, "): id ", id,
                " is outside the vocabulary of ", st.n, " tokens");
    out += st.bytes_of[id];
  }
  return out;
}

int64_t BpeTokenizer::vocab_size() const { return state_->n; }
int64_t BpeTokenizer::bos_id() const { return state_->bos; }
int64_t BpeTokenizer::eos_id() const { return state_->eos; }
std::string BpeTokenizer::name() const {
  return "bpe:" + state_->source + " (" + std::to_string(state_->n) + " tokens, " + state_->kind + ")";
}
std::vector<uint8_t> BpeTokenizer::missing_bytes() const { return state_->missing_bytes; }
const detail::BpeSpec& BpeTokenizer::spec() const { return state_->spec; }
int64_t BpeTokenizer::token_to_id(const std::string& token) const {
  const auto it = state_->text_to_id.find(token);
  return it == state_->text_to_id.end() ? -1 : it->second;
}

namespace {

/// llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) as Hugging Face pre-tokenizers, ending
/// with the ByteLevel step (the byte-to-unicode mapping; with GPT-2's regex or none).
std::vector<BpeSplit> pre_tokenizer_splits(const std::string& pre, const std::string& source, bool& ignore_merges) {
  using B = BpeSplit::Behavior;
  using K = BpeSplit::Kind;
  ignore_merges = false;
  const BpeSplit byte_level_gpt2{detail::kGpt2Pattern, false, B::kIsolated, false, false, K::kByteLevel};
  if (pre == "gpt2") return {byte_level_gpt2};
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    ignore_merges = true;  // as Llama 3's tokenizer.json and llama.cpp
    // Llama 3's tokenizer.json: Split(its regex, Isolated) then ByteLevel(use_regex=false).
    return {{detail::kLlama3Pattern, false, B::kIsolated}, {"", false, B::kIsolated, false, false, K::kByteLevel}};
  }
  if (pre == "smollm") {
    // SmolLM's tokenizer.json: Digits(individual_digits) then ByteLevel's GPT-2 regex.
    return {{R"(\p{N})", false, B::kIsolated, false, false, K::kDigits}, byte_level_gpt2};
  }
  TORCH_CHECK(false, source, ": pre-tokenizer '", pre, "' (tokenizer.ggml.pre) is not supported; known: gpt2, ",
              "llama-bpe (llama3, llama-v3), smollm");
}

detail::BpeSpec spec_of(const BpeVocab& v) {
  detail::BpeSpec s;
  s.source = v.source;
  s.kind = "gguf pre " + v.pre;
  s.tokens = v.tokens;
  const auto n = static_cast<int64_t>(v.tokens.size());
  TORCH_CHECK(v.token_types.empty() || static_cast<int64_t>(v.token_types.size()) == n, v.source, ": ",
              v.token_types.size(), " token types for ", n, " tokens");
  for (int64_t id = 0; id < static_cast<int64_t>(v.token_types.size()); ++id) {
    const int32_t t = v.token_types[id];
    TORCH_CHECK(t >= 0 && t <= 6, v.source, ": token ", id, " has type ", t, " (known: 0..6)");
    if ((t == 3 || t == 4) && !v.tokens[id].empty()) s.added.push_back({v.tokens[id], id, false, t == 3});
  }
  s.merges.reserve(v.merges.size());
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const auto& m = v.merges[r];
    const size_t sp = m.find(' ', 1);
    TORCH_CHECK(sp != std::string::npos && sp + 1 < m.size(), v.source, ": merge ", r, " '", m,
                "' is not two tokens separated by a space");
    s.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  s.splits = pre_tokenizer_splits(v.pre, v.source, s.ignore_merges);
  s.bos_id = v.bos_id;
  s.eos_id = v.eos_id;
  return s;
}

}  // namespace

BpeTokenizer::BpeTokenizer(const BpeVocab& vocab) : BpeTokenizer(spec_of(vocab)) {}

}  // namespace edkm
