#include "edkm/palettizer/palettizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <ATen/ops/full.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "dkm/internal.h"
#include "edkm/io/file_io.h"
#include "io/safetensors_core.h"
#include "io/torch_io.h"
#include "util/format.h"
#include "util/json_parse.h"
#include "util/member_swap.h"
#include "util/module_state.h"

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

// Every option by name (the object sorts its keys: the order below does not show).
json options_json(const DKMOptions& o) {
  return json{{"bits", o.bits()},
              {"tau", o.tau()},
              {"max_iter", o.max_iter()},
              {"epsilon", o.epsilon()},
              {"zero_threshold", o.zero_threshold()},
              {"prune_threshold", o.prune_threshold()},
              {"enforce_zero", o.enforce_zero()},
              {"group_size", o.group_size()},
              {"per_channel_scale", o.per_channel_scale()},
              {"cluster_dim", o.cluster_dim()},
              {"milestone", o.milestone()},
              {"weight_threshold", o.weight_threshold()},
              {"opt1d_max_unique", o.opt1d_max_unique()},
              {"init_max_iter", o.init_max_iter()},
              {"seed", o.seed()},
              {"table_fp32_as_bf16", o.table_fp32_as_bf16()},
              {"table_index_list", o.table_index_list()},
              // the enums by name
              {"granularity", to_string(o.granularity())},
              {"scale_scheme", to_string(o.scale_scheme())},
              {"init", to_string(o.init())},
              {"engine", to_string(o.engine())}};
}

using detail::human_bytes;

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

std::vector<std::string> PalettizerOptions::unmatched_patterns(const std::vector<std::string>& paths) const {
  std::vector<std::string> out;
  for (const auto& entry : names_) {
    const std::regex re(entry.first);
    if (std::none_of(paths.begin(), paths.end(), [&](const std::string& p) { return std::regex_match(p, re); }))
      out.push_back(entry.first);
  }
  return out;
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

// --- state ---------------------------------------------------------------------------------------

namespace {

// A child name for a module path: '.' is not allowed in module names.
std::string child_name(const std::string& path, const std::vector<std::string>& taken) {
  std::string name = path.empty() ? "_" : path;
  std::replace(name.begin(), name.end(), '.', '_');
  std::string unique = name;
  for (int i = 2; std::find(taken.begin(), taken.end(), unique) != taken.end(); ++i)
    unique = name + "_" + std::to_string(i);
  return unique;
}

json layers_json(const PalettizerStateImpl::Layers& layers) {
  json j = json::array();
  for (const auto& [path, o] : layers) j.push_back(json{{"layer", path}, {"options", options_json(o)}});
  return j;
}

}  // namespace

PalettizerStateImpl::PalettizerStateImpl(Layers layers, std::vector<ClusterLayout> layouts)
    : layers_(std::move(layers)), layouts_(std::move(layouts)) {
  TORCH_CHECK(layouts_.empty() || layouts_.size() == layers_.size(), "edkm: PalettizerState: ", layouts_.size(),
              " layouts for ", layers_.size(), " layers");
  reset();
}

void PalettizerStateImpl::reset() {
  dkms_.clear();
  std::vector<std::string> taken;
  for (const auto& [path, o] : layers_) {
    taken.push_back(child_name(path, taken));
    DKM dkm(o);
    dkm->name = path;
    dkms_.push_back(register_module(taken.back(), dkm));
  }
  step_ = register_buffer("step", at::full({}, step_host_, at::TensorOptions().dtype(at::kLong)));
  finalized_ = register_buffer("finalized", at::full({}, finalized_host_, at::TensorOptions().dtype(at::kBool)));
}

void PalettizerStateImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  detail::to_keeping_state(*this, device, dtype, non_blocking);
}

void PalettizerStateImpl::to(torch::Dtype dtype, bool non_blocking) {
  detail::to_keeping_state(*this, std::nullopt, dtype, non_blocking);
}

void PalettizerStateImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::PalettizerState(layers=" << layers_.size() << ", step=" << step_host_
         << (finalized_host_ ? ", finalized" : "") << ")";
}

void PalettizerStateImpl::advance() {
  at::NoGradGuard no_grad;
  step_.fill_(++step_host_);
  for (auto& d : dkms_) d->step();
}

