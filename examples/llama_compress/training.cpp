#include "training.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <edkm/nn/distill.h>
#include <edkm/optim/adamw_bf16.h>
#include <edkm/util/progress.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <atomic>
#include <cmath>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

namespace llama_compress {

Optimizer::Optimizer(const std::string& kind, const std::vector<at::Tensor>& params, double lr, double wd) {
  if (kind == "adamw") {
    torch_opt = std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(lr).weight_decay(wd));
    state_bytes_per_param = params.empty() ? 8 : 2 * static_cast<int>(params[0].element_size());  // in p's dtype
  } else if (kind == "sgd") {
    torch_opt = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(lr));
  } else {
    torch_opt = std::make_unique<edkm::optim::AdamWBf16>(params, edkm::optim::AdamWBf16Options(lr).weight_decay(wd));
    state_bytes_per_param = edkm::optim::AdamWBf16::kStateBytesPerParam;
  }
}

void Optimizer::zero_grad() { torch_opt->zero_grad(); }

void Optimizer::step() { torch_opt->step(); }

void Optimizer::set_lr(double lr) {
  for (auto& g : torch_opt->param_groups()) g.options().set_lr(lr);
}

std::string Optimizer::save() const {
  std::ostringstream out;
  torch::save(*torch_opt, out);
  return out.str();
}

void Optimizer::load(const std::string& bytes) {
  std::istringstream in(bytes);
  torch::load(*torch_opt, in);
}

Autocast::Autocast(bool enabled, c10::DeviceType device) : enabled_(enabled), device_(device) {
  if (!enabled_) return;
  was_enabled_ = at::autocast::is_autocast_enabled(device_);
  was_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, was_dtype_);
}

double schedule(double lr, int64_t step, int64_t steps) {
  const int64_t warm = std::max<int64_t>(1, steps / 10);
  if (step < warm) return lr * (step + 1) / warm;
  const double t = static_cast<double>(step - warm) / std::max<int64_t>(1, steps - warm);
  return lr * (0.1 + 0.45 * (1 + std::cos(M_PI * t)));
}

Eval perplexity(edkm::LlamaForCausalLM& model, const at::Tensor& stream, int64_t seq, int64_t batch,
                const std::string& label) {
  const bool was_training = model->is_training();
  model->eval();
  at::NoGradGuard ng;
  const int64_t windows = stream.numel() / seq;
  TORCH_CHECK(windows > 0, "held-out text of ", stream.numel(), " tokens is shorter than one window of ", seq);
  const at::Tensor all = stream.narrow(0, 0, windows * seq).view({windows, seq});
  double nll = 0;
  int64_t count = 0;
  const auto t0 = Clock::now();
  edkm::ProgressBar bar(windows, label);
  for (int64_t i = 0; i < windows; i += batch) {
    const at::Tensor x = all.narrow(0, i, std::min(batch, windows - i)).to(model->model->norm->weight.device());
    const at::Tensor logits = model(x);
    nll += edkm::functional::causal_lm_loss(logits, x).item<double>() * x.size(0) * (seq - 1);
    count += x.size(0) * (seq - 1);
    bar.tick({}, x.size(0));
  }
  model->train(was_training);
  return {std::exp(nll / count), static_cast<double>(count) / seconds_since(t0), count};
}

std::vector<int64_t> greedy_generate(edkm::LlamaForCausalLM& model, const std::vector<int64_t>& prompt, int64_t n,
                                     int64_t eos) {
  TORCH_CHECK(!prompt.empty(), "greedy_generate: empty prompt");
  const bool was_training = model->is_training();
  model->eval();
  at::NoGradGuard ng;
  std::vector<int64_t> ids = prompt, out;
  const int64_t ctx = model->config.max_position_embeddings();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t take = std::min<int64_t>(ctx, static_cast<int64_t>(ids.size()));
    const std::vector<int64_t> window(ids.end() - take, ids.end());
    const at::Tensor x = at::tensor(window, at::kLong).unsqueeze(0).to(model->model->norm->weight.device());
    const int64_t next = model(x).select(1, take - 1).argmax(-1).item<int64_t>();
    if (next == eos) break;
    ids.push_back(next);
    out.push_back(next);
  }
  model->train(was_training);
  return out;
}

