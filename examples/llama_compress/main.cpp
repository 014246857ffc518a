// The LLaMA compression example: every Linear layer of the decoder clustered by DKM while
// fine-tuning on a text corpus (embedding and head at 8 bits), exported in edkm's compressed
// format, with held-out perplexity before and after and the post-training baselines at the same
// bits (RTN, k-means, GPTQ).
//
//   edkm_llama_compress --preset tiny           # tiny preset trained on the `fortunes` corpus,
//                                               # then fp32 / RTN / k-means / DKM compared
//   edkm_llama_compress --model SmolLM2-135M-Instruct.Q4_1.gguf --bits 4 --group-size 16 --steps 40
//   edkm_llama_compress --model /models/llama-2-7b-hf --corpus train.jsonl --steps 200 --dtype bf16
//   edkm_llama_compress --preset llama-7b --device cuda --steps 1 --optimizer adamw-bf16 \
//       --checkpoint-activations --dtype bf16          # one step of the whole 7B stack, 3-bit
//   edkm_llama_compress --help
//
// Files: corpus.{h,cpp} (documents, splits, token streams), training.{h,cpp} (optimizers, LR
// schedule, perplexity, step profile), baselines.{h,cpp} (RTN, k-means, GPTQ rows), main.cpp
// (the command line and the run).
#include <ATen/ATen.h>
#include <dirent.h>
#include <edkm/edkm.h>
#include <sys/stat.h>
#include <torch/cuda.h>
#include <torch/serialize.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "../common/cli.h"
#include "baselines.h"
#include "corpus.h"
#include "report.h"
#include "training.h"

