#pragma once
// JSON from a user's file (tokenizer.json, config.json, a weight index, a Palettizer state), nested
// at most `max_depth` levels. Deeper input is refused while it is parsed, so no deep value is ever
// built: copying, walking or destroying one recurses once per level, and a hostile file of 100,000
// levels overflowed the stack (a tokenizer.json's pre_tokenizer, copied by json::value()). Real files
// nest under 10 levels. (io/safetensors_core.cpp bounds its header the same way, without LibTorch.)
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <string>

namespace edkm::detail {

constexpr int kMaxJsonDepth = 64;

inline nlohmann::json parse_json_bounded(const std::string& text, const std::string& what,
                                         int max_depth = kMaxJsonDepth) {
  nlohmann::json::parser_callback_t limit = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    TORCH_CHECK(depth <= max_depth, what, " is nested deeper than ", max_depth, " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(text, limit);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, what, " is not valid JSON: ", e.what());
  }
}

}  // namespace edkm::detail