namespace {

// Nanoseconds inside the DKM engines' backward nodes, over every thread.
std::atomic<int64_t> g_dkm_backward_ns{0};

struct NodeStart : at::ObserverContext {
  Clock::time_point start = Clock::now();
};

bool is_dkm_node(const char* name) {
  const std::string n = name ? name : "";
  return n.find("StreamFunction") != std::string::npos || n.find("TableFunction") != std::string::npos;
}

}  // namespace

StepProfile::StepProfile() {
  g_dkm_backward_ns = 0;
  handle_ = at::addGlobalCallback(at::RecordFunctionCallback(
                                      [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
                                        if (!is_dkm_node(fn.name())) return nullptr;
                                        return std::make_unique<NodeStart>();
                                      },
                                      [](const at::RecordFunction&, at::ObserverContext* ctx) {
                                        if (!ctx) return;
                                        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                            Clock::now() - static_cast<NodeStart*>(ctx)->start);
                                        g_dkm_backward_ns += ns.count();
                                      })
                                      .scopes({at::RecordScope::BACKWARD_FUNCTION})
                                      .needsInputs(false)
                                      .needsOutputs(false));
}

StepProfile::~StepProfile() { at::removeCallback(handle_); }

double StepProfile::dkm_backward_seconds() const { return static_cast<double>(g_dkm_backward_ns.load()) * 1e-9; }

void StepProfile::add(const std::string& name, double seconds) {
  for (auto& p : phases_) {
    if (p.first == name) {
      p.second += seconds;
      return;
    }
  }
  phases_.emplace_back(name, seconds);
}

void StepProfile::close_warmup(double seconds) {
  warmup_seconds_ = seconds;
  phases_.clear();
  steps_ = 0;
}

double StepProfile::dkm_seconds() const {
  double dkm = 0;
  for (const auto& p : phases_)
    if (p.first.rfind("DKM", 0) == 0) dkm += p.second;
  return dkm;
}

std::string StepProfile::to_markdown() const {
  double total = 0;
  for (const auto& p : phases_) total += p.second;
  std::ostringstream md;
  md << std::fixed << "| phase | s / step | share |\n|---|---|---|\n";
  const double n = static_cast<double>(std::max<int64_t>(1, steps_));
  for (const auto& p : phases_) {
    md << "| " << p.first << " | " << std::setprecision(3) << p.second / n << " | " << std::setprecision(1)
       << (total > 0 ? 100.0 * p.second / total : 0.0) << "% |\n";
  }
  md << "| **step** | " << std::setprecision(3) << total / n << " | 100% |\n";
  if (warmup_seconds_ > 0)
    md << "| first step (also initialises every layer's LUTs; not in the average above) | " << std::setprecision(3)
       << warmup_seconds_ << " | |\n";
  // The ratios only over steady steps: a run of one step has the LUT initialisation in its average.
  const double dkm = dkm_seconds() / n, step = total / n;
  if (warmup_seconds_ > 0 && dkm > 0 && step > dkm)
    md << "| DKM step / the same steps without their DKM phases | " << std::setprecision(2) << step / (step - dkm)
       << "x | |\n";
  if (warmup_seconds_ > 0 && plain_step_seconds_ > 0)
    md << "| plain step (the pre-training's steps after its first) | " << std::setprecision(3) << plain_step_seconds_
       << " | |\n| DKM step / plain step | " << std::setprecision(2) << step / plain_step_seconds_ << "x | |\n";
  return md.str();
}

std::string StepProfile::to_json() const {
  nlohmann::json j;
  j["steps"] = steps_;
  if (warmup_seconds_ > 0) j["first_step_seconds"] = warmup_seconds_;
  const double n = static_cast<double>(std::max<int64_t>(1, steps_));
  for (const auto& p : phases_) j["seconds_per_step"][p.first] = p.second / n;
  if (plain_step_seconds_ > 0) j["plain_step_seconds"] = plain_step_seconds_;
  j["dkm_seconds_per_step"] = dkm_seconds() / n;
  return j.dump();
}

}  // namespace llama_compress