namespace {

using json = nlohmann::json;
using namespace llama_compress;

// `s` as one shell word: as is when it has only safe characters, else in single quotes.
std::string shell_quote(const std::string& s) {
  const bool safe = !s.empty() && s.find_first_not_of(
                                      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                      "@%+=:,./_-") == std::string::npos;
  if (safe) return s;
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// N of --tokenizer train:N.
int64_t vocab_size_of(const std::string& spec) {
  const std::string n = spec.substr(6);
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(n, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK(!n.empty() && used == n.size(), "--tokenizer ", spec, ": expected train:N with N the number of pieces");
  return v;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// torch::save of a module to bytes, and back: the run state of --save-every / --resume.
template <class M>
std::string save_bytes(const M& m) {
  std::ostringstream out;
  torch::save(m, out);
  return out.str();
}
template <class M>
void load_bytes(M& m, const std::string& bytes) {
  std::istringstream in(bytes);
  torch::load(m, in);
}

// A Hugging Face checkpoint of `model` with its reference logits (edkm_logits.safetensors: the
// first seq_len held-out tokens and edkm's logits on them, for other tools to compare) and, for a
// byte-level BPE (a GGUF's own, or a tokenizer.json), tokenizer.json, so transformers'
// AutoTokenizer reads the same ids.
void save_hf_with_logits(edkm::LlamaForCausalLM& model, const std::string& dir, const at::Tensor& held_out,
                         int64_t seq_len, const edkm::Tokenizer& tokenizer) {
  edkm::save_hf_llama(model, dir);
  const bool training = model->is_training();
  model->eval();
  {
    at::NoGradGuard ng;
    const at::Tensor x = held_out.narrow(0, 0, std::min(seq_len, held_out.numel())).unsqueeze(0);
    edkm::SafetensorsFile ref;
    ref.tensors["tokens"] = x;
    ref.tensors["logits"] = model(x.to(model->parameters()[0].device())).to(at::kFloat).cpu();
    edkm::save_safetensors(dir + "/edkm_logits.safetensors", ref);
  }
  model->train(training);
  if (const auto* bpe = dynamic_cast<const edkm::BpeTokenizer*>(&tokenizer)) edkm::save_hf_tokenizer(*bpe, dir);
}

// The tokenizer beside the compressed checkpoint, where edkm_llama_generate looks for it: a
// byte-level BPE (a GGUF's own, or a tokenizer.json) as tokenizer.json + tokenizer_config.json,
// a SentencePiece model as tokenizer.model (copied from `file`, what load_tokenizer read: the file,
// or a directory's tokenizer.model); the byte tokenizer needs none.
// Whether two paths name one existing file (or directory).
bool same_file(const std::string& x, const std::string& y) {
  struct stat a {};
  struct stat b {};
  return ::stat(x.c_str(), &a) == 0 && ::stat(y.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

void save_tokenizer_beside(const edkm::Tokenizer& tok, const std::string& file, const std::string& dir) {
  if (const auto* bpe = dynamic_cast<const edkm::BpeTokenizer*>(&tok)) return edkm::save_hf_tokenizer(*bpe, dir);
  if (!dynamic_cast<const edkm::SentencePieceTokenizer*>(&tok)) return;
  const std::string src = edkm::is_directory(file) ? file + "/tokenizer.model" : file, dst = dir + "/tokenizer.model";
  if (!same_file(src, dst)) edkm::write_text_file(dst, edkm::read_text_file(src));
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm LLaMA compression: DKM clustering of every decoder Linear while fine-tuning"};
  // An option given twice takes its last value (CLI11 2.x refuses it by default): scripts/demo.sh
  // passes its defaults first and the user's options after them.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string model_dir, preset = "tiny", corpus = "/usr/share/games/fortunes", tokenizer_spec, engine = "auto";
  std::string teacher_dtype_name = "model", autocast_name = "off";
  std::string init = "auto", optimizer = "adamw", out_dir = "llama_compress_out", dtype_name = "fp32",
              device_name = "cpu";
  std::string save_hf, save_hf_compressed, prompt = "The best thing about open source software is", loss_kind = "auto",
                                           baselines = "uncompressed,rtn,kmeans,control", baseline_bits_list;
  std::vector<std::string> eval_corpora;
  int64_t layers = 0, bits = 3, embedding_bits = 8, group_size = 0, steps = 100, pretrain_steps = -1, seq_len = 128;
  int64_t batch = 16, eval_tokens = 32768, eval_seq_len = 0, eval_batch = 4, milestone = 0, threads = -1;
  int64_t dkm_iters = 3, generate = 0, eval_every = 0, save_every = 0, stop_after = 0, rtn_group = 128,
          calibration_tokens = 16384;
  double lr = 1e-3, pretrain_lr = 3e-3, weight_decay = 0.0, distill_temperature = 2.0, distill_alpha = 0.5;
  double distill_hidden = 0.0, tau = 1e-4;
  bool offload = false, checkpoint_activations = false, distill = false, skip_baselines = false, embedding_dkm = false;
  bool keep_host_memory = false;
  std::string host_cache = "1.25";
  std::string head_loss = "fused";
  bool resume = false, baselines_only = false;
  int64_t offload_min_bytes = 1 << 16;
  uint64_t seed = 0;
  app.add_option("--model", model_dir,
                 "Hugging Face LLaMA checkpoint directory (config.json, *.safetensors) or GGUF file (llama)");
  app.add_option("--preset", preset, "random-weight model when no --model: tiny | llama-7b")
      ->check(CLI::IsMember({"tiny", "llama-7b"}));
  app.add_option("--layers", layers, "keep only the first N decoder layers (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--corpus", corpus,
                 "text file (documents split by '%' lines or blank lines), .jsonl with \"text\", or a directory of "
                 "fortune files; every 10th document is held out")
      ->capture_default_str();
  app.add_option("--eval-corpus", eval_corpora, "another held-out text (same formats), evaluated whole; repeatable")
      ->check(CLI::ExistingPath);
  app.add_option("--tokenizer", tokenizer_spec,
                 "bytes | train:N (SentencePiece BPE of N pieces trained on the training split) | a tokenizer.model, "
                 "tokenizer.json or GGUF file | a directory holding one (default: bytes for a preset, --model's own "
                 "tokenizer for --model)");
  app.add_option("--bits", bits, "bits of every decoder Linear")->check(CLI::Range(1, 8))->capture_default_str();
  app.add_option("--embedding-bits", embedding_bits, "bits of the embedding and the head (0: left dense)")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  app.add_option("--group-size", group_size, "output rows per LUT (0: one LUT per tensor)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--init", init,
                 "starting LUTs and weights of the decoder Linears: kmeans (k-means on the pretrained weights) | gptq "
                 "(GPTQ onto LUTs at --bits and --group-size first, calibrated on the training split: the "
                 "fine-tuning starts from the GPTQ model) | auto (gptq for a loaded model at 3 bits or fewer, "
                 "where k-means starts thousands of perplexity points away; kmeans otherwise)")
      ->check(CLI::IsMember({"auto", "kmeans", "gptq"}))
      ->capture_default_str();
  app.add_option("--tau", tau, "DKM softmax temperature")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--dkm-iters", dkm_iters,
                 "DKM iterations per forward (max_iter; the centroids carry over from step to step)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--engine", engine, "DKM engine: dense | table | streaming | auto")
      ->check(CLI::IsMember({"dense", "table", "streaming", "auto"}))
      ->capture_default_str();
  app.add_flag("--offload", offload, "offload saved tensors to host memory (host-to-host on CPU)");
  app.add_option("--offload-min-bytes", offload_min_bytes, "smallest saved tensor offloaded")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--embedding-dkm", embedding_dkm,
               "train the embedding and head with DKM too (default: they are fine-tuned unclustered and "
               "palettized by k-means at the end; DKM with 256 centroids costs far more per step)");
  app.add_flag("--checkpoint-activations", checkpoint_activations, "recompute each decoder layer in backward");
  app.add_option("--loss", loss_kind,
                 "fine-tuning loss: ce (next-token cross entropy) | distill (KL to the frozen uncompressed teacher, "
                 "mixed with cross entropy by --distill-alpha) | auto (distill for --model, else ce)")
      ->check(CLI::IsMember({"auto", "ce", "distill"}))
      ->capture_default_str();
  app.add_flag("--distill", distill, "same as --loss distill");
  app.add_option("--distill-temperature", distill_temperature)->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--distill-alpha", distill_alpha, "weight of the KL term")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--distill-hidden", distill_hidden,
                 "weight of an MSE between the student's and the teacher's final hidden states (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--autocast", autocast_name,
                 "mixed precision for the model's forward and backward: off | bf16 (LibTorch autocast: matmuls "
                 "in bf16, fp32 weights, gradients and losses; the DKM clustering stays in the weights' dtype)")
      ->check(CLI::IsMember({"off", "bf16"}))
      ->capture_default_str();
  app.add_option("--teacher-dtype", teacher_dtype_name,
                 "the distillation teacher's weights: model (the model's dtype) | bf16 (half the memory of an "
                 "fp32 teacher, its forward in bf16; its hidden states and logits enter the losses in fp32)")
      ->check(CLI::IsMember({"model", "bf16"}))
      ->capture_default_str();
  app.add_option("--steps", steps, "DKM fine-tuning steps")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--pretrain-steps", pretrain_steps,
                 "fp32 training steps before compression (default: 300 for the tiny preset, else 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--milestone", milestone, "step at which clustering starts")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per training sequence")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--batch", batch, "sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", lr, "peak fine-tuning learning rate (warm-up, cosine)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--pretrain-lr", pretrain_lr)->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--weight-decay", weight_decay)->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--optimizer", optimizer,
                 "adamw (LibTorch's: moments in the weights' dtype, 8 B state/param in fp32) | adamw-bf16 (bf16 "
                 "moments with stochastic rounding, 4 B/param; the default with --dtype bf16) | sgd (no state)")
      ->check(CLI::IsMember({"adamw", "adamw-bf16", "sgd"}))
      ->capture_default_str();
  app.add_option("--eval-tokens", eval_tokens, "tokens evaluated per held-out text (0: all)")->capture_default_str();
  app.add_option("--eval-seq-len", eval_seq_len, "context of the evaluation windows (default: --seq-len)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--eval-batch", eval_batch, "windows per evaluation forward")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--eval-every", eval_every,
                 "also evaluate the compressed model every N fine-tuning steps (the perplexity curve; 0: never)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
         "--baselines", baselines,
         "comma-separated rows besides DKM: uncompressed, rtn (per row), rtn-g128 (per row and 128 input columns), "
         "kmeans (the DKM rows' LUT granularity), kmeans-tensor, gptq (uniform grid, groups of 128 "
         "columns), gptq-lut (LUT at the DKM granularity), control (the uncompressed model fine-tuned the "
         "same steps); none")
      ->capture_default_str();
  app.add_option("--baseline-bits", baseline_bits_list, "comma-separated bits of the baselines (default: --bits)");
  app.add_option("--calibration-tokens", calibration_tokens, "training tokens GPTQ computes its Hessians from")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--skip-baselines", skip_baselines, "same as --baselines none");
  app.add_flag("--baselines-only", baselines_only, "stop after the baselines (no DKM fine-tuning)");
  app.add_option("--save-every", save_every,
                 "write the run state (model, optimizer, DKM state) to OUT/state every N steps (0: never)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", resume, "continue from OUT/state when it exists");
  app.add_option("--stop-after", stop_after,
                 "stop after N fine-tuning steps of this invocation, saving the run state (an interruption; "
                 "continue with --resume)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", dtype_name, "parameter dtype: fp32 | bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--device", device_name, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--out", out_dir, "output directory (compressed model, results.json, results.md)")
      ->capture_default_str();
  app.add_option("--save-hf", save_hf,
                 "also write the uncompressed model as a Hugging Face checkpoint here (with tokenizer.json when the "
                 "tokenizer is a byte-level BPE, e.g. a GGUF's own)");
  app.add_option("--save-hf-compressed", save_hf_compressed,
                 "write the compressed model, decompressed, as a Hugging Face checkpoint here (with tokenizer.json "
                 "as --save-hf)");
  app.add_option("--generate", generate,
                 "greedy-decode this many tokens after --prompt with the uncompressed and the compressed model")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--prompt", prompt, "prompt of --generate")->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--threads", threads,
                 "CPU threads (default: 1 for the tiny preset, whose small matrices gain little from more and lose "
                 "much on a loaded machine; else LibTorch's default; 0: that default)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--keep-host-memory", keep_host_memory,
               "keep freed host memory in glibc's heap (mallopt), the older route to what --host-cache does: "
               "SmolLM2, batch 4 x 256: 15.2 s per step and 7.17 GB peak RSS, against 12.6 s and 6.59 GB with "
               "--host-cache 1.25 and 23.3 s and 6.39 GB with neither");
  app.add_option("--head-loss", head_loss,
                 "fused: the LM head and its losses a chunk of 256 tokens at a time (edkm::functional::lm_head_loss; "
                 "no [tokens, vocab] logits held); plain: logits, then causal_lm_loss / distillation_kl_loss")
      ->check(CLI::IsMember({"fused", "plain"}))
      ->capture_default_str();
  app.add_option("--host-cache", host_cache,
                 "cache LibTorch's CPU blocks of 1 MiB and more for the next step instead of returning them to the "
                 "system, which page-faults and zeroes them again (edkm::enable_cpu_caching_allocator): 'off', "
                 "'unbounded', or a bound B >= 1 on the cached + in-use bytes as a multiple of the most in use")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::cout << std::unitbuf;  // progress lines reach a log file as they happen

  // Everything that can be checked before any long work.
  if (distill) loss_kind = "distill";
  if (loss_kind == "auto") loss_kind = model_dir.empty() ? "ce" : "distill";
  const bool use_teacher = loss_kind == "distill";
  if (!use_teacher && teacher_dtype_name != "model")
    std::cerr << "edkm_llama_compress: warning: --teacher-dtype has no effect with --loss " << loss_kind
              << " (no teacher)\n";
  if (skip_baselines) baselines = "none";
  std::set<std::string> wanted;
  for (const auto& b : split_list(baselines)) {
    TORCH_CHECK(b == "none" || b == "uncompressed" || b == "rtn" || b == "rtn-g128" || b == "kmeans" ||
                    b == "kmeans-tensor" || b == "gptq" || b == "gptq-lut" || b == "control",
                "--baselines: unknown method '", b, "'");
    if (b != "none") wanted.insert(b);
  }
  std::vector<int64_t> baseline_bits;
  for (const auto& b : split_list(baseline_bits_list)) {
    int64_t v = 0;
    try {
      v = std::stoll(b);
    } catch (const std::exception&) {
      TORCH_CHECK(false, "--baseline-bits: '", b, "' is not a number");
    }
    TORCH_CHECK(v >= 1 && v <= 8, "--baseline-bits: ", v, " is outside 1..8");
    baseline_bits.push_back(v);
  }
  if (baseline_bits.empty()) baseline_bits.push_back(bits);
  if (eval_seq_len == 0) eval_seq_len = seq_len;
  TORCH_CHECK(eval_seq_len >= 2, "--eval-seq-len must be at least 2");
  TORCH_CHECK(distill_alpha >= 0 && distill_alpha <= 1, "--distill-alpha must be in [0, 1]");
  TORCH_CHECK(distill_temperature > 0, "--distill-temperature must be positive, got ", distill_temperature);
  TORCH_CHECK(eval_tokens >= 0, "--eval-tokens must be >= 0 (0: all of each held-out text), got ", eval_tokens);
  TORCH_CHECK(init != "gptq" || steps > 0 || baselines_only,
              "--init gptq starts the fine-tuning from GPTQ's LUTs, and --steps 0 runs none: for GPTQ onto LUTs "
              "without fine-tuning use --baselines gptq-lut");
  TORCH_CHECK(engine != "table" || (dtype_name == "bf16" && group_size == 0),
              "--engine table clusters 16-bit weights with one LUT per tensor: it needs --dtype bf16 and no "
              "--group-size (--engine auto takes it wherever it applies)");
  TORCH_CHECK(device_name != "cuda" || torch::cuda::is_available(), "--device cuda: no CUDA device is available");
  TORCH_CHECK(milestone == 0 || milestone < steps || steps == 0 || baselines_only, "--milestone ", milestone,
              " is not below --steps ", steps,
              ": no step would cluster the weights (the DKM row would be plain "
              "fine-tuning and k-means)");
  TORCH_CHECK(generate == 0 || !prompt.empty(), "--prompt is empty (--generate ", generate, " needs one)");

  // --model before anything reads it: it is also the default tokenizer, and a mistyped path must
  // not surface as a tokenizer error.
  if (!model_dir.empty()) {
    struct stat st {};
    TORCH_CHECK(stat(model_dir.c_str(), &st) == 0, "--model ", model_dir, ": no such file or directory");
    if (edkm::is_directory(model_dir)) {
      TORCH_CHECK(stat((model_dir + "/config.json").c_str(), &st) == 0, "--model ", model_dir,
                  ": a directory without config.json (a Hugging Face checkpoint directory has one)");
    } else {
      TORCH_CHECK(edkm::is_gguf_file(model_dir), "--model ", model_dir,
                  " is neither a Hugging Face checkpoint directory nor a GGUF file");
    }
  }
  if (threads < 0 && model_dir.empty() && preset == "tiny") threads = 1;
  edkm::examples::set_threads(threads);
  if (keep_host_memory) edkm::examples::keep_freed_host_memory();
  edkm::examples::enable_host_cache(host_cache);
  edkm::MemoryMeter whole_run;
  const auto t_start = Clock::now();
  at::manual_seed(seed);
  const at::ScalarType dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  // LibTorch's AdamW keeps its moments in the weights' dtype, rounded to nearest: in bf16 beta2's
  // 0.1% decay per step is under half an ulp, so the second moment never decays (edkm/optim/adamw_bf16.h).
  if (dtype == at::kBFloat16 && optimizer == "adamw") {
    if (app.count("--optimizer") == 0) {
      optimizer = "adamw-bf16";
    } else {
      std::cerr << "edkm_llama_compress: warning: --optimizer adamw with --dtype bf16 keeps LibTorch's AdamW moments "
                   "in bf16 rounded to nearest, where the second moment cannot decay (beta2 moves it by less than "
                   "half a bf16 ulp per step); --optimizer adamw-bf16 rounds them stochastically\n";
    }
  }
  const c10::Device device(device_name == "cuda" ? c10::kCUDA : c10::kCPU);
  // Every output directory, before any long work: it must be (or become) a directory we can write.
  for (const auto& [flag, dir] : {std::pair<const char*, std::string>{"--out", out_dir},
                                  {"--save-hf", save_hf},
                                  {"--save-hf-compressed", save_hf_compressed}}) {
    if (dir.empty()) continue;
    try {
      edkm::make_directories(dir);
      TORCH_CHECK(edkm::is_directory(dir), "it exists and is not a directory");
      const std::string probe = dir + "/.edkm_write_probe";
      edkm::write_text_file(probe, "");
      std::remove(probe.c_str());
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, flag, " ", dir, " cannot hold this run's output: ", e.what_without_backtrace());
    }
  }
  // --save-hf and --save-hf-compressed write the same file names: one directory would keep only
  // the compressed model (--out shares config.json with them and is allowed: the configs agree).
  if (!save_hf.empty() && !save_hf_compressed.empty()) {
    TORCH_CHECK(!same_file(save_hf, save_hf_compressed), "--save-hf ", save_hf, " and --save-hf-compressed ",
                save_hf_compressed, " are one directory: the compressed model would overwrite the uncompressed one");
  }

  // Corpus: every 10th document held out; the --eval-corpus texts are held out whole.
  const auto docs = read_corpus(corpus);
  std::string train_text;
  std::vector<const std::string*> train_docs, eval_docs;
  for (size_t i = 0; i < docs.size(); ++i) (i % 10 == 9 ? eval_docs : train_docs).push_back(&docs[i]);
  for (auto* d : train_docs) train_text += *d, train_text += "\n";
  std::vector<std::vector<std::string>> extra_docs;
  for (const auto& path : eval_corpora) extra_docs.push_back(read_corpus(path, 1));

  // Tokenizer. A GGUF file carries its tokenizer (load_tokenizer reads tokenizer.ggml.*), as a
  // directory does.
  if (tokenizer_spec.empty()) tokenizer_spec = model_dir.empty() ? "bytes" : model_dir;
  std::unique_ptr<edkm::Tokenizer> tokenizer;
  std::string tokenizer_file = tokenizer_spec;  // what load_tokenizer read (save_tokenizer_beside)
  if (tokenizer_spec.compare(0, 6, "train:") == 0) {
    const std::string prefix = out_dir + "/tokenizer";
    edkm::write_text_file(prefix + ".train.txt", train_text);
    edkm::train_sentencepiece(prefix + ".train.txt", prefix, vocab_size_of(tokenizer_spec));
    tokenizer_file = prefix + ".model";
    tokenizer = edkm::load_tokenizer(tokenizer_file);
  } else {
    tokenizer = edkm::load_tokenizer(tokenizer_spec);
  }
  const at::Tensor train_ids = encode_documents(*tokenizer, train_docs);
  TORCH_CHECK(train_ids.numel() > seq_len + 1, "corpus ", corpus, ": the training split has ", train_ids.numel(),
              " tokens, too few for --seq-len ", seq_len);
  std::vector<EvalSet> eval_sets;
  eval_sets.push_back({corpus_label(corpus) + " (held-out 10%)", encode_documents(*tokenizer, eval_docs)});
  for (size_t i = 0; i < eval_corpora.size(); ++i) {
    std::vector<const std::string*> ptrs;
    for (const auto& d : extra_docs[i]) ptrs.push_back(&d);
    eval_sets.push_back({corpus_label(eval_corpora[i]), encode_documents(*tokenizer, ptrs)});
  }
  for (auto& e : eval_sets) {
    if (eval_tokens > 0 && e.ids.numel() > eval_tokens) e.ids = e.ids.narrow(0, 0, eval_tokens);
    TORCH_CHECK(e.ids.numel() >= eval_seq_len, "held-out text ", e.label, " has ", e.ids.numel(),
                " tokens, fewer than one evaluation window of ", eval_seq_len, " (--eval-seq-len)");
  }
  // --init auto: GPTQ onto the LUTs for a pretrained model at <= 3 bits (SmolLM2 at 3 bits, 16 rows per
  // LUT: k-means starts at perplexity 38,929 and reaches 181 in 16 steps, GPTQ starts at 126 and
  // reaches 81; benchmarks/results/smollm2_quality.md), k-means otherwise; where the training split
  // is too short for GPTQ's calibration, k-means with a warning.
  const bool init_auto = init == "auto";
  if (init_auto) {
    init = !model_dir.empty() && bits <= 3 ? "gptq" : "kmeans";
    if (init == "gptq" && train_ids.numel() < 4 * eval_seq_len) {
      std::cerr << "warning: --init auto: the training split (" << train_ids.numel()
                << " tokens) is too short for GPTQ's calibration; starting from k-means\n";
      init = "kmeans";
    }
  }
  bool init_gptq = init == "gptq" && !baselines_only && steps > 0;
  const bool want_gptq = wanted.count("gptq") || wanted.count("gptq-lut") || init_gptq;
  TORCH_CHECK(!want_gptq || train_ids.numel() >= 4 * eval_seq_len, "GPTQ calibration: the training split has ",
              train_ids.numel(), " tokens, fewer than 4 windows of ", eval_seq_len);

  // GPTQ's calibration: windows of --eval-seq-len tokens at seeded random offsets of the training split.
  at::Tensor calibration;
  if (want_gptq) {
    const int64_t windows = std::max<int64_t>(1, calibration_tokens / eval_seq_len);
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + 17);
    const at::Tensor starts = at::randint(train_ids.numel() - eval_seq_len, {windows}, g, at::kLong);
    calibration = train_ids.index({starts.unsqueeze(1) + at::arange(eval_seq_len, at::kLong).unsqueeze(0)});
  }

  // Model.
  edkm::LlamaForCausalLM model{nullptr};
  std::string source;
  if (!model_dir.empty()) {
    model = edkm::load_llama(  // a Hugging Face directory or a GGUF file
        model_dir, edkm::LlamaLoadOptions().dtype(dtype).num_layers(layers).checkpoint_layers(checkpoint_activations));
    source = model_dir;
  } else {
    auto config = edkm::LlamaConfig::preset(preset).checkpoint_layers(checkpoint_activations);
    if (preset == "tiny") config.vocab_size(tokenizer->vocab_size());
    if (layers > 0) config.num_hidden_layers(layers);
    config.max_position_embeddings(std::max({config.max_position_embeddings(), seq_len, eval_seq_len}));
    model = edkm::LlamaForCausalLM(config);
    model->to(dtype);
    source = "preset " + preset + " (random weights)";
  }
  model->to(device);
  const auto& config = model->config;
  TORCH_CHECK(tokenizer->vocab_size() <= config.vocab_size(), "the tokenizer has ", tokenizer->vocab_size(),
              " tokens but the model only ", config.vocab_size());
  if (pretrain_steps < 0) pretrain_steps = model_dir.empty() && preset == "tiny" ? 300 : 0;
  const int64_t n_params = config.num_parameters();
  // GPTQ needs at least in_features calibration vectors per Linear (edkm/quant/gptq.h): said now, not
  // after the other baselines ran.
  if (want_gptq) {
    const int64_t widest = std::max(config.hidden_size(), config.intermediate_size());
    if (init_auto && init_gptq && calibration.numel() < widest) {
      std::cerr << "warning: --init auto: " << calibration.numel() << " calibration tokens are fewer than the widest "
                << "Linear input (" << widest << "), too few for GPTQ; starting from k-means\n";
      init = "kmeans";
      init_gptq = false;
    }
  }
  if (want_gptq && (init_gptq || wanted.count("gptq") || wanted.count("gptq-lut"))) {
    const int64_t widest = std::max(config.hidden_size(), config.intermediate_size());
    TORCH_CHECK(calibration.numel() >= widest, "GPTQ calibration: ", calibration.numel(),
                " tokens (--calibration-tokens ", calibration_tokens, " in windows of ", eval_seq_len,
                ") are fewer than the widest Linear input (", widest, "); raise --calibration-tokens");
  }
  const std::string state_dir = out_dir + "/state";
  const bool resuming = resume && edkm::is_file(state_dir + "/progress.json");
  // Files of an earlier run into the same --out that this run may not write again: a stale
  // tokenizer would be picked up beside the new checkpoint, a stale state by a later --resume.
  // Removed when this run writes its own state or outputs, not before: a run that a check refuses
  // (or that stops) first leaves the earlier run's files, a resumable state among them, as they
  // were. (POSIX calls: std::filesystem here resolved to the copy libtorch.so exports and crashed.)
  bool stale_removed = resume;
  auto remove_stale_outputs = [&] {
    if (stale_removed) return;
    stale_removed = true;
    std::vector<std::string> removed;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}) {
      const std::string path = out_dir + "/" + f;
      if (same_file(path, tokenizer_file)) continue;  // what this run read or trained
      if (std::remove(path.c_str()) == 0) removed.push_back(f);
    }
    if (DIR* d = opendir(state_dir.c_str())) {  // flat: the files save_state writes
      while (const dirent* e = readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
          std::remove((state_dir + "/" + e->d_name).c_str());
      closedir(d);
      if (rmdir(state_dir.c_str()) == 0) removed.push_back("state/");
    }
    if (!removed.empty()) {
      std::cout << "note: " << out_dir << " held an earlier run's";
      for (const auto& f : removed) std::cout << " " << f;
      std::cout << "; removed (this run writes its own; --resume continues a saved run instead)\n";
    }
  };

  std::cout << "edkm " << EDKM_VERSION_STRING << " LLaMA compression\n"
            << "  model      " << source << ": " << config.num_hidden_layers() << " layers, hidden "
            << config.hidden_size() << ", MLP " << config.intermediate_size() << ", heads "
            << config.num_attention_heads() << "/" << config.num_key_value_heads() << " kv, vocab "
            << config.vocab_size() << ", " << fixed(n_params / 1e6, 2) << "M parameters, " << dtype_name << ", "
            << device_name << "\n"
            << "  corpus     " << corpus << ": " << docs.size() << " documents, " << train_docs.size() << " train ("
            << train_ids.numel() << " tokens), " << eval_docs.size() << " held out\n";
  for (const auto& e : eval_sets)
    std::cout << "  evaluation " << e.label << ": " << e.ids.numel() << " tokens, windows of " << eval_seq_len << "\n";
  std::cout << "  tokenizer  " << tokenizer->name() << "\n"
            << "  training   loss " << loss_kind << ", engine " << engine << (offload ? ", offload" : "")
            << (checkpoint_activations ? ", activation checkpointing" : "") << ", optimizer " << optimizer
            << (resuming ? ", resuming from " + state_dir : "") << "\n";

  auto sample = [&](int64_t step, uint64_t stream) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + stream * 7919 + static_cast<uint64_t>(step));
    const at::Tensor starts = at::randint(train_ids.numel() - seq_len, {batch}, g, at::kLong);
    const at::Tensor offs = starts.unsqueeze(1) + at::arange(seq_len, at::kLong).unsqueeze(0);
    return train_ids.index({offs}).to(device);
  };
  auto evaluate = [&](edkm::LlamaForCausalLM& m) {
    std::vector<Eval> out;
    for (const auto& e : eval_sets) out.push_back(perplexity(m, e.ids, eval_seq_len, eval_batch));
    return out;
  };
  auto ppl_text = [&](const std::vector<Eval>& evals) {
    std::string s;
    for (size_t i = 0; i < evals.size(); ++i)
      s += (i ? ", " : "") + eval_sets[i].label + " " + fixed(evals[i].perplexity, 3);
    return s;
  };

  // Plain training of `m` (no clustering): the pre-training, and the control run of the fine-tuning.
  double plain_steady_step_s = 0;
  auto train_plain = [&](edkm::LlamaForCausalLM& m, int64_t n, double peak_lr, const std::string& kind, uint64_t stream,
                         const std::string& label,
                         const std::function<at::Tensor(edkm::LlamaForCausalLM&, const at::Tensor&)>& loss_of) {
    std::vector<at::Tensor> ps;
    for (auto& p : m->parameters()) ps.push_back(p);
    Optimizer opt(kind, ps, peak_lr, weight_decay);
    edkm::ProgressBar bar(n, label);
    const auto t0 = Clock::now();
    double tok_s = 0;
    plain_steady_step_s = 0;  // mean of the steps after the first (the first allocates, e.g. AdamW's state)
    auto after_first = t0;
    for (int64_t s = 0; s < n; ++s) {
      if (s == 1) after_first = Clock::now();
      opt.set_lr(schedule(peak_lr, s, n));
      const at::Tensor x = sample(s, stream);
      const at::Tensor loss = loss_of(m, x);
      opt.zero_grad();
      loss.backward();
      opt.step();
      tok_s = static_cast<double>((s + 1) * batch * seq_len) / seconds_since(t0);
      bar.tick("loss " + fixed(loss.item<double>(), 3) + ", " + fixed(tok_s, 0) + " tok/s");
    }
    if (n > 1) plain_steady_step_s = seconds_since(after_first) / static_cast<double>(n - 1);
    bar.finish();
    return tok_s;
  };
  auto lm_loss = [](edkm::LlamaForCausalLM& m, const at::Tensor& x) {
    return edkm::functional::causal_lm_loss(m(x), x);
  };

  // Which layers, at which bits: every Linear of the decoder at --bits, embedding and head at
  // --embedding-bits (or left dense).
  const auto dkm_engine = edkm::engine_from_string(engine);
  auto dkm_options = [&](int64_t b) {
    auto o =
        edkm::DKMOptions(b).engine(dkm_engine).milestone(milestone).weight_threshold(0).tau(tau).max_iter(dkm_iters);
    if (group_size > 0) o.granularity(edkm::Granularity::kPerGroupedChannel).group_size(group_size);
    return o;
  };
  std::optional<edkm::DKMOptions> head_options;
  if (embedding_bits > 0) {
    // Without --embedding-dkm: never clustered in training (k-means at finalize()); "never", not
    // steps + 1, so that a resumed run may grow --steps.
    head_options =
        dkm_options(embedding_bits).milestone(embedding_dkm ? milestone : std::numeric_limits<int64_t>::max());
    head_options->granularity(edkm::Granularity::kPerTensor).group_size(0);
  }
  auto pal_options = edkm::PalettizerOptions(dkm_options(bits)).module_type("Embedding", head_options);
  // An untied head takes the embedding's options; a tied one is the embedding (no lm_head module,
  // and a pattern matching nothing would warn).
  if (!config.tie_word_embeddings()) pal_options.module_name("lm_head", head_options);
  auto select_layers = [&](edkm::LlamaForCausalLM& m) {
    std::vector<Layer> out;
    for (const auto& item : m->named_modules("", false)) {
      const std::string type = item.value()->as<torch::nn::LinearImpl>()      ? "Linear"
                               : item.value()->as<torch::nn::EmbeddingImpl>() ? "Embedding"
                                                                              : "";
      if (type.empty()) continue;
      if (auto o = pal_options.resolve(item.key(), type)) {
        out.push_back({item.key(), item.value()->named_parameters(false)["weight"], *o,
                       item.key().rfind("model.layers.", 0) == 0});
      }
    }
    return out;
  };
  const std::vector<Layer> selected = select_layers(model);
  for (const auto& l : selected) {  // group sizes must divide every clustered layer's rows
    if (!l.linear || group_size == 0) continue;
    TORCH_CHECK(l.weight.size(0) % group_size == 0, "--group-size ", group_size, " does not divide the ",
                l.weight.size(0), " rows of ", l.name);
  }

  // 1. fp32 pre-training (the tiny demo has no checkpoint); a resumed run reads the model the
  // fine-tuning started from instead.
  double pretrain_tok_s = 0, pretrain_step_s = 0;
  if (resuming) {
    load_bytes(model, edkm::read_text_file(state_dir + "/start.pt"));
  } else if (pretrain_steps > 0) {
    pretrain_tok_s = train_plain(model, pretrain_steps, pretrain_lr, "adamw", 1, "pretrain " + dtype_name, lm_loss);
    pretrain_step_s = plain_steady_step_s;
  }
  if (!save_hf.empty()) {
    save_hf_with_logits(model, save_hf, eval_sets[0].ids, seq_len, *tokenizer);
    std::cout << "wrote the uncompressed model to " << save_hf << " (Hugging Face layout)\n";
  }

  // 2. Held-out perplexity of the uncompressed model and of the post-training baselines.
  std::vector<Row> rows;
  int64_t clustered_numel = 0, linear_numel = 0;
  for (const auto& l : selected) {
    clustered_numel += l.weight.numel();
    if (l.linear) linear_numel += l.weight.numel();
  }
  // Bits per weight over every clustered layer, and over the decoder's Linear layers alone.
  auto bits_of = [&](auto&& layer_bits) {
    double all = 0, lin = 0;
    for (const auto& l : selected) {
      const double b = layer_bits(l);
      all += b;
      if (l.linear) lin += b;
    }
    return std::make_pair(all / static_cast<double>(clustered_numel), lin / static_cast<double>(linear_numel));
  };
  // The embedding and head of every compressed row: k-means at --embedding-bits, one LUT per tensor.
  auto head_bits = [&](const Layer& l) { return lut_bits(l, l.options.bits(), 1); };
  const double dense_bits = dtype == at::kFloat ? 32 : 16;
  auto add_row = [&](Row r) {
    std::cout << "perplexity " << r.method << ": " << ppl_text(r.evals) << "\n";
    rows.push_back(std::move(r));
  };
  if (wanted.count("uncompressed"))
    add_row({dtype_name + " (uncompressed)", 0, dense_bits, dense_bits, evaluate(model), ""});
  std::string gptq_facts, sample_before, sample_after, sample_packed;
  std::vector<int64_t> after_ids;
  PackedRun packed_run;  // the written file run packed (LlamaRuntime: LUT kernels, KV cache)
  const std::vector<int64_t> prompt_ids = generate > 0 ? tokenizer->encode(prompt) : std::vector<int64_t>{};
  if (generate > 0) {
    TORCH_CHECK(!prompt_ids.empty(), "--prompt is empty");
    sample_before = tokenizer->decode(greedy_generate(model, prompt_ids, generate, tokenizer->eos_id()));
    std::cout << "uncompressed model: " << prompt << sample_before << "\n";
  }
  // The post-training baselines of a model: each evaluated with the weights replaced, then the
  // weights restored.
  auto post_training_baselines = [&](edkm::LlamaForCausalLM& m, const std::string& prefix) {
    const std::vector<Layer> layers = select_layers(m);
    std::vector<at::Tensor> originals;
    for (const auto& l : layers) originals.push_back(l.weight.detach().clone());
    auto restore = [&] {
      at::NoGradGuard ng;
      for (size_t i = 0; i < layers.size(); ++i) layers[i].weight.copy_(originals[i]);
    };
    // The embedding and the head first: the same in every row (their k-means computed once).
    std::vector<at::Tensor> heads(layers.size());
    auto replace_heads = [&] {
      at::NoGradGuard ng;
      for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i].linear) continue;
        if (!heads[i].defined()) heads[i] = kmeans_quantize(originals[i], layers[i].options);
        layers[i].weight.copy_(heads[i]);
      }
    };
    auto evaluate_replaced = [&](const std::string& method, int64_t b, std::pair<double, double> bpw,
                                 const std::function<at::Tensor(const Layer&)>& replace) {
      replace_heads();
      {
        at::NoGradGuard ng;
        for (const auto& l : layers)
          if (l.linear) l.weight.copy_(replace(l));
      }
      add_row({prefix + method, b, bpw.first, bpw.second, evaluate(m), ""});
      restore();
    };
    for (const int64_t b : baseline_bits) {
      const std::string bs = std::to_string(b) + "-bit ";
      auto linear_or_head = [&](auto&& linear_bits) {
        return bits_of([&](const Layer& l) { return l.linear ? linear_bits(l) : head_bits(l); });
      };
      if (wanted.count("rtn"))
        evaluate_replaced(bs + "RTN (per-row min-max)", b,
                          linear_or_head([&](const Layer& l) { return uniform_bits(l, b, 0); }),
                          [&](const Layer& l) { return edkm::rtn_quantize(l.weight.detach(), b, 0); });
      if (wanted.count("rtn-g128"))
        evaluate_replaced(bs + "RTN (g" + std::to_string(rtn_group) + ")", b,
                          linear_or_head([&](const Layer& l) { return uniform_bits(l, b, rtn_group); }),
                          [&](const Layer& l) { return edkm::rtn_quantize(l.weight.detach(), b, rtn_group); });
      const auto lut_opts = dkm_options(b);
      const std::string lut_name = group_size > 0 ? std::to_string(group_size) + " rows per LUT" : "one LUT per tensor";
      if (wanted.count("kmeans"))
        evaluate_replaced(bs + "k-means (" + lut_name + ")", b,
                          linear_or_head([&](const Layer& l) { return lut_bits(l, b, lut_groups(l, lut_opts)); }),
                          [&](const Layer& l) { return kmeans_quantize(l.weight.detach(), lut_opts); });
      if (wanted.count("kmeans-tensor") && group_size > 0)
        evaluate_replaced(bs + "k-means (one LUT per tensor)", b,
                          linear_or_head([&](const Layer& l) { return lut_bits(l, b, 1); }), [&](const Layer& l) {
                            return kmeans_quantize(l.weight.detach(),
                                                   dkm_options(b).granularity(edkm::Granularity::kPerTensor));
                          });
      // GPTQ, layer by layer on calibration windows of the training split (the embedding and the
      // head replaced first, so the calibration runs through them as the evaluation will).
      auto gptq_row = [&](const std::string& method, const edkm::GPTQOptions& go, std::pair<double, double> bpw) {
        replace_heads();
        edkm::ProgressBar gbar(config.num_hidden_layers() * 7, "GPTQ " + method);
        const auto rep = edkm::gptq_quantize_llama(m, calibration, go, [&](int64_t, int64_t) { gbar.tick(); });
        gbar.finish();
        double err = 0;
        for (const auto& e : rep.layer_error) err += e.second;
        gptq_facts += "- GPTQ " + method + ": " + fixed(rep.seconds, 1) + " s on " +
                      std::to_string(calibration.numel()) + " calibration tokens; summed layer error " + fixed(err, 3) +
                      "\n";
        add_row({prefix + method, b, bpw.first, bpw.second, evaluate(m), ""});
        restore();
      };
      if (wanted.count("gptq"))
        gptq_row(bs + "GPTQ (g" + std::to_string(rtn_group) + ")", edkm::GPTQOptions(b).group_size(rtn_group),
                 linear_or_head([&](const Layer& l) { return uniform_bits(l, b, rtn_group); }));
      if (wanted.count("gptq-lut"))
        gptq_row(bs + "GPTQ (" + lut_name + ")", edkm::GPTQOptions(b).grid(edkm::QuantGrid::kLut).lut_rows(group_size),
                 linear_or_head([&](const Layer& l) { return lut_bits(l, b, lut_groups(l, lut_opts)); }));
    }
  };
  if (!wanted.empty() && !(wanted.size() == 1 && wanted.count("uncompressed"))) post_training_baselines(model, "");

  // 3. DKM fine-tuning with every selected layer clustered, and its control: the uncompressed
  // model trained the same steps on the same batches (the fine-tuning also continues training).
  // The teacher of --loss distill: the uncompressed model, frozen, without autograd state.
  edkm::LlamaForCausalLM teacher{nullptr};
  if (use_teacher && (!baselines_only || wanted.count("control"))) {
    teacher = std::dynamic_pointer_cast<edkm::LlamaForCausalLMImpl>(model->clone());
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    teacher->eval();
    if (teacher_dtype_name == "bf16") teacher->to(at::kBFloat16);
  }
  struct Teacher {
    at::Tensor hidden, logits;
  };
  // The head's weight (lm_head, or the tied embedding: inside a Palettizer scope, what the module's
  // member holds, the clustered weight); undefined for a head with a bias, which the fused loss
  // does not take.
  auto head_weight = [](edkm::LlamaForCausalLM& m) {
    if (!m->lm_head) return m->model->embed_tokens->weight;
    return m->lm_head->bias.defined() ? at::Tensor() : m->lm_head->weight;
  };
  const bool fused_head = head_loss == "fused" && head_weight(model).defined();
  auto teacher_forward = [&](const at::Tensor& x) {
    Teacher t;
    if (!teacher) return t;
    at::NoGradGuard ng;
    t.hidden = teacher->model(x);
    if (!fused_head) t.logits = teacher->logits(t.hidden).to(at::kFloat);  // a bf16 teacher's too
    return t;
  };
  // The fine-tuning loss: next-token cross entropy, or (distill) KL to the teacher's logits mixed
  // with it, plus the hidden-state MSE when --distill-hidden > 0. --head-loss fused computes the
  // head and these losses a chunk of tokens at a time (edkm::functional::lm_head_loss): the same
  // loss without the [tokens, vocab] logits of either model.
  auto finetune_loss = [&](edkm::LlamaForCausalLM& m, const at::Tensor& hidden, const at::Tensor& x, const Teacher& t) {
    at::Tensor loss;
    if (fused_head) {
      // Under --autocast bf16 the head's matmuls run in bf16 too, as autocast runs a Linear: the
      // logits of both models rounded to bf16, then the softmaxes and losses in fp32.
      const auto head_dtype = autocast_name == "bf16" ? at::kBFloat16 : at::kFloat;
      const auto o = edkm::LmHeadLossOptions()
                         .alpha(distill_alpha)
                         .temperature(distill_temperature)
                         .gradient_matmul_dtype(head_dtype)
                         .logits_matmul_dtype(head_dtype);
      loss = teacher ? edkm::functional::lm_head_loss(hidden, head_weight(m), x, t.hidden, head_weight(teacher), o)
                     : edkm::functional::lm_head_loss(hidden, head_weight(m), x, {}, {}, o);
    } else {
      const at::Tensor logits = m->logits(hidden);
      loss = edkm::functional::causal_lm_loss(logits, x);
      if (t.logits.defined())
        loss = distill_alpha * edkm::functional::distillation_kl_loss(logits, t.logits, distill_temperature) +
               (1 - distill_alpha) * loss;
    }
    if (t.hidden.defined() && distill_hidden > 0)
      loss = loss + distill_hidden * edkm::functional::hidden_state_mse_loss(hidden, t.hidden);
    return loss;
  };
  // The student's final hidden states, under --autocast (the losses after it run in fp32).
  auto student_hidden = [&](edkm::LlamaForCausalLM& m, const at::Tensor& x) {
    Autocast amp(autocast_name == "bf16", device.type());
    const at::Tensor h = m->model(x);
    return dtype_name == "bf16" ? h : h.to(at::kFloat);
  };
  auto model_loss = [&](edkm::LlamaForCausalLM& m, const at::Tensor& x) {
    const Teacher t = teacher_forward(x);
    return finetune_loss(m, student_hidden(m, x), x, t);
  };
  if (wanted.count("control") && steps > 0) {
    auto control = std::dynamic_pointer_cast<edkm::LlamaForCausalLMImpl>(model->clone());
    edkm::LlamaForCausalLM control_model(control);
    train_plain(control_model, steps, lr, optimizer, 2, "control " + dtype_name, model_loss);
    add_row({dtype_name + ", trained the same " + std::to_string(steps) + " steps (control)", 0, dense_bits, dense_bits,
             evaluate(control_model), ""});
    const auto saved = wanted;
    wanted.erase("control");
    post_training_baselines(control_model, "control, then ");
    wanted = saved;
  }
  if (baselines_only) {
    steps = 0;
  }

  // The pretrained model (the teacher of a resumed run and what --init gptq starts
  // from), written once up front.
  if (!resuming && (save_every > 0 || stop_after > 0) && !baselines_only) {
    remove_stale_outputs();
    edkm::make_directories(state_dir);
    edkm::write_text_file(state_dir + "/start.pt", save_bytes(model));
  }
  // --init gptq: the decoder Linears replaced by GPTQ onto LUTs at the DKM granularity; the
  // Palettizer's k-means then finds those LUTs exactly (at most 2^bits values per group), so the
  // fine-tuning starts from the GPTQ model instead of from per-group k-means. A resumed run reads
  // the model it had reached instead.
  if (init_gptq && !resuming) {
    const auto go = edkm::GPTQOptions(bits).grid(edkm::QuantGrid::kLut).lut_rows(group_size);
    edkm::ProgressBar gbar(config.num_hidden_layers() * 7, "GPTQ init");
    const auto rep = edkm::gptq_quantize_llama(model, calibration, go, [&](int64_t, int64_t) { gbar.tick(); });
    gbar.finish();
    double err = 0;
    for (const auto& e : rep.layer_error) err += e.second;
    gptq_facts += "- DKM initialised by GPTQ onto LUTs (" + std::to_string(bits) + " bits): " + fixed(rep.seconds, 1) +
                  " s on " + std::to_string(calibration.numel()) + " calibration tokens; summed layer error " +
                  fixed(err, 3) + "\n";
  }
  std::optional<edkm::Palettizer> palettizer;
  if (!baselines_only) palettizer.emplace(model, pal_options);
  std::optional<Optimizer> opt;
  if (!baselines_only) opt.emplace(optimizer, model->parameters(), lr, weight_decay);
  const int state_bytes_per_param = opt ? opt->state_bytes_per_param : 0;
  int64_t first_step = 0;
  json curve = json::array();
  // What shapes the training trajectory besides --steps (which may grow): a resumed run must
  // continue the saved one, or its results would describe a run that never happened.
  const json run_options = {{"model", source},
                            {"preset", model_dir.empty() ? preset : ""},
                            {"corpus", corpus},
                            {"tokenizer", tokenizer_spec},
                            {"dtype", dtype_name},
                            {"seq_len", seq_len},
                            {"batch", batch},
                            {"lr", lr},
                            {"weight_decay", weight_decay},
                            {"optimizer", optimizer},
                            {"loss", loss_kind},
                            {"distill_temperature", distill_temperature},
                            {"distill_alpha", distill_alpha},
                            {"distill_hidden", distill_hidden},
                            {"pretrain_steps", pretrain_steps},
                            {"pretrain_lr", pretrain_lr},
                            {"init", init},
                            {"engine", engine},
                            {"tau", tau},
                            {"dkm_iters", dkm_iters},
                            {"seed", seed},
                            {"layers", layers},
                            {"bits", bits},
                            {"group_size", group_size},
                            {"embedding_bits", embedding_bits},
                            {"milestone", milestone}};
  if (resume && !resuming)
    std::cout << "note: --resume, but " << state_dir << " holds no saved run: starting from step 0\n";
  if (resuming) {
    const json progress = json::parse(edkm::read_text_file(state_dir + "/progress.json"));
    // The options first, naming them, before the saved tensors meet this run's shapes.
    if (progress.contains("run")) {  // (states saved before the check have none; older ones fewer keys)
      std::string differ;
      for (const auto& [key, value] : run_options.items()) {
        if (!progress.at("run").contains(key)) continue;
        const json saved = progress.at("run").at(key);
        std::string flag = key;  // seq_len -> --seq-len
        std::replace(flag.begin(), flag.end(), '_', '-');
        if (saved != value) differ += "\n  --" + flag + ": " + value.dump() + " now, " + saved.dump() + " saved";
      }
      TORCH_CHECK(differ.empty(), "--resume: these options differ from the saved run's (", state_dir,
                  "/progress.json):", differ, "\nresume with the saved options, or write to another --out");
    }
    load_bytes(model, edkm::read_text_file(state_dir + "/model.pt"));
    palettizer->load_state(state_dir + "/palettizer.pt");
    opt->load(edkm::read_text_file(state_dir + "/optimizer.pt"));
    first_step = progress.at("step").get<int64_t>();
    curve = progress.value("curve", json::array());
    TORCH_CHECK(first_step <= steps, "--resume: the saved run is at step ", first_step, ", past --steps ", steps);
    std::cout << "resumed at step " << first_step << " from " << state_dir << "\n";
  }
  auto save_state = [&](int64_t step) {
    edkm::write_text_file(state_dir + "/model.pt", save_bytes(model));
    palettizer->save_state(state_dir + "/palettizer.pt");
    edkm::write_text_file(state_dir + "/optimizer.pt", opt->save());
    // Last: a progress file names a complete state.
    edkm::write_text_file(state_dir + "/progress.json",
                          json{{"step", step}, {"curve", curve}, {"run", run_options}}.dump(2) + "\n");
  };
  // The compressed model's perplexity (hard assignment to the current centroids) mid-run.
  auto evaluate_compressed = [&]() {
    model->eval();
    std::vector<Eval> ev;
    {
      auto clustered = palettizer->clustered();
      ev = evaluate(model);
    }
    model->train();
    return ev;
  };
  auto curve_point = [&](int64_t step, const std::vector<Eval>& ev) {
    json p = {{"step", step}, {"tokens_seen", step * batch * seq_len}};
    for (size_t i = 0; i < ev.size(); ++i) p["perplexity"][eval_sets[i].label] = ev[i].perplexity;
    curve.push_back(p);
  };
  if (eval_every > 0 && !resuming && palettizer) curve_point(0, evaluate_compressed());

  StepProfile profile;
  std::optional<edkm::ProgressBar> bar;
  if (steps > first_step) bar.emplace(steps - first_step, "DKM fine-tune");
  int64_t step_peak_cpu = 0, step_peak_cuda = 0;
  double finetune_tok_s = 0, step_seconds = 0, last_loss = 0;
  std::optional<edkm::OffloadStats> offload_stats;
  const auto t_ft = Clock::now();
  for (int64_t s = first_step; s < steps; ++s) {
    opt->set_lr(schedule(lr, s, steps));
    const at::Tensor x = sample(s, 2);
    const auto t_step = Clock::now();
    edkm::MemoryMeter meter;
    {
      std::optional<edkm::OffloadGuard> off;
      if (offload) off.emplace(edkm::OffloadOptions().host_to_host(device.is_cpu()).min_bytes(offload_min_bytes));
      auto t = Clock::now();
      const Teacher tch = teacher_forward(x);
      if (teacher) profile.add("teacher forward", seconds_since(t));
      at::Tensor loss;
      {
        t = Clock::now();
        auto clustered = palettizer->clustered();
        profile.add("DKM forward (clustering every layer)", seconds_since(t));
        t = Clock::now();
        loss = finetune_loss(model, student_hidden(model, x), x, tch);
        profile.add("model forward + loss", seconds_since(t));
      }
      t = Clock::now();
      const double dkm_bwd0 = profile.dkm_backward_seconds();
      opt->zero_grad();
      loss.backward();
      const double dkm_bwd = profile.dkm_backward_seconds() - dkm_bwd0;
      profile.add("model backward", seconds_since(t) - dkm_bwd);
      profile.add("DKM backward (table/streaming nodes)", dkm_bwd);
      if (off) offload_stats = off->stats();
      last_loss = loss.item<double>();
    }
    auto t = Clock::now();
    opt->step();
    profile.add("optimizer", seconds_since(t));
    t = Clock::now();
    palettizer->step();
    profile.add("Palettizer bookkeeping", seconds_since(t));
    profile.count_step();
    // The first step also initialises every layer's LUTs (k-means): reported apart, not averaged.
    if (s == first_step && steps - first_step > 1) profile.close_warmup(seconds_since(t_step));
    const auto report = meter.report();
    step_peak_cpu = std::max(step_peak_cpu, report.cpu.peak);
    step_peak_cuda = std::max(step_peak_cuda, report.cuda.peak);
    step_seconds = seconds_since(t_step);
    finetune_tok_s = static_cast<double>((s + 1 - first_step) * batch * seq_len) / seconds_since(t_ft);
    bar->tick("loss " + fixed(last_loss, 3) + ", " + fixed(finetune_tok_s, 0) + " tok/s");
    if (eval_every > 0 && (s + 1) % eval_every == 0 && s + 1 < steps) curve_point(s + 1, evaluate_compressed());
    if (save_every > 0 && (s + 1) % save_every == 0) save_state(s + 1);
    if (stop_after > 0 && s + 1 - first_step == stop_after && s + 1 < steps) {
      bar->finish();
      save_state(s + 1);
      std::cout << "stopped after step " << s + 1 << " (--stop-after); the run state is in " << state_dir
                << ": continue with --resume\n";
      return 0;
    }
  }
  if (bar) bar->finish();
  // Free the optimizer state, the gradients and the teacher before finalizing and exporting.
  opt.reset();
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  teacher = nullptr;
  std::string compressed;
  bool same = true;
  int64_t file_bytes = 0;
  std::string layer_table;
  if (palettizer) {
    palettizer->finalize();
    const auto report = palettizer->report();
    layer_table = report.to_string();
    std::map<std::string, int64_t> lut_count;
    for (const auto& l : report.layers) lut_count[l.name] = l.lut_size >> l.bits;  // cluster_dim 1
    const auto dkm_bits = bits_of([&](const Layer& l) { return lut_bits(l, l.options.bits(), lut_count.at(l.name)); });
    Row r{std::to_string(bits) + "-bit DKM (" +
              (group_size > 0 ? std::to_string(group_size) + " rows per LUT" : std::string("one LUT per tensor")) +
              (init == "gptq" ? ", GPTQ init" : "") + ", " + std::to_string(steps) + " steps)",
          bits,
          dkm_bits.first,
          dkm_bits.second,
          evaluate(model),
          std::to_string(steps) + " steps, " + std::to_string(steps * batch * seq_len) + " tokens seen"};
    if (eval_every > 0) curve_point(steps, r.evals);
    add_row(std::move(r));

    if (generate > 0) {
      after_ids = greedy_generate(model, prompt_ids, generate, tokenizer->eos_id());
      sample_after = tokenizer->decode(after_ids);
      std::cout << "compressed model:   " << prompt << sample_after << "\n";
    }

    // 4. Export and reload.
    compressed = out_dir + "/model.edkm.safetensors";
    remove_stale_outputs();
    palettizer->save_compressed(compressed);
    edkm::write_text_file(out_dir + "/config.json", config.to_json());
    save_tokenizer_beside(*tokenizer, tokenizer_file, out_dir);
    edkm::LlamaForCausalLM reloaded(config);
    reloaded->to(dtype);
    edkm::load_compressed(*reloaded, compressed);
    reloaded->to(device);
    {
      at::NoGradGuard ng;
      model->eval();
      reloaded->eval();
      const at::Tensor x =
          eval_sets[0].ids.narrow(0, 0, std::min(eval_seq_len, eval_sets[0].ids.numel())).unsqueeze(0).to(device);
      same = at::equal(model(x).to(at::kFloat), reloaded(x).to(at::kFloat));
    }
    if (!save_hf_compressed.empty()) {
      save_hf_with_logits(model, save_hf_compressed, eval_sets[0].ids, seq_len, *tokenizer);
      std::cout << "wrote the compressed model (decompressed weights) to " << save_hf_compressed
                << " (Hugging Face layout)\n";
    }
    struct stat st {};
    ::stat(compressed.c_str(), &st);
    file_bytes = st.st_size;
    if (generate > 0) {  // 5. The file as a user runs it: packed, on the CPU
      const auto rt = edkm::LlamaRuntime::load(compressed, out_dir + "/config.json");
      const auto t0 = Clock::now();
      const auto ids =
          rt.generate(prompt_ids, edkm::GenerationOptions().max_new_tokens(generate).eos_id(tokenizer->eos_id()));
      const double s = seconds_since(t0);
      packed_run.ran = true;
      packed_run.same_tokens = ids == after_ids;
      packed_run.tokens_per_s = s > 0 ? static_cast<double>(ids.size()) / s : 0;
      packed_run.weight_mib = static_cast<double>(rt.weight_bytes()) / (1 << 20);
      packed_run.packed_layers = rt.packed_layers();
      sample_packed = tokenizer->decode(ids);
      std::cout << "packed runtime:     " << prompt << sample_packed << "\n  (" << fixed(packed_run.tokens_per_s, 1)
                << " tok/s incl. the prompt, " << fixed(packed_run.weight_mib, 1) << " MiB of resident weights, "
                << packed_run.packed_layers << " projections packed; greedy tokens "
                << (packed_run.same_tokens ? "equal to" : "DIFFER from") << " the compressed model's)\n";
    }
  }
  const auto mem = whole_run.report();
  const double total_s = seconds_since(t_start);
  if (edkm::cpu_caching_allocator_enabled())
    std::cout << "CPU caching allocator (--host-cache " << host_cache
              << "): " << edkm::cpu_caching_allocator_stats().to_string() << "\n";

  // 5. Report.
  std::ostringstream cmd;  // pasteable back into a shell
  for (int i = 0; i < argc; ++i) cmd << (i ? " " : "") << shell_quote(argv[i]);
  Report rep;
  rep.command = cmd.str();
  rep.source = source;
  rep.corpus = corpus;
  rep.tokenizer = tokenizer->name();
  rep.init = init;
  rep.engine = engine;
  rep.dtype = dtype_name;
  rep.layers = config.num_hidden_layers();
  rep.optimizer = optimizer;
  rep.loss_kind = loss_kind;
  rep.autocast = autocast_name;
  rep.teacher_dtype = !use_teacher ? "" : teacher_dtype_name == "bf16" ? "bf16" : dtype_name;
  rep.out_dir = out_dir;
  rep.parameters = n_params;
  rep.train_tokens = train_ids.numel();
  rep.train_documents = static_cast<int64_t>(train_docs.size());
  rep.eval_documents = static_cast<int64_t>(eval_docs.size());
  rep.eval_seq_len = eval_seq_len;
  rep.seq_len = seq_len;
  rep.batch = batch;
  rep.steps = steps;
  rep.pretrain_steps = pretrain_steps;
  rep.bits = bits;
  rep.group_size = group_size;
  rep.embedding_bits = embedding_bits;
  rep.tau = tau;
  rep.lr = lr;
  rep.embedding_dkm = embedding_dkm;
  rep.offload = offload;
  rep.checkpoint_activations = checkpoint_activations;
  rep.distill = use_teacher;
  rep.cuda = device.is_cuda();
  rep.optimizer_state_bytes_per_param = state_bytes_per_param;
  rep.eval_sets = eval_sets;
  rep.rows = rows;
  rep.clustered_layers = static_cast<int64_t>(selected.size());
  rep.clustered_numel = clustered_numel;
  rep.compressed = palettizer.has_value();
  rep.compressed_path = compressed;
  rep.file_bytes = file_bytes;
  rep.reloaded_matches = same;
  rep.packed_run = packed_run;
  rep.peak_host_bytes = mem.cpu.peak;
  rep.peak_host_bytes_step = step_peak_cpu;
  rep.peak_device_bytes_step = step_peak_cuda;
  rep.peak_rss_bytes = edkm::examples::peak_resident_bytes();
  if (edkm::cpu_caching_allocator_enabled()) {
    const auto hc = edkm::cpu_caching_allocator_stats();
    rep.host_cache = host_cache;
    rep.host_cache_peak_bytes = hc.peak_reserved_bytes;
    rep.host_cache_peak_in_use_bytes = hc.peak_in_use_bytes;
    rep.host_cache_hits = hc.hits;
    rep.host_cache_misses = hc.misses;
  }
  rep.pretrain_tokens_per_s = pretrain_tok_s;
  rep.finetune_tokens_per_s = finetune_tok_s;
  rep.last_step_seconds = step_seconds;
  rep.total_seconds = total_s;
  rep.layer_table = layer_table;
  rep.gptq_facts = gptq_facts;
  if (offload_stats) rep.offload_facts = offload_stats->to_string();
  if (steps > first_step) {
    profile.set_plain_step(pretrain_step_s);
    rep.profile_markdown = profile.to_markdown();
    rep.profile = json::parse(profile.to_json());
  }
  rep.curve = curve;
  rep.generate = generate;
  rep.prompt = prompt;
  rep.sample_before = sample_before;
  rep.sample_after = sample_after;
  rep.sample_packed = sample_packed;
  write_report(rep);
  if (!rep.compressed_path.empty()) {
    // The next thing to try: the checkpoint run packed, as a chat turn where the tokenizer has the
    // ChatML markers (SmolLM2-Instruct's format).
    const std::string self = argv[0], bin = self.substr(0, self.rfind('/') + 1);
    const bool chatml = tokenizer->encode("<|im_start|>").size() == 1 && tokenizer->encode("<|im_end|>").size() == 1;
    std::cout << "run it packed: " << shell_quote(bin + "edkm_llama_generate") << " --compressed "
              << shell_quote(rep.compressed_path)
              << (chatml ? " --chat --prompt 'What is gravity?' --repetition-penalty 1.2"
                         : " --prompt " + shell_quote(prompt))
              << "\n";
  }
  return same ? 0 : 1;
} catch (const c10::Error& e) {
  std::cerr << "edkm_llama_compress: " << e.what_without_backtrace() << "\n";
  return 1;
} catch (const std::exception& e) {
  std::cerr << "edkm_llama_compress: " << e.what() << "\n";
  return 1;
}
