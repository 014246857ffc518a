#include "edkm/palettizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <iomanip>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "dkm/internal.h"
#include "edkm/safetensors.h"
#include "io/safetensors_core.h"
#include "io/torch_io.h"

namespace edkm {
namespace {

using nlohmann::json;

// The `weight` member a layer's forward reads, and the short type name; nullptr if unsupported.
std::pair<at::Tensor*, std::string> weight_member(torch::nn::Module& m) {
  if (auto* l = dynamic_cast<torch::nn::LinearImpl*>(&m)) return {&l->weight, "Linear"};
  if (auto* e = dynamic_cast<torch::nn::EmbeddingImpl*>(&m)) return {&e->weight, "Embedding"};
  if (auto* c = dynamic_cast<torch::nn::Conv1dImpl*>(&m)) return {&c->weight, "Conv1d"};
  if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(&m)) return {&c->weight, "Conv2d"};
  return {nullptr, ""};
}

json options_json(const DKMOptions& o) {
  return json{{"bits", o.bits()},
              {"tau", o.tau()},
              {"max_iter", o.max_iter()},
              {"epsilon", o.epsilon()},
              {"zero_threshold", o.zero_threshold()},
              {"prune_threshold", o.prune_threshold()},
              {"enforce_zero", o.enforce_zero()},
              {"granularity", to_string(o.granularity())},
              {"group_size", o.group_size()},
              {"per_channel_scale", o.per_channel_scale()},
              {"scale_scheme", to_string(o.scale_scheme())},
              {"cluster_dim", o.cluster_dim()},
              {"milestone", o.milestone()},
              {"weight_threshold", o.weight_threshold()},
              {"init", to_string(o.init())},
              {"opt1d_max_unique", o.opt1d_max_unique()},
              {"init_max_iter", o.init_max_iter()},
              {"seed", o.seed()},
              {"engine", to_string(o.engine())},
              {"table_fp32_as_bf16", o.table_fp32_as_bf16()}};
}

std::string human_bytes(int64_t b) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(b >= (1 << 20) ? 2 : 1);
  if (b >= (1 << 20)) {
    s << static_cast<double>(b) / (1 << 20) << " MiB";
  } else {
    s << static_cast<double>(b) / 1024 << " KiB";
  }
  return s.str();
}

}  // namespace

// --- options -----------------------------------------------------------------------------------

const std::vector<std::string>& PalettizerOptions::supported_types() {
  static const std::vector<std::string> types = {"Linear", "Embedding", "Conv1d", "Conv2d"};
  return types;
}

PalettizerOptions& PalettizerOptions::module_type(const std::string& type, std::optional<DKMOptions> options) {
  const auto& known = supported_types();
  TORCH_CHECK(std::find(known.begin(), known.end(), type) != known.end(), "edkm: PalettizerOptions: module type '",
              type, "' is not supported; supported: Linear, Embedding, Conv1d, Conv2d");
  if (options) options->validate();
  types_.emplace_back(type, std::move(options));
  return *this;
}

PalettizerOptions& PalettizerOptions::module_name(const std::string& pattern, std::optional<DKMOptions> options) {
  try {
    std::regex check(pattern);
  } catch (const std::regex_error& e) {
    TORCH_CHECK(false, "edkm: PalettizerOptions: '", pattern, "' is not a valid regular expression (", e.what(), ")");
  }
  if (options) options->validate();
  names_.emplace_back(pattern, std::move(options));
  return *this;
}

std::optional<DKMOptions> PalettizerOptions::resolve(const std::string& path, const std::string& type) const {
  for (const auto& [pattern, o] : names_) {
    if (std::regex_match(path, std::regex(pattern))) return o;
  }
  // The last configuration of a type wins, like assigning a dict entry twice.
  for (auto it = types_.rbegin(); it != types_.rend(); ++it) {
    if (it->first == type) return it->second;
  }
  return global_;
}

// --- report ------------------------------------------------------------------------------------

