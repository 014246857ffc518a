#pragma once
// The LLaMA example's report: the comparison table (perplexity and bits per weight of every
// method), the run's facts (memory, throughput, the compressed file, the packed runtime), the step
// profile and the greedy continuations; printed, and written as OUT/results.md and
// OUT/results.json (each atomically).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "training.h"

namespace llama_compress {

std::string fixed(double v, int digits);
std::string mib(int64_t bytes);

/// A held-out text: its name and its tokens.
struct EvalSet {
  std::string label;
  at::Tensor ids;
};

/// A compared method: bits per weight over the decoder's Linear layers and over every clustered
/// layer, and the perplexity on each held-out text.
struct Row {
  std::string method;
  int64_t bits = 0;  // bits per code of the decoder Linears (0: uncompressed)
  double bits_per_weight = 0, linear_bits = 0;
  std::vector<Eval> evals;
  std::string note;  // e.g. steps and tokens seen
};

/// The written file run packed (LlamaRuntime: LUT kernels, KV cache, nothing decompressed).
struct PackedRun {
  bool ran = false, same_tokens = false;
  double tokens_per_s = 0, weight_mib = 0;
  int64_t packed_layers = 0;
};

/// Everything the report states about a run.
struct Report {
  // What ran.
  std::string command, source, corpus, tokenizer, init, engine, optimizer, loss_kind, out_dir, dtype;
  std::string teacher_dtype;  ///< the distillation teacher's weights ("" without one)
  std::string autocast;       ///< --autocast: off | bf16
  int64_t layers = 0;         // decoder layers kept (of the model's; --layers)
  int64_t parameters = 0, train_tokens = 0, train_documents = 0, eval_documents = 0, eval_seq_len = 0;
  int64_t seq_len = 0, batch = 0, steps = 0, pretrain_steps = 0, bits = 0, group_size = 0, embedding_bits = 0;
  double tau = 0, lr = 0;
  bool embedding_dkm = false, offload = false, checkpoint_activations = false, distill = false, cuda = false;
  int64_t optimizer_state_bytes_per_param = 0;
  // What it gave.
  std::vector<EvalSet> eval_sets;
  std::vector<Row> rows;
  int64_t clustered_layers = 0, clustered_numel = 0;
  bool compressed = false;      // a Palettizer ran and its file was written
  std::string compressed_path;  // "" when none
  int64_t file_bytes = 0;
  bool reloaded_matches = true;
  PackedRun packed_run;
  int64_t peak_host_bytes = 0, peak_host_bytes_step = 0, peak_device_bytes_step = 0;
  int64_t peak_rss_bytes = 0;  // the process's peak resident set (getrusage), 0 when unknown
  std::string host_cache;      // --host-cache; "" when off
  int64_t host_cache_peak_bytes = 0, host_cache_peak_in_use_bytes = 0, host_cache_hits = 0, host_cache_misses = 0;
  double pretrain_tokens_per_s = 0, finetune_tokens_per_s = 0, last_step_seconds = 0, total_seconds = 0;
  std::string layer_table, gptq_facts, offload_facts;  // "" when none
  std::string profile_markdown;                        // "" without fine-tuning steps
  nlohmann::json profile = nullptr, curve = nlohmann::json::array();
  int64_t generate = 0;
  std::string prompt, sample_before, sample_after, sample_packed;
};

/// Prints the layer table, the comparison, the facts, the profile and the continuations, and
/// writes r.out_dir/results.md and results.json.
void write_report(const Report& r);

}  // namespace llama_compress