void PalettizerStateImpl::set_finalized(bool f) {
  at::NoGradGuard no_grad;
  finalized_host_ = f;
  finalized_.fill_(f);
}

void PalettizerStateImpl::save(torch::serialize::OutputArchive& archive) const {
  torch::nn::Module::save(archive);
  archive.write("edkm_palettizer_state", c10::IValue(json{{"version", 2}, {"layers", layers_json(layers_)}}.dump()));
}

void PalettizerStateImpl::load(torch::serialize::InputArchive& archive) {
  c10::IValue meta;
  TORCH_CHECK(archive.try_read("edkm_palettizer_state", meta) && meta.isString(),
              "edkm: not a Palettizer state (no edkm_palettizer_state entry; write it with Palettizer::save_state or "
              "torch::save(palettizer.state(), path))");
  json saved;
  try {
    saved = detail::parse_json_bounded(meta.toStringRef(), "edkm: the Palettizer state's layer list").at("layers");
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "edkm: the Palettizer state's layer list is malformed (", e.what(), ")");
  }
  TORCH_CHECK(saved.is_array() && saved.size() == layers_.size(), "edkm: the Palettizer state holds ",
              saved.is_array() ? saved.size() : 0, " layers but this palettizer has ", layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& [path, o] = layers_[i];
    const json& entry = saved[i];
    TORCH_CHECK(entry.is_object() && entry.value("layer", json()) == json(path), "edkm: the Palettizer state's layer ",
                i, " is '", entry.is_object() ? entry.value("layer", json()).dump() : std::string("?"),
                "' but this palettizer's is '", path, "'");
    const json expect = options_json(o);
    const json got = entry.value("options", json::object());
    for (const auto& [k, v] : expect.items()) {
      // Every engine computes the same values (and table_index_list only changes what backward
      // keeps): a run may resume on another, e.g. a state saved when kDense was the default.
      if (k == "engine" || k == "table_index_list") continue;
      TORCH_CHECK(got.is_object() && got.contains(k) && got[k] == v, "edkm: the Palettizer state's layer '", path,
                  "' was saved with ", k, " = ", got.is_object() ? got.value(k, json()).dump() : std::string("?"),
                  " but is configured with ", v.dump());
    }
  }
  // Read into a copy, check, then apply: nothing changes when the file is refused.
  auto copy = std::dynamic_pointer_cast<PalettizerStateImpl>(clone());
  detail::load_adopting_dtypes(*copy, archive);
  TORCH_CHECK(copy->step_.numel() == 1 && copy->finalized_.numel() == 1 &&
                  !at::isFloatingType(copy->step_.scalar_type()) && copy->finalized_.scalar_type() == at::kBool,
              "edkm: the Palettizer state's step / finalized entries are not an integer and a bool scalar (got ",
              copy->step_.scalar_type(), " ", copy->step_.sizes(), " and ", copy->finalized_.scalar_type(), " ",
              copy->finalized_.sizes(), ")");
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& d = copy->dkms_[i];
    const auto& c = d->centroids();
    const int64_t K = layers_[i].second.n_clusters();
    TORCH_CHECK(c.numel() == 0 || (c.dim() == 3 && c.size(1) == K && at::isFloatingType(c.scalar_type())),
                "edkm: the Palettizer state's centroids of layer '", layers_[i].first, "' have shape ", c.sizes(),
                ", expected [groups, ", K, ", cluster_dim]");
    if (layouts_.empty()) continue;
    // Same path and options, another weight shape (a state of another model size): its LUTs or
    // scales would fail every later step, far from the file.
    const ClusterLayout& l = layouts_[i];
    TORCH_CHECK(c.numel() == 0 || (c.size(0) == l.groups && c.size(2) == l.cluster_dim),
                "edkm: the Palettizer state's centroids of layer '", layers_[i].first, "' have shape ", c.sizes(),
                ", but the layer's weight (", l.rows, " rows) takes [", l.groups, ", ", K, ", ", l.cluster_dim,
                "]: a state of a model with other shapes");
    const at::Tensor& s = d->scale();
    TORCH_CHECK(s.numel() == 0 || s.numel() == l.rows, "edkm: the Palettizer state's scale of layer '",
                layers_[i].first, "' holds ", s.numel(), " values, but the layer's weight has ", l.rows,
                " rows: a state of a model with other shapes");
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < dkms_.size(); ++i) {
    auto mine = dkms_[i]->named_buffers(false);
    for (const auto& b : copy->dkms_[i]->named_buffers(false)) mine[b.key()].set_data(b.value());
    dkms_[i]->set_step(copy->dkms_[i]->current_step());
  }
  step_host_ = copy->step_.item<int64_t>();
  step_.set_data(copy->step_);
  set_finalized(copy->finalized_.item<bool>());
  ++loads_;
}

