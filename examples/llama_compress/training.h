#pragma once
// Training pieces of the LLaMA example: the optimizers of --optimizer, the learning-rate schedule,
// held-out perplexity, and the per-step time profile.
#include <ATen/core/Tensor.h>
#include <edkm/models/llama.h>
#include <torch/optim/optimizer.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llama_compress {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// The optimizers of --optimizer: adamw (LibTorch) | adamw-bf16 (edkm::optim::AdamWBf16) | sgd.
struct Optimizer {
  std::unique_ptr<torch::optim::Optimizer> torch_opt;
  int state_bytes_per_param = 0;
  Optimizer(const std::string& kind, const std::vector<at::Tensor>& params, double lr, double wd);
  void zero_grad();
  void step();
  void set_lr(double lr);
  /// torch::save / torch::load of the state (for --save-every / --resume).
  std::string save() const;
  void load(const std::string& bytes);
};

/// Mixed precision for --autocast bf16 while alive: LibTorch's autocast on the device type (matmuls
/// and linears in bf16, fp32 master weights and gradients), as torch.autocast does (nesting
/// counted, the cast cache cleared on leaving the outermost region). Does nothing when disabled.
/// edkm::checkpoint replays this state in its recompute.
class Autocast {
 public:
  Autocast(bool enabled, c10::DeviceType device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool enabled_, was_enabled_ = false;
  c10::DeviceType device_;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

/// Linear warm-up over the first 10% of the steps, then cosine decay to 10% of the peak.
double schedule(double lr, int64_t step, int64_t steps);

struct Eval {
  double perplexity = 0, tokens_per_s = 0;
  int64_t tokens = 0;
};

/// Perplexity over non-overlapping windows of `seq` tokens of `stream` (each predicts its tokens
/// 1..seq-1), `batch` windows at a time; the model is put in eval mode and back in train mode. A
/// progress bar labelled `label` shows the windows' rate and ETA.
Eval perplexity(edkm::LlamaForCausalLM& model, const at::Tensor& stream, int64_t seq, int64_t batch,
                const std::string& label = "perplexity");

/// Greedy decoding: `n` tokens after `prompt` (stops at `eos` when >= 0), recomputing the whole
/// context each token (no KV cache: a short sample of what the model says).
std::vector<int64_t> greedy_generate(edkm::LlamaForCausalLM& model, const std::vector<int64_t>& prompt, int64_t n,
                                     int64_t eos);

/// Where a training step's time goes: wall time of each phase, summed over the steps, and the
/// time inside the DKM engines' backward (their autograd nodes, timed by a RecordFunction
/// callback while a StepProfile is alive; the dense engine's backward is made of ordinary ATen
/// nodes and is counted in "backward").
class StepProfile {
 public:
  StepProfile();
  ~StepProfile();
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;
  /// Adds `seconds` to phase `name` (phases keep their first-seen order).
  void add(const std::string& name, double seconds);
  void count_step() { ++steps_; }
  /// Ends the warm-up: the steps so far (their whole time `seconds`) leave the averages and are
  /// reported as one line of their own.
  void close_warmup(double seconds);
  /// Seconds of the DKM engines' backward nodes so far.
  double dkm_backward_seconds() const;
  /// The same step without DKM, measured apart (the pre-training's steps after its first): the
  /// table adds it and the ratio of the two. A phase whose name starts with "DKM" is DKM's share.
  void set_plain_step(double seconds) { plain_step_seconds_ = seconds; }
  /// A Markdown table: phase, seconds per step, share of the step.
  std::string to_markdown() const;
  /// {"steps": n, "phases": {name: seconds per step}}.
  std::string to_json() const;

 private:
  double dkm_seconds() const;  // summed over the steps
  std::vector<std::pair<std::string, double>> phases_;
  int64_t steps_ = 0;
  double warmup_seconds_ = 0, plain_step_seconds_ = 0;
  uint64_t handle_ = 0;
};

}  // namespace llama_compress
