#include "edkm/models/llama_io.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include "edkm/io/file_io.h"

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "io/torch_io.h"
#include "util/json_parse.h"

namespace edkm {

namespace {

using nlohmann::json;

std::string shape_string(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Layer index of "model.layers.<i>.…", or -1.
int64_t layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  try {
    return std::stoll(name.substr(prefix.size()));
  } catch (...) {
    return -1;
  }
}

// tensor name -> shard file (relative to dir).
std::map<std::string, std::string> weight_files(const std::string& dir) {
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  std::map<std::string, std::string> out;
  if (is_file(index)) {
    const json j = detail::parse_json_bounded(read_text_file(index), index);
    TORCH_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
                ": expected an object with a \"weight_map\" object");
    for (const auto& [name, file] : j["weight_map"].items()) {
      TORCH_CHECK(file.is_string(), index, ": the shard of '", name, "' is not a string");
      const std::string f = file.get<std::string>();
      TORCH_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..", index, ": shard name '", f,
                  "' of '", name, "' is not a file name in the checkpoint directory");
      out[name] = f;
    }
    std::set<std::string> shards;
    for (const auto& [name, f] : out) shards.insert(f);
    for (const auto& f : shards) {
      TORCH_CHECK(is_file(dir + "/" + f), "shard ", f, " listed in ", index, " is missing from ", dir);
    }
    return out;
  }
  TORCH_CHECK(is_file(single), "no weights in ", dir, ": expected model.safetensors or model.safetensors.index.json");
  detail::OpenSafetensors file(single);
  for (const auto& [name, entry] : file.header().tensors) out[name] = "model.safetensors";
  return out;
}

}  // namespace

LlamaConfig load_hf_llama_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  TORCH_CHECK(is_file(path), "no config.json in ", dir);
  try {
    return LlamaConfig::from_json(read_text_file(path));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, path, ": ", e.msg());
  }
}

LlamaForCausalLM load_hf_llama(const std::string& dir, const LlamaLoadOptions& options) {
  LlamaConfig config = load_hf_llama_config(dir);
  TORCH_CHECK(options.num_layers() >= 0 && options.num_layers() <= config.num_hidden_layers(), "num_layers ",
              options.num_layers(), " must be in 0..", config.num_hidden_layers());
  if (options.num_layers() > 0) config.num_hidden_layers(options.num_layers());
  config.fused_swiglu(options.fused_swiglu()).checkpoint_layers(options.checkpoint_layers());
  LlamaForCausalLM model(config);
  model->to(options.dtype());
  load_hf_llama_weights(model, dir);
  return model;
}

void load_hf_llama_weights(LlamaForCausalLM& model, const std::string& dir) {
  const auto files = weight_files(dir);
  std::map<std::string, at::Tensor> params;
  for (const auto& p : model->named_parameters()) params[p.key()] = p.value();
  for (const auto& b : model->named_buffers()) params[b.key()] = b.value();
  const int64_t layers = model->config.num_hidden_layers();
  // Group by shard so that each file is opened once; each tensor is read and copied on its own.
  std::map<std::string, std::vector<std::string>> by_file;
  for (const auto& [name, file] : files) {
    static const std::string kRotary = ".rotary_emb.inv_freq";  // a buffer of old exports, recomputed here
    if (name.size() > kRotary.size() && name.compare(name.size() - kRotary.size(), kRotary.size(), kRotary) == 0) {
      continue;
    }
    if (params.count(name) == 0) {
      const int64_t layer = layer_of(name);
      if (layer >= layers) continue;  // a truncated stack (LlamaLoadOptions::num_layers)
      TORCH_CHECK(false, "unexpected tensor '", name, "' in ", dir, "/", file, ": the model has no such parameter");
    }
    by_file[file].push_back(name);
  }
  std::set<std::string> loaded;
  at::NoGradGuard ng;
  for (const auto& [file, names] : by_file) {
    detail::OpenSafetensors shard(dir + "/" + file);
    for (const auto& name : names) {
      auto it = shard.header().tensors.find(name);
      TORCH_CHECK(it != shard.header().tensors.end(), "tensor '", name, "' is not in ", dir, "/", file,
                  " although the index lists it there");
      at::Tensor& dst = params.at(name);
      std::vector<int64_t> shape(it->second.shape.begin(), it->second.shape.end());
      TORCH_CHECK(at::IntArrayRef(shape) == dst.sizes(), "tensor '", name, "' in ", dir, "/", file, " has shape ",
                  shape_string(shape), " but the model expects ", shape_string(dst.sizes()));
      dst.copy_(shard.read(name));
      loaded.insert(name);
    }
  }
  for (const auto& [name, t] : params) {
    TORCH_CHECK(loaded.count(name), "tensor '", name, "' is missing from the checkpoint in ", dir);
  }
}

void save_hf_llama(const LlamaForCausalLM& model, const std::string& dir, const LlamaSaveOptions& options) {
  TORCH_CHECK(options.max_shard_bytes() > 0, "max_shard_bytes must be positive");
  make_directories(dir);
  // Shards in parameter order, a new one when the next tensor would not fit.
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (const auto& p : model->named_parameters()) {
    at::Tensor t = p.value().detach();
    if (options.dtype()) t = t.to(*options.dtype());
    const int64_t bytes = static_cast<int64_t>(t.nbytes());
    if (in_shard > 0 && in_shard + bytes > options.max_shard_bytes()) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().emplace_back(p.key(), t);
    in_shard += bytes;
    total += bytes;
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    detail::write_safetensors(dir + "/model.safetensors", shards[0], metadata);
    std::remove((dir + "/model.safetensors.index.json").c_str());
  } else {
    json map = json::object();
    const size_t n = shards.size();
    for (size_t i = 0; i < n; ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, n);
      detail::write_safetensors(dir + "/" + name, shards[i], metadata);
      for (const auto& [tensor, t] : shards[i]) map[tensor] = name;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", map}};
    write_text_file(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
    std::remove((dir + "/model.safetensors").c_str());
  }
  json config = json::parse(model->config.to_json());
  const at::ScalarType dtype = options.dtype() ? *options.dtype() : model->model->norm->weight.scalar_type();
  config["torch_dtype"] = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  write_text_file(dir + "/config.json", config.dump(2) + "\n");
}

}  // namespace edkm