// --- palettizer --------------------------------------------------------------------------------

Palettizer::Palettizer(std::shared_ptr<torch::nn::Module> model, PalettizerOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  TORCH_CHECK(model_, "edkm: Palettizer needs a module");
  PalettizerStateImpl::Layers selected;
  std::vector<ClusterLayout> layouts;
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
    if (auto* e = dynamic_cast<torch::nn::EmbeddingImpl*>(item.value().get())) {
      TORCH_CHECK(!e->options.sparse(), "edkm: Palettizer: Embedding '", item.key(),
                  "' has sparse gradients (sparse(true)); its clustered weight is a dense function of the whole "
                  "weight: build it with sparse(false), or exclude it (module_name(\"",
                  item.key(), "\", std::nullopt))");
    }
    // One module (or weight) under several names: clustered once, under the first; the others
    // must resolve to the same options.
    const auto seen =
        std::find_if(layers_.begin(), layers_.end(), [&](const Layer& l) { return l.parameter.is_same(*param); });
    if (seen != layers_.end()) {
      const auto& first = selected[static_cast<size_t>(seen - layers_.begin())].second;
      TORCH_CHECK(options_json(first) == options_json(*o), "edkm: Palettizer: layer '", item.key(),
                  "' shares its weight with layer '", seen->path, "' but resolves to other options");
      continue;
    }
    try {
      layouts.push_back(ClusterLayout::of(*param, *o));
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
    layers_.push_back(std::move(l));
    selected.emplace_back(item.key(), *o);
  }
  std::vector<std::string> paths;
  for (const auto& item : model_->named_modules(/*name_prefix=*/"", /*include_self=*/true)) paths.push_back(item.key());
  for (const auto& pattern : options_.unmatched_patterns(paths))
    TORCH_WARN("edkm: Palettizer: module_name pattern '", pattern,
               "' matches no module path of the model (paths look like '", paths.size() > 1 ? paths[1] : "",
               "'); the layers it was meant for take the type or global options");
  if (selected.empty())
    TORCH_WARN(
        "edkm: Palettizer: no layer of the model is selected (supported types with a weight of more than "
        "weight_threshold elements, not excluded): nothing will be clustered");
  state_ = PalettizerState(std::move(selected), std::move(layouts));
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i].dkm = state_->dkm(i);
  size_t registered = 0;
  try {
    std::ostringstream me;
    me << "another Palettizer (" << static_cast<const void*>(this) << ")";
    for (; registered < layers_.size(); ++registered) {
      const auto& l = layers_[registered];
      detail::register_member(l.parameter, l.module, l.member, l.path, me.str());
    }
  } catch (...) {
    for (size_t i = 0; i < registered; ++i) detail::unregister_member(layers_[i].parameter);
    throw;
  }
}

Palettizer::~Palettizer() {
  for (const auto& l : layers_) detail::unregister_member(l.parameter);
}

void Palettizer::throw_pending() {
  if (pending_error_.empty()) return;
  const std::string e = std::exchange(pending_error_, std::string());
  TORCH_CHECK(false, e);
}