std::string PalettizerReport::to_string() const {
  std::vector<std::vector<std::string>> rows = {
      {"layer", "shape", "bits", "LUT", "unique", "engine", "dense", "palettized", "ratio"}};
  int64_t dense = 0, packed = 0;
  for (const auto& l : layers) {
    std::ostringstream shape, ratio;
    for (size_t i = 0; i < l.shape.size(); ++i) shape << (i ? "x" : "") << l.shape[i];
    ratio << std::fixed << std::setprecision(1) << static_cast<double>(l.dense_bytes) / l.packed_bytes << "x";
    rows.push_back({l.name.empty() ? "(root)" : l.name, shape.str(), std::to_string(l.bits), std::to_string(l.lut_size),
                    l.unique_values < 0 ? "-" : std::to_string(l.unique_values), l.engine, human_bytes(l.dense_bytes),
                    human_bytes(l.packed_bytes), ratio.str()});
    dense += l.dense_bytes;
    packed += l.packed_bytes;
  }
  if (!layers.empty()) {
    std::ostringstream ratio;
    ratio << std::fixed << std::setprecision(1) << static_cast<double>(dense) / packed << "x";
    rows.push_back({"total", "", "", "", "", "", human_bytes(dense), human_bytes(packed), ratio.str()});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  size_t total = 0;
  for (auto w : width) total += w + 2;
  const std::string rule(total - 2, '-');
  std::ostringstream out;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i == 1 || (i + 1 == rows.size() && !layers.empty())) out << rule << "\n";
    for (size_t c = 0; c < rows[i].size(); ++c) {
      out << (c ? "  " : "") << (c == 0 ? std::left : std::right) << std::setw(static_cast<int>(width[c]))
          << rows[i][c];
    }
    out << "\n";
  }
  return out.str();
}

std::ostream& operator<<(std::ostream& os, const PalettizerReport& r) { return os << r.to_string(); }

// --- palettizer --------------------------------------------------------------------------------

Palettizer::Palettizer(std::shared_ptr<torch::nn::Module> model, PalettizerOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  TORCH_CHECK(model_, "edkm: Palettizer needs a module");
  for (const auto& item : model_->named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    auto [member, type] = weight_member(*item.value());
    if (!member) continue;
    auto o = options_.resolve(item.key(), type);
    if (!o) continue;
    const auto own = item.value()->named_parameters(/*recurse=*/false);
    const at::Tensor* param = own.find("weight");
    TORCH_CHECK(param && param->defined() && member->is_same(*param), "edkm: Palettizer: layer '", item.key(),
                "' has no registered `weight` parameter matching its member");
    if (param->numel() <= o->weight_threshold()) continue;
    try {
      ClusterLayout::of(*param, *o);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "edkm: Palettizer: layer '", item.key(), "' (", type, " ", param->sizes(),
                  ") cannot be clustered with its options: ", e.what_without_backtrace());
    }
    Layer l;
    l.path = item.key();
    l.type = type;
    l.module = item.value();
    l.member = member;
    l.parameter = *param;
    l.dkm = DKM(*o);
    layers_.push_back(std::move(l));
  }
}

Palettizer::Scope::Scope(Palettizer* owner) : owner_(owner) {
  TORCH_CHECK(!owner->scope_open_, "edkm: Palettizer::clustered(): a scope is already open (scopes do not nest)");
  owner->scope_open_ = true;
  if (owner->finalized_) return;
  try {
    const bool training = owner->model_->is_training();
    for (auto& l : owner->layers_) {
      TORCH_CHECK(l.member->is_same(l.parameter), "edkm: Palettizer: the `weight` of layer '", l.path,
                  "' was replaced since the palettizer was built");
      l.dkm->train(training);
      at::Tensor clustered = l.dkm->forward(l.parameter);
      *l.member = clustered;
      ++swapped_;
    }
  } catch (...) {
    restore();
    throw;
  }
}

Palettizer::Scope::Scope(Scope&& other) noexcept : owner_(other.owner_), swapped_(other.swapped_) {
  other.owner_ = nullptr;
  other.swapped_ = 0;
}