void Palettizer::check_layers() const {
  const auto modules = model_->named_modules(/*name_prefix=*/"", /*include_self=*/true);
  for (const auto& l : layers_) {
    const auto* m = modules.find(l.path);
    TORCH_CHECK(m && m->get() == l.module.get(), "edkm: Palettizer: layer '", l.path,
                "' was removed from the model or replaced since the palettizer was built; build a new Palettizer");
    const auto own = l.module->named_parameters(/*recurse=*/false);
    const at::Tensor* p = own.find("weight");
    TORCH_CHECK(p && p->is_same(l.parameter), "edkm: Palettizer: the `weight` Parameter of layer '", l.path,
                "' was replaced since the palettizer was built; build a new Palettizer");
    TORCH_CHECK(l.member->is_same(l.parameter), "edkm: Palettizer: the `weight` of layer '", l.path,
                "' was replaced since the palettizer was built");
  }
}

Palettizer::Scope::Scope(Palettizer* owner) : owner_(owner) {
  TORCH_CHECK(!owner->scope_open_, "edkm: Palettizer::clustered(): a scope is already open (scopes do not nest)");
  owner->throw_pending();
  owner->check_layers();
  owner->scope_open_ = true;
  if (owner->finalized()) {
    // Evaluating is fine; training would move the weights off their palettes unnoticed until export.
    if (owner->model_->is_training() && !std::exchange(owner->warned_training_after_finalize_, true))
      TORCH_WARN(
          "edkm: Palettizer: a clustered() scope after finalize() gives the finalized weights "
          "themselves: training them moves them off their palettes (finalize() again before exporting)");
    return;
  }
  try {
    const bool training = owner->model_->is_training();
    for (auto& l : owner->layers_) {
      l.dkm->train(training);
      l.device = l.parameter.device();
      l.dtype = l.parameter.scalar_type();
      l.installed = l.dkm->forward(l.parameter);
      *l.member = l.installed;
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
  std::ostringstream problems;
  for (size_t i = 0; i < swapped_; ++i) {
    auto& l = owner_->layers_[i];
    const bool member_kept = l.member->is_same(l.installed);
    const bool moved = l.parameter.device() != l.device || l.parameter.scalar_type() != l.dtype;
    // Restore to what is registered now (the user may have registered a new Parameter).
    const auto own = l.module->named_parameters(/*recurse=*/false);
    const at::Tensor* p = own.find("weight");
    *l.member = p ? *p : l.parameter;
    l.installed = at::Tensor();
    if (!member_kept) {
      problems << "the `weight` of layer '" << l.path << "' was replaced while a clustered() scope was open; ";
    } else if (moved) {
      problems << "layer '" << l.path << "' was moved (model->to()) from " << l.device << " " << l.dtype << " to "
               << l.parameter.device() << " " << l.parameter.scalar_type()
               << " while a clustered() scope was open: the forward of that scope used the old weights, do not "
                  "backward through it; ";
    }
  }
  if (!problems.str().empty()) owner_->pending_error_ = "edkm: Palettizer: " + problems.str();
  swapped_ = 0;
  owner_->scope_open_ = false;
  owner_ = nullptr;
}

Palettizer::Scope::~Scope() { restore(); }

Palettizer::Scope Palettizer::clustered() { return Scope(this); }

void Palettizer::step() {
  throw_pending();
  // The layers' NaN / Inf flags (DKMImpl::nonfinite) read with one host sync, then cleared, so
  // that advance() (each DKM's step()) reads none.
  std::vector<at::Tensor> flags;
  std::vector<const Layer*> flagged;
  for (const auto& l : layers_)
    if (l.dkm->nonfinite().defined()) {
      flags.push_back(l.dkm->nonfinite().to(layers_.front().parameter.device()).reshape({1}));
      flagged.push_back(&l);
    }
  for (auto& l : layers_) l.dkm->clear_nonfinite();
  const at::Tensor all = flags.empty() ? at::Tensor() : at::cat(flags);
  if (all.defined() && all.any().item<bool>()) {
    std::string names;
    for (size_t i = 0; i < flagged.size(); ++i)
      if (all[static_cast<int64_t>(i)].item<bool>())
        names += (names.empty() ? "" : ", ") + (flagged[i]->path.empty() ? "(root)" : "'" + flagged[i]->path + "'");
    TORCH_CHECK(false, "edkm: Palettizer: step ", current_step(), " met NaN or Inf in the weights of ", names,
                ": their centroids were not updated (restore the weights, e.g. from a checkpoint, or lower the "
                "learning rate)");
  }
  state_->advance();
}

const std::map<std::string, Palette>& Palettizer::finalize() {
  TORCH_CHECK(!scope_open_, "edkm: Palettizer::finalize() inside a clustered() scope");
  throw_pending();
  check_layers();
  at::NoGradGuard no_grad;
  palettes_.clear();
  palettes_loads_ = state_->loads();
  for (auto& l : layers_) {
    Palette p;
    try {
      p = l.dkm->finalize(l.parameter.detach());
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "edkm: Palettizer::finalize: layer '", l.path, "': ", e.what_without_backtrace());
    }
    l.parameter.copy_(p.decompress().to(l.parameter.device()));
    palettes_[tensor_name(l)] = std::move(p);
  }
  state_->set_finalized(true);
  return palettes_;
}

std::string Palettizer::tensor_name(const Layer& l) const { return l.path.empty() ? "weight" : l.path + ".weight"; }

const std::map<std::string, Palette>& Palettizer::palettes() const {
  static const std::map<std::string, Palette> none;
  return palettes_loads_ == state_->loads() ? palettes_ : none;
}

const Palette* Palettizer::cached_palette(const Layer& l) const {
  const auto& cached = palettes();
  const auto it = cached.find(tensor_name(l));
  return it == cached.end() ? nullptr : &it->second;
}

CompressedCheckpoint Palettizer::compressed_checkpoint() const {
  TORCH_CHECK(finalized(), "edkm: Palettizer: call finalize() before exporting a compressed checkpoint");
  CompressedCheckpoint ckpt;
  // Each layer's palette must still be its weight: not when the model trained on after finalize(),
  // or when a finalized state was loaded with weights that were not finalized. A state loaded
  // finalized has no palettes cached: they are the hard assignment of its (finalized) weights.
  for (const auto& l : layers_) {
    const at::Tensor w = l.parameter.detach();
    const Palette* cached = cached_palette(l);
    Palette derived;
    if (cached == nullptr) {
      DKM dkm = l.dkm;  // (finalize may initialise centroids: never here, a finalized state has them)
      derived = dkm->finalize(w);
    }
    const Palette& p = cached == nullptr ? derived : *cached;
    TORCH_CHECK(at::equal(p.decompress().to(w.device()), w), "edkm: Palettizer: the weight of layer '", l.path,
                "' is not on its palette (",
                cached == nullptr ? "a finalized state was loaded with weights that "
                                    "were not finalized"
                                  : "it changed after finalize()",
                "); call finalize() again before exporting");
    ckpt.palettes[tensor_name(l)] = p;
  }
  for (const auto& item : model_->named_parameters(/*recurse=*/true)) {
    if (ckpt.palettes.count(item.key())) continue;
    // A layer's weight under another name (a module registered twice) is that palette too.
    const auto shared =
        std::find_if(layers_.begin(), layers_.end(), [&](const Layer& l) { return l.parameter.is_same(item.value()); });
    if (shared != layers_.end()) {
      const Palette p = ckpt.palettes.at(tensor_name(*shared));
      ckpt.palettes[item.key()] = p;
    } else {
      ckpt.tensors[item.key()] = item.value().detach();
    }
  }
  for (const auto& item : model_->named_buffers(/*recurse=*/true)) ckpt.tensors[item.key()] = item.value().detach();
  return ckpt;
}

void Palettizer::save_compressed(const std::string& path) const {
  edkm::save_compressed(path, compressed_checkpoint());
}

void Palettizer::save_state(const std::string& path) const {
  torch::serialize::OutputArchive archive;
  state_->save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_text_file(path, bytes.str());  // atomic: temporary file + fsync + rename
}

void Palettizer::load_state(const std::string& path) {
  TORCH_CHECK(!scope_open_, "edkm: Palettizer::load_state() inside a clustered() scope");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "edkm: ", path, " is not a Palettizer state (", e.what_without_backtrace(), ")");
  }
  try {
    state_->load(archive);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "edkm: ", path, ": ", e.what_without_backtrace());
  }
  palettes_.clear();  // derived from the loaded state from now on (palettes() is empty meanwhile)
  pending_error_.clear();
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
    at::Tensor hard;
    if (finalized() && cached_palette(l) != nullptr) {
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