void Palettizer::Scope::restore() noexcept {
  if (!owner_) return;
  for (size_t i = 0; i < swapped_; ++i) *owner_->layers_[i].member = owner_->layers_[i].parameter;
  swapped_ = 0;
  owner_->scope_open_ = false;
  owner_ = nullptr;
}

Palettizer::Scope::~Scope() { restore(); }

Palettizer::Scope Palettizer::clustered() { return Scope(this); }

void Palettizer::step() {
  ++step_;
  for (auto& l : layers_) l.dkm->step();
}

const std::map<std::string, Palette>& Palettizer::finalize() {
  TORCH_CHECK(!scope_open_, "edkm: Palettizer::finalize() inside a clustered() scope");
  at::NoGradGuard no_grad;
  palettes_.clear();
  for (auto& l : layers_) {
    Palette p = l.dkm->finalize(l.parameter.detach());
    l.parameter.copy_(p.decompress().to(l.parameter.device()));
    palettes_[tensor_name(l)] = std::move(p);
  }
  finalized_ = true;
  return palettes_;
}

std::string Palettizer::tensor_name(const Layer& l) const { return l.path.empty() ? "weight" : l.path + ".weight"; }

CompressedCheckpoint Palettizer::compressed_checkpoint() const {
  TORCH_CHECK(finalized_, "edkm: Palettizer: call finalize() before exporting a compressed checkpoint");
  CompressedCheckpoint ckpt;
  ckpt.palettes = palettes_;
  for (const auto& item : model_->named_parameters(/*recurse=*/true)) {
    if (!palettes_.count(item.key())) ckpt.tensors[item.key()] = item.value().detach();
  }
  for (const auto& item : model_->named_buffers(/*recurse=*/true)) ckpt.tensors[item.key()] = item.value().detach();
  return ckpt;
}

void Palettizer::save_compressed(const std::string& path) const {
  edkm::save_compressed(path, compressed_checkpoint());
}

// State file: tensors "<layer>.centroids" / "<layer>.scale" (when set), metadata "edkm.state",
// "edkm.step", "edkm.finalized" and per layer "edkm.layer.<layer>" = {"step", "options"}.
void Palettizer::save_state(const std::string& path) const {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> meta = {{"edkm.state", "palettizer/1"},
                                             {"edkm.step", std::to_string(step_)},
                                             {"edkm.finalized", finalized_ ? "true" : "false"}};
  for (const auto& l : layers_) {
    if (l.dkm->centroids().numel()) tensors.emplace_back(l.path + ".centroids", l.dkm->centroids());
    if (l.dkm->scale().numel()) tensors.emplace_back(l.path + ".scale", l.dkm->scale());
    meta["edkm.layer." + l.path] =
        json{{"step", l.dkm->current_step()}, {"options", options_json(l.dkm->options)}}.dump();
  }
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  detail::write_safetensors(path, tensors, meta);
}

void Palettizer::load_state(const std::string& path) {
  TORCH_CHECK(!scope_open_, "edkm: Palettizer::load_state() inside a clustered() scope");
  detail::OpenSafetensors f(path);
  const auto& meta = f.header().metadata;
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    TORCH_CHECK(it != meta.end(), "edkm: ", path, " is not a palettizer state file: no '", key, "' entry");
    return it->second;
  };
  TORCH_CHECK(get("edkm.state") == "palettizer/1", "edkm: ", path, ": unsupported state version '", get("edkm.state"),
              "'");
  size_t stored_layers = 0;
  for (const auto& [k, v] : meta) stored_layers += k.compare(0, 11, "edkm.layer.") == 0;
  TORCH_CHECK(stored_layers == layers_.size(), "edkm: ", path, " holds ", stored_layers,
              " layers but this palettizer has ", layers_.size());
  struct Loaded {
    int64_t step;
    at::Tensor centroids, scale;
  };
  std::vector<Loaded> loaded;
  for (const auto& l : layers_) {
    json j;
    try {
      j = json::parse(get("edkm.layer." + l.path));
      const json expect = options_json(l.dkm->options);
      for (const auto& [k, v] : expect.items()) {
        TORCH_CHECK(j.at("options").contains(k) && j["options"][k] == v, "edkm: ", path, ": layer '", l.path,
                    "' was saved with ", k, " = ", j["options"].value(k, json()).dump(), " but is configured with ",
                    v.dump());
      }
      Loaded x{j.at("step").get<int64_t>(), {}, {}};
      const auto& names = f.header().tensors;
      if (names.count(l.path + ".centroids")) x.centroids = f.read(l.path + ".centroids");
      if (names.count(l.path + ".scale")) x.scale = f.read(l.path + ".scale");
      if (x.centroids.defined()) {
        const auto layout = ClusterLayout::of(l.parameter.detach(), l.dkm->options);
        TORCH_CHECK(
            x.centroids.sizes() == at::IntArrayRef({layout.groups, l.dkm->options.n_clusters(), layout.cluster_dim}),
            "edkm: ", path, ": layer '", l.path, "' centroids have shape ", x.centroids.sizes());
      }
      loaded.push_back(std::move(x));
    } catch (const json::exception& e) {
      TORCH_CHECK(false, "edkm: ", path, ": layer '", l.path, "' entry is malformed (", e.what(), ")");
    }
  }
  int64_t step = 0;
  try {
    step = std::stoll(get("edkm.step"));
  } catch (const std::logic_error&) {
    TORCH_CHECK(false, "edkm: ", path, ": edkm.step is not an integer");
  }
  // All checks passed: apply.
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& dkm = layers_[i].dkm;
    dkm->set_step(loaded[i].step);
    auto buffers = dkm->named_buffers(/*recurse=*/false);
    if (loaded[i].centroids.defined()) buffers["centroids"].set_data(loaded[i].centroids);
    if (loaded[i].scale.defined()) buffers["scale"].set_data(loaded[i].scale);
  }
  step_ = step;
  finalized_ = get("edkm.finalized") == "true";
}

PalettizerReport Palettizer::report() const {
  PalettizerReport r;
  at::NoGradGuard no_grad;
  for (const auto& l : layers_) {
    const auto& o = l.dkm->options;
    const at::Tensor w = l.parameter.detach();
    const auto layout = ClusterLayout::of(w, o);
    LayerReport row;
    row.name = l.path;
    row.shape = w.sizes().vec();
    row.bits = o.bits();
    row.lut_size = layout.groups * o.n_clusters() * layout.cluster_dim;
    try {
      row.engine = to_string(detail::resolve_engine(w, layout, o));
    } catch (const c10::Error&) {
      row.engine = to_string(o.engine()) + " (unavailable)";
    }
    row.dense_bytes = static_cast<int64_t>(w.nbytes());
    row.packed_bytes = static_cast<int64_t>(io::packed_bytes(static_cast<uint64_t>(layout.groups * layout.vectors),
                                                             static_cast<int>(o.bits()))) +
                       row.lut_size * static_cast<int64_t>(w.element_size()) +
                       (o.per_channel_scale() ? layout.rows * 4 : 0);
    auto it = palettes_.find(tensor_name(l));
    at::Tensor hard;
    if (finalized_ && it != palettes_.end()) {
      hard = w;
    } else if (l.dkm->centroids().numel()) {  // no side effect: the layer's own centroids, as they are
      const at::Tensor s = o.per_channel_scale() ? l.dkm->scale() : at::Tensor();
      hard = Palette::from_centroids(w, l.dkm->centroids().to(w.device()), o, s).decompress();
    }
    if (hard.defined()) row.unique_values = std::get<0>(at::_unique(hard)).numel();
    r.layers.push_back(std::move(row));
  }
  return r;
}

std::vector<std::string> Palettizer::layer_names() const {
  std::vector<std::string> names;
  for (const auto& l : layers_) names.push_back(l.path);
  return names;
}

const Palettizer::Layer& Palettizer::find(const std::string& layer) const {
  for (const auto& l : layers_) {
    if (l.path == layer) return l;
  }
  TORCH_CHECK(false, "edkm: Palettizer: no selected layer '", layer, "'");
}

DKM Palettizer::dkm(const std::string& layer) const { return find(layer).dkm; }

}  // namespace edkm
