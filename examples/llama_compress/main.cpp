// The LLaMA compression example: every Linear layer of the decoder clustered to 3 bits by DKM
// while fine-tuning on a text corpus (embedding and head at 8 bits), exported in edkm's compressed
// format, with held-out perplexity before and after and the baselines at the same bits.
//
//   edkm_llama_compress                         # the demo: tiny preset trained on the `fortunes`
//                                               # corpus, then fp32 / RTN / k-means / DKM compared
//   edkm_llama_compress --model /models/llama-2-7b-hf --corpus train.jsonl --steps 200 --dtype bf16
//   edkm_llama_compress --model SmolLM2-135M-Instruct.Q4_1.gguf --tokenizer bytes --steps 20
//   edkm_llama_compress --preset llama-7b --device cuda --steps 1 --optimizer adamw-bf16 \
//       --checkpoint-activations --dtype bf16          # one step of the whole 7B stack, 3-bit
//   edkm_llama_compress --help
#include <ATen/ATen.h>
#include <dirent.h>
#include <edkm/edkm.h>
#include <sys/stat.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

std::string mib(int64_t bytes) { return fixed(static_cast<double>(bytes) / (1 << 20), 1) + " MiB"; }

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ---- corpus ---------------------------------------------------------------------------------------

// Documents of a corpus: a JSONL file ({"text": ...} per line), a text file (documents separated by
// lines holding only "%", as fortune files, else by blank lines), or a directory of fortune files.
std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  const bool fortune = text.find("\n%\n") != std::string::npos;
  const std::string sep = fortune ? "\n%\n" : "\n\n";
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(sep, at);
    if (end == std::string::npos) end = text.size();
    std::string doc = text.substr(at, end - at);
    if (fortune && doc.size() >= 2 && doc.compare(0, 2, "%\n") == 0) doc.erase(0, 2);
    if (doc.find_first_not_of(" \t\n%") != std::string::npos) docs.push_back(doc);
    at = end + sep.size();
  }
  return docs;
}

std::vector<std::string> read_corpus(const std::string& path) {
  std::vector<std::string> docs;
  if (is_dir(path)) {  // fortune files: the plain ones (not the .dat indices, not the .u8 links)
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n[0] != '.' && n.find('.') == std::string::npos) names.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());  // a fixed order: reproducible splits
    for (const auto& n : names) {
      auto part = split_documents(edkm::read_text_file(path + "/" + n));
      docs.insert(docs.end(), part.begin(), part.end());
    }
  } else if (path.size() > 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0) {
    std::istringstream in(edkm::read_text_file(path));
    std::string line;
    for (int64_t no = 1; std::getline(in, line); ++no) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        TORCH_CHECK(false, path, ":", no, ": not JSON: ", e.what());
      }
      TORCH_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), path, ":", no,
                  ": expected an object with a string \"text\"");
      docs.push_back(j["text"].get<std::string>());
    }
  } else {
    docs = split_documents(edkm::read_text_file(path));
  }
  TORCH_CHECK(docs.size() >= 10, "corpus ", path, " has ", docs.size(), " documents; need at least 10");
  return docs;
}

// ---- baselines and evaluation --------------------------------------------------------------------

// Uniform asymmetric round-to-nearest per output row (min-max, 2^bits levels).
at::Tensor round_to_nearest(const at::Tensor& w, int64_t bits) {
  const at::Tensor w32 = w.to(at::kFloat);
  const at::Tensor lo = std::get<0>(w32.min(1, true)), hi = std::get<0>(w32.max(1, true));
  const at::Tensor step = ((hi - lo) / static_cast<double>((1 << bits) - 1)).clamp_min(1e-12);
  return (((w32 - lo) / step).round() * step + lo).to(w.scalar_type());
}

struct Eval {
  double perplexity = 0, tokens_per_s = 0;
  int64_t tokens = 0;
};

// Perplexity over non-overlapping windows of `seq` tokens (each predicts its tokens 1..seq-1).
Eval perplexity(edkm::LlamaForCausalLM& model, const at::Tensor& stream, int64_t seq, int64_t batch) {
  model->eval();
  at::NoGradGuard ng;
  const int64_t windows = stream.numel() / seq;
  const at::Tensor all = stream.narrow(0, 0, windows * seq).view({windows, seq});
  double nll = 0;
  int64_t count = 0;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < windows; i += batch) {
    const at::Tensor x = all.narrow(0, i, std::min(batch, windows - i)).to(model->model->norm->weight.device());
    const at::Tensor logits = model(x);
    nll += edkm::functional::causal_lm_loss(logits, x).item<double>() * x.size(0) * (seq - 1);
    count += x.size(0) * (seq - 1);
  }
  model->train();
  return {std::exp(nll / count), static_cast<double>(count) / seconds_since(t0), count};
}

// ---- a memory-lean optimizer -----------------------------------------------------------------------

// AdamW whose moments are kept in bf16: 4 bytes of state per parameter instead of 8 (fp32 moments).
// The update is computed in fp32.
class LeanAdamW {
 public:
  LeanAdamW(std::vector<at::Tensor> params, double lr, double wd) : params_(std::move(params)), lr_(lr), wd_(wd) {}
  void zero_grad() {
    for (auto& p : params_) p.mutable_grad() = at::Tensor();
  }
  void set_lr(double lr) { lr_ = lr; }
  void step() {
    at::NoGradGuard ng;
    ++t_;
    if (m_.empty()) {
      for (auto& p : params_) {
        m_.push_back(at::zeros_like(p, p.options().dtype(at::kBFloat16)));
        v_.push_back(at::zeros_like(p, p.options().dtype(at::kBFloat16)));
      }
    }
    const double c1 = 1 - std::pow(0.9, t_), c2 = 1 - std::pow(0.999, t_);
    // In chunks of 2^22 elements: the fp32 temporaries stay small next to a 131M-entry embedding.
    constexpr int64_t kChunk = int64_t{1} << 22;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i];
      if (!p.grad().defined()) continue;
      TORCH_CHECK(p.is_contiguous() && p.grad().is_contiguous(), "adamw-bf16 expects contiguous parameters");
      const at::Tensor pf = p.view({-1}), gf = p.grad().view({-1}), mf = m_[i].view({-1}), vf = v_[i].view({-1});
      for (int64_t off = 0; off < pf.numel(); off += kChunk) {
        const int64_t n = std::min(kChunk, pf.numel() - off);
        const at::Tensor g = gf.narrow(0, off, n).to(at::kFloat);
        const at::Tensor m = mf.narrow(0, off, n).to(at::kFloat).mul_(0.9).add_(g, 0.1);
        const at::Tensor v = vf.narrow(0, off, n).to(at::kFloat).mul_(0.999).addcmul_(g, g, 0.001);
        mf.narrow(0, off, n).copy_(m);
        vf.narrow(0, off, n).copy_(v);
        at::Tensor w = pf.narrow(0, off, n);
        at::Tensor update = (m / c1).div_((v / c2).sqrt_().add_(1e-8));
        if (wd_ > 0) update.add_(w.to(at::kFloat), wd_);
        w.sub_((update * lr_).to(w.scalar_type()));
      }
    }
  }
  static constexpr int kStateBytesPerParam = 4;

 private:
  std::vector<at::Tensor> params_, m_, v_;
  double lr_, wd_;
  int64_t t_ = 0;
};

// One interface over the three optimizers of --optimizer.
struct Optimizer {
  std::unique_ptr<torch::optim::Optimizer> torch_opt;
  std::unique_ptr<LeanAdamW> lean;
  int state_bytes_per_param = 0;
  Optimizer(const std::string& kind, const std::vector<at::Tensor>& params, double lr, double wd) {
    if (kind == "adamw") {
      torch_opt = std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(lr).weight_decay(wd));
      state_bytes_per_param = 8;
    } else if (kind == "sgd") {
      torch_opt = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(lr));
    } else {
      lean = std::make_unique<LeanAdamW>(params, lr, wd);
      state_bytes_per_param = LeanAdamW::kStateBytesPerParam;
    }
  }
  void zero_grad() { torch_opt ? torch_opt->zero_grad() : lean->zero_grad(); }
  void step() { torch_opt ? (void)torch_opt->step() : lean->step(); }
  void set_lr(double lr) {
    if (lean) return lean->set_lr(lr);
    for (auto& g : torch_opt->param_groups()) g.options().set_lr(lr);
  }
};

// Linear warm-up over the first 10% of the steps, then cosine decay to 10% of the peak.
double schedule(double lr, int64_t step, int64_t steps) {
  const int64_t warm = std::max<int64_t>(1, steps / 10);
  if (step < warm) return lr * (step + 1) / warm;
  const double t = static_cast<double>(step - warm) / std::max<int64_t>(1, steps - warm);
  return lr * (0.1 + 0.45 * (1 + std::cos(M_PI * t)));
}

struct Layer {
  std::string name;
  at::Tensor weight;  // the registered parameter
  edkm::DKMOptions options;
};

// A Linear of the decoder stack (not the embedding or the head).
bool is_linear(const Layer& l) { return l.name.rfind("model.layers.", 0) == 0; }

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm LLaMA compression: DKM 3-bit clustering of every decoder Linear while fine-tuning"};
  std::string model_dir, preset = "tiny", corpus = "/usr/share/games/fortunes", tokenizer_spec, engine = "auto";
  std::string optimizer = "adamw", out_dir = "llama_compress_out", dtype_name = "fp32", device_name = "cpu";
  std::string save_hf;
  int64_t layers = 0, bits = 3, embedding_bits = 8, group_size = 0, steps = 100, pretrain_steps = -1, seq_len = 128;
  int64_t batch = 16, eval_tokens = 32768, milestone = 0, threads = -1;
  double lr = 1e-3, pretrain_lr = 3e-3, weight_decay = 0.0, distill_temperature = 2.0, distill_alpha = 0.5;
  bool offload = false, checkpoint_activations = false, distill = false, skip_baselines = false, embedding_dkm = false;
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
  app.add_option("--tokenizer", tokenizer_spec,
                 "bytes | train:N (SentencePiece BPE of N pieces trained on the training split) | tokenizer.model "
                 "path (default: bytes for a preset, the checkpoint's tokenizer.model for --model)");
  app.add_option("--bits", bits, "bits of every decoder Linear")->check(CLI::Range(1, 8))->capture_default_str();
  app.add_option("--embedding-bits", embedding_bits, "bits of the embedding and the head (0: left dense)")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  app.add_option("--group-size", group_size, "output rows per LUT (0: one LUT per tensor)")->capture_default_str();
  app.add_option("--engine", engine, "DKM engine: dense | table | streaming | auto")
      ->check(CLI::IsMember({"dense", "table", "streaming", "auto"}))
      ->capture_default_str();
  app.add_flag("--offload", offload, "offload saved tensors to host memory (host-to-host on CPU)");
  app.add_option("--offload-min-bytes", offload_min_bytes, "smallest saved tensor offloaded")->capture_default_str();
  app.add_flag("--embedding-dkm", embedding_dkm,
               "train the embedding and head with DKM too (default: they are fine-tuned unclustered and "
               "palettized by k-means at the end; DKM with 256 centroids costs far more per step)");
  app.add_flag("--checkpoint-activations", checkpoint_activations, "recompute each decoder layer in backward");
  app.add_flag("--distill", distill, "distil from the uncompressed model (KL on logits + cross entropy)");
  app.add_option("--distill-temperature", distill_temperature)->capture_default_str();
  app.add_option("--distill-alpha", distill_alpha, "weight of the KL term")->capture_default_str();
  app.add_option("--steps", steps, "DKM fine-tuning steps")->capture_default_str();
  app.add_option("--pretrain-steps", pretrain_steps,
                 "fp32 training steps before compression (default: 300 for the tiny preset, else 0)");
  app.add_option("--milestone", milestone, "step at which clustering starts")->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per sequence")->check(CLI::Range(2, 1 << 20))->capture_default_str();
  app.add_option("--batch", batch, "sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", lr, "peak fine-tuning learning rate (warm-up, cosine)")->capture_default_str();
  app.add_option("--pretrain-lr", pretrain_lr)->capture_default_str();
  app.add_option("--weight-decay", weight_decay)->capture_default_str();
  app.add_option("--optimizer", optimizer,
                 "adamw (8 B state/param) | adamw-bf16 (bf16 moments, 4 B/param) | sgd (no state)")
      ->check(CLI::IsMember({"adamw", "adamw-bf16", "sgd"}))
      ->capture_default_str();
  app.add_option("--eval-tokens", eval_tokens, "held-out tokens evaluated (0: all)")->capture_default_str();
  app.add_flag("--skip-baselines", skip_baselines,
               "do not run the baselines (RTN, post-training k-means, the fp32 control run)");
  app.add_option("--dtype", dtype_name, "parameter dtype: fp32 | bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--device", device_name, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--out", out_dir, "output directory (compressed model, results.json, results.md)")
      ->capture_default_str();
  app.add_option("--save-hf", save_hf,
                 "also write the uncompressed model as a Hugging Face checkpoint here (with tokenizer.json when the "
                 "tokenizer is a byte-level BPE, e.g. a GGUF's own)");
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--threads", threads,
                 "CPU threads (default: 1 for the tiny preset, whose small matrices gain little from more and lose "
                 "much on a loaded machine; else LibTorch's default)");
  CLI11_PARSE(app, argc, argv);

  if (threads < 0 && model_dir.empty() && preset == "tiny") threads = 1;
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  edkm::MemoryMeter whole_run;
  const auto t_start = Clock::now();
  at::manual_seed(seed);
  const at::ScalarType dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  const c10::Device device(device_name == "cuda" ? c10::kCUDA : c10::kCPU);
  edkm::make_directories(out_dir);

  // Corpus: every 10th document held out.
  const auto docs = read_corpus(corpus);
  std::string train_text, eval_text;
  std::vector<const std::string*> train_docs, eval_docs;
  for (size_t i = 0; i < docs.size(); ++i) (i % 10 == 9 ? eval_docs : train_docs).push_back(&docs[i]);
  for (auto* d : train_docs) train_text += *d, train_text += "\n";

  // Tokenizer.
  // A GGUF file carries its tokenizer (load_tokenizer reads tokenizer.ggml.*), as a directory does.
  if (tokenizer_spec.empty()) tokenizer_spec = model_dir.empty() ? "bytes" : model_dir;
  std::unique_ptr<edkm::Tokenizer> tokenizer;
  if (tokenizer_spec.compare(0, 6, "train:") == 0) {
    const std::string prefix = out_dir + "/tokenizer";
    edkm::write_text_file(prefix + ".train.txt", train_text);
    edkm::train_sentencepiece(prefix + ".train.txt", prefix, std::stoll(tokenizer_spec.substr(6)));
    tokenizer = edkm::load_tokenizer(prefix + ".model");
  } else {
    tokenizer = edkm::load_tokenizer(tokenizer_spec);
  }
  auto encode_all = [&](const std::vector<const std::string*>& ds) {
    std::vector<int64_t> ids;
    for (auto* d : ds) {
      auto t = tokenizer->encode(*d);
      ids.insert(ids.end(), t.begin(), t.end());
      if (tokenizer->eos_id() >= 0) ids.push_back(tokenizer->eos_id());
    }
    return at::tensor(ids, at::kLong);
  };
  const at::Tensor train_ids = encode_all(train_docs);
  at::Tensor eval_ids = encode_all(eval_docs);
  if (eval_tokens > 0 && eval_ids.numel() > eval_tokens) eval_ids = eval_ids.narrow(0, 0, eval_tokens);
  TORCH_CHECK(train_ids.numel() > seq_len + 1 && eval_ids.numel() >= seq_len, "corpus too small for --seq-len ",
              seq_len);

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
    config.max_position_embeddings(std::max(config.max_position_embeddings(), seq_len));
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

  std::cout << "edkm " << EDKM_VERSION_STRING << " LLaMA compression\n"
            << "  model      " << source << ": " << config.num_hidden_layers() << " layers, hidden "
            << config.hidden_size() << ", MLP " << config.intermediate_size() << ", heads "
            << config.num_attention_heads() << "/" << config.num_key_value_heads() << " kv, vocab "
            << config.vocab_size() << ", " << fixed(n_params / 1e6, 2) << "M parameters, " << dtype_name << ", "
            << device_name << "\n"
            << "  corpus     " << corpus << ": " << docs.size() << " documents, " << train_docs.size() << " train ("
            << train_ids.numel() << " tokens), " << eval_docs.size() << " held out (" << eval_ids.numel()
            << " tokens evaluated)\n"
            << "  tokenizer  " << tokenizer->name() << "\n"
            << "  memory     engine " << engine << (offload ? ", offload" : "")
            << (checkpoint_activations ? ", activation checkpointing" : "") << ", optimizer " << optimizer << "\n";

  auto sample = [&](int64_t step, uint64_t stream) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + stream * 7919 + static_cast<uint64_t>(step));
    const at::Tensor starts = at::randint(train_ids.numel() - seq_len, {batch}, g, at::kLong);
    const at::Tensor offs = starts.unsqueeze(1) + at::arange(seq_len, at::kLong).unsqueeze(0);
    return train_ids.index({offs}).to(device);
  };

  // Plain training of `m` (no clustering): the pre-training, and the control run of the fine-tuning.
  auto train_plain = [&](edkm::LlamaForCausalLM& m, int64_t n, double peak_lr, const std::string& kind, uint64_t stream,
                         const std::string& label,
                         const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& loss_of) {
    std::vector<at::Tensor> ps;
    for (auto& p : m->parameters()) ps.push_back(p);
    Optimizer opt(kind, ps, peak_lr, weight_decay);
    edkm::ProgressBar bar(n, label);
    const auto t0 = Clock::now();
    double tok_s = 0;
    for (int64_t s = 0; s < n; ++s) {
      opt.set_lr(schedule(peak_lr, s, n));
      const at::Tensor x = sample(s, stream);
      const at::Tensor loss = loss_of(m(x), x);
      opt.zero_grad();
      loss.backward();
      opt.step();
      tok_s = static_cast<double>((s + 1) * batch * seq_len) / seconds_since(t0);
      bar.tick("loss " + fixed(loss.item<double>(), 3) + ", " + fixed(tok_s, 0) + " tok/s");
    }
    bar.finish();
    return tok_s;
  };
  auto lm_loss = [](const at::Tensor& logits, const at::Tensor& x) {
    return edkm::functional::causal_lm_loss(logits, x);
  };

  // 1. fp32 pre-training (the tiny demo has no checkpoint).
  double pretrain_tok_s = 0;
  if (pretrain_steps > 0)
    pretrain_tok_s = train_plain(model, pretrain_steps, pretrain_lr, "adamw", 1, "pretrain " + dtype_name, lm_loss);
  if (!save_hf.empty()) {
    edkm::save_hf_llama(model, save_hf);  // with its reference logits, for other tools to compare
    const at::Tensor x = eval_ids.narrow(0, 0, seq_len).unsqueeze(0);
    model->eval();
    at::NoGradGuard ng;
    edkm::SafetensorsFile ref;
    ref.tensors["tokens"] = x;
    ref.tensors["logits"] = model(x.to(device)).to(at::kFloat).cpu();
    edkm::save_safetensors(save_hf + "/edkm_logits.safetensors", ref);
    model->train();
    // A byte-level BPE (a GGUF's own, or a tokenizer.json) goes with it, so transformers'
    // AutoTokenizer reads the same ids.
    const auto* bpe = dynamic_cast<const edkm::BpeTokenizer*>(tokenizer.get());
    if (bpe) edkm::save_hf_tokenizer(*bpe, save_hf);
    std::cout << "wrote the uncompressed model" << (bpe ? " and its tokenizer" : "") << " to " << save_hf
              << " (Hugging Face layout)\n";
  }

  // Which layers, at which bits: every Linear of the decoder at --bits, embedding and head at
  // --embedding-bits (or left dense).
  const auto dkm_engine = edkm::engine_from_string(engine);
  auto dkm_options = [&](int64_t b) {
    auto o = edkm::DKMOptions(b).engine(dkm_engine).milestone(milestone).weight_threshold(0);
    if (group_size > 0) o.granularity(edkm::Granularity::kPerGroupedChannel).group_size(group_size);
    return o;
  };
  std::optional<edkm::DKMOptions> head_options;
  if (embedding_bits > 0) head_options = dkm_options(embedding_bits).milestone(embedding_dkm ? milestone : steps + 1);
  const auto pal_options = edkm::PalettizerOptions(dkm_options(bits))
                               .module_type("Embedding", head_options)
                               .module_name("lm_head", head_options);
  auto select_layers = [&](edkm::LlamaForCausalLM& m) {
    std::vector<Layer> out;
    for (const auto& item : m->named_modules("", false)) {
      const std::string type = item.value()->as<torch::nn::LinearImpl>()      ? "Linear"
                               : item.value()->as<torch::nn::EmbeddingImpl>() ? "Embedding"
                                                                              : "";
      if (type.empty()) continue;
      if (auto o = pal_options.resolve(item.key(), type)) {
        out.push_back({item.key(), item.value()->named_parameters(false)["weight"], *o});
      }
    }
    return out;
  };
  const std::vector<Layer> selected = select_layers(model);

  // 2. Held-out perplexity of the uncompressed model and of the post-training baselines.
  struct Row {
    std::string method;
    double bits_per_weight;  // over every clustered layer
    Eval eval;
    double linear_bits = 0;  // over the decoder's Linear layers
  };
  std::vector<Row> rows;
  // Bits per weight including LUTs (k-means, DKM) or per-row scale and offset (RTN, 2 x 16 bits):
  // over every clustered layer, and over the decoder's Linear layers alone.
  int64_t clustered_numel = 0, linear_numel = 0;
  for (const auto& l : selected) {
    clustered_numel += l.weight.numel();
    if (is_linear(l)) linear_numel += l.weight.numel();
  }
  auto bits_of = [&](auto&& layer_bits) {
    double all = 0, lin = 0;
    for (const auto& l : selected) {
      const double b = layer_bits(l);
      all += b;
      if (is_linear(l)) lin += b;
    }
    return std::make_pair(all / static_cast<double>(clustered_numel), lin / static_cast<double>(linear_numel));
  };
  auto rtn_bits = [](const Layer& l) {
    return static_cast<double>(l.weight.numel() * l.options.bits() + l.weight.size(0) * 32);
  };
  const double dense_bits = dtype == at::kFloat ? 32 : 16;
  rows.push_back({dtype_name + " (uncompressed)", dense_bits, perplexity(model, eval_ids, seq_len, batch), dense_bits});
  std::cout << "perplexity " << rows.back().method << ": " << fixed(rows.back().eval.perplexity, 3) << "\n";
  // The post-training baselines of a model: RTN and k-means at the same bits, each evaluated with
  // the weights replaced, then the weights restored.
  auto post_training_baselines = [&](edkm::LlamaForCausalLM& m, const std::string& prefix) {
    const std::vector<Layer> layers = select_layers(m);
    std::vector<at::Tensor> originals;
    for (const auto& l : layers) originals.push_back(l.weight.detach().clone());
    auto evaluate_replaced = [&](const std::string& method, std::pair<double, double> bpw, auto&& replace) {
      {
        at::NoGradGuard ng;
        for (const auto& l : layers) l.weight.copy_(replace(l));
      }
      rows.push_back({prefix + method, bpw.first, perplexity(m, eval_ids, seq_len, batch), bpw.second});
      std::cout << "perplexity " << rows.back().method << ": " << fixed(rows.back().eval.perplexity, 3) << "\n";
      at::NoGradGuard ng;
      for (size_t i = 0; i < layers.size(); ++i) layers[i].weight.copy_(originals[i]);
    };
    // RTN keeps a scale and an offset per row (2 x 16 bits).
    evaluate_replaced(std::to_string(bits) + "-bit RTN (per-row min-max)", bits_of(rtn_bits),
                      [&](const Layer& l) { return round_to_nearest(l.weight.detach(), l.options.bits()); });
    std::map<std::string, double> kmeans_bits;
    for (const auto& l : layers) {  // the LUT as the file stores it
      kmeans_bits[l.name] = static_cast<double>(l.weight.numel() * l.options.bits() +
                                                (int64_t{1} << l.options.bits()) * l.weight.element_size() * 8 *
                                                    (group_size > 0 ? l.weight.size(0) / group_size : 1));
    }
    evaluate_replaced(std::to_string(bits) + "-bit k-means (post-training)",
                      bits_of([&](const Layer& l) { return kmeans_bits.at(l.name); }), [&](const Layer& l) {
                        const at::Tensor w = l.weight.detach();
                        return edkm::Palette::from_centroids(w, edkm::functional::init_centroids(w, l.options),
                                                             l.options)
                            .decompress();
                      });
  };
  if (!skip_baselines) post_training_baselines(model, "");

  // 3. DKM fine-tuning with every selected layer clustered, and its control: the uncompressed
  // model trained the same steps on the same batches (the fine-tuning also continues training).
  edkm::LlamaForCausalLM teacher{nullptr};
  if (distill) {
    teacher = std::dynamic_pointer_cast<edkm::LlamaForCausalLMImpl>(model->clone());
    teacher->eval();
  }
  // The fine-tuning loss: next-token cross entropy, mixed with KL to the teacher with --distill.
  auto finetune_loss = [&](const at::Tensor& logits, const at::Tensor& x) {
    at::Tensor loss = edkm::functional::causal_lm_loss(logits, x);
    if (!distill) return loss;
    at::Tensor t_logits;
    {
      at::NoGradGuard ng;
      t_logits = teacher(x);
    }
    return distill_alpha * edkm::functional::distillation_kl_loss(logits, t_logits, distill_temperature) +
           (1 - distill_alpha) * loss;
  };
  if (!skip_baselines && steps > 0) {
    auto control = std::dynamic_pointer_cast<edkm::LlamaForCausalLMImpl>(model->clone());
    edkm::LlamaForCausalLM control_model(control);
    train_plain(control_model, steps, lr, optimizer, 2, "control " + dtype_name, finetune_loss);
    rows.push_back({dtype_name + ", trained the same " + std::to_string(steps) + " steps (control)", dense_bits,
                    perplexity(control_model, eval_ids, seq_len, batch), dense_bits});
    std::cout << "perplexity " << rows.back().method << ": " << fixed(rows.back().eval.perplexity, 3) << "\n";
    post_training_baselines(control_model, "control, then ");
  }
  edkm::Palettizer palettizer(model, pal_options);
  std::optional<Optimizer> opt(std::in_place, optimizer, model->parameters(), lr, weight_decay);
  const int state_bytes_per_param = opt->state_bytes_per_param;
  edkm::ProgressBar bar(steps, "DKM fine-tune");
  int64_t step_peak_cpu = 0, step_peak_cuda = 0;
  double finetune_tok_s = 0, step_seconds = 0, last_loss = 0;
  std::optional<edkm::OffloadStats> offload_stats;
  const auto t_ft = Clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    opt->set_lr(schedule(lr, s, steps));
    const at::Tensor x = sample(s, 2);
    const auto t_step = Clock::now();
    edkm::MemoryMeter meter;
    {
      std::optional<edkm::OffloadGuard> off;
      if (offload) off.emplace(edkm::OffloadOptions().host_to_host(device.is_cpu()).min_bytes(offload_min_bytes));
      at::Tensor loss;
      {
        auto clustered = palettizer.clustered();
        loss = finetune_loss(model(x), x);
      }
      opt->zero_grad();
      loss.backward();
      if (off) offload_stats = off->stats();
      last_loss = loss.item<double>();
    }
    opt->step();
    palettizer.step();
    const auto report = meter.report();
    step_peak_cpu = std::max(step_peak_cpu, report.cpu.peak);
    step_peak_cuda = std::max(step_peak_cuda, report.cuda.peak);
    step_seconds = seconds_since(t_step);
    finetune_tok_s = static_cast<double>((s + 1) * batch * seq_len) / seconds_since(t_ft);
    bar.tick("loss " + fixed(last_loss, 3) + ", " + fixed(finetune_tok_s, 0) + " tok/s");
  }
  bar.finish();
  // Free the optimizer state, the gradients and the teacher before finalizing and exporting.
  opt.reset();
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  teacher = nullptr;
  palettizer.finalize();
  const auto report = palettizer.report();
  std::map<std::string, double> packed_bits;
  for (const auto& l : report.layers) packed_bits[l.name] = 8.0 * static_cast<double>(l.packed_bytes);
  const auto dkm_bits = bits_of([&](const Layer& l) { return packed_bits.at(l.name); });
  rows.push_back({std::to_string(bits) + "-bit DKM (fine-tuned " + std::to_string(steps) + " steps)", dkm_bits.first,
                  perplexity(model, eval_ids, seq_len, batch), dkm_bits.second});
  std::cout << "perplexity " << rows.back().method << ": " << fixed(rows.back().eval.perplexity, 3) << "\n";

  // 4. Export and reload.
  const std::string compressed = out_dir + "/model.edkm.safetensors";
  palettizer.save_compressed(compressed);
  edkm::write_text_file(out_dir + "/config.json", config.to_json());
  edkm::LlamaForCausalLM reloaded(config);
  reloaded->to(dtype);
  edkm::load_compressed(*reloaded, compressed);
  reloaded->to(device);
  bool same = false;
  {
    at::NoGradGuard ng;
    model->eval();
    reloaded->eval();
    const at::Tensor x = eval_ids.narrow(0, 0, seq_len).unsqueeze(0).to(device);
    same = at::equal(model(x).to(at::kFloat), reloaded(x).to(at::kFloat));
  }
  struct stat st {};
  ::stat(compressed.c_str(), &st);
  const int64_t file_bytes = st.st_size;
  const auto mem = whole_run.report();
  const double total_s = seconds_since(t_start);

  // 5. Report.
  std::ostringstream md;
  md << "| method | bits / weight, decoder Linear layers | bits / weight, all clustered layers | held-out "
        "perplexity |\n|---|---|---|---|\n";
  for (const auto& r : rows) {
    md << "| " << r.method << " | " << fixed(r.linear_bits, 3) << " | " << fixed(r.bits_per_weight, 3) << " | "
       << fixed(r.eval.perplexity, 3) << " |\n";
  }
  std::ostringstream facts;
  facts << "- clustered: " << selected.size() << " layers, " << clustered_numel << " weights (Linear at " << bits
        << " bits, embedding/head at "
        << (embedding_bits ? std::to_string(embedding_bits) + " bits" +
                                 (embedding_dkm ? " by DKM" : " by k-means after fine-tuning")
                           : "dense")
        << "); bits per weight include the LUTs (k-means, DKM) or the per-row scale and offset (RTN, 2 x 16 bits)\n"
        << "- compressed file: " << file_bytes << " bytes for " << n_params
        << " parameters = " << fixed(8.0 * static_cast<double>(file_bytes) / static_cast<double>(n_params), 3)
        << " bits per parameter overall (norms stored plainly); reloaded model " << (same ? "matches" : "DIFFERS")
        << "\n"
        << "- peak host memory (LibTorch CPU allocations): whole run " << mib(mem.cpu.peak)
        << ", during DKM fine-tuning " << mib(step_peak_cpu)
        << (device.is_cuda() ? ", peak device memory of a step " + mib(step_peak_cuda) : "") << "\n"
        << "- throughput: pre-training " << fixed(pretrain_tok_s, 0) << " tok/s, DKM fine-tuning "
        << fixed(finetune_tok_s, 0) << " tok/s (last step " << fixed(step_seconds, 3) << " s), evaluation "
        << fixed(rows.back().eval.tokens_per_s, 0) << " tok/s\n"
        << "- optimizer " << optimizer << ": " << state_bytes_per_param << " bytes of state per parameter\n"
        << "- total time " << fixed(total_s, 1) << " s\n";
  if (offload_stats) facts << "- offload: " << offload_stats->to_string() << "\n";
  std::cout << "\n" << report.to_string() << "\n" << md.str() << "\n" << facts.str();

  std::ostringstream cmd;
  for (int i = 0; i < argc; ++i) cmd << (i ? " " : "") << argv[i];
  std::ostringstream full_md;
  full_md << "# LLaMA compression: " << source << "\n\nCommand: `" << cmd.str() << "`\n\nCorpus: " << corpus << " ("
          << train_docs.size() << " training documents, " << eval_docs.size() << " held out, " << eval_ids.numel()
          << " held-out tokens evaluated, tokenizer " << tokenizer->name() << ", windows of " << seq_len
          << " tokens).\n\n"
          << md.str() << "\n"
          << facts.str();
  edkm::write_text_file(out_dir + "/results.md", full_md.str());
  json j = {{"command", cmd.str()},
            {"model", source},
            {"parameters", n_params},
            {"corpus", corpus},
            {"tokenizer", tokenizer->name()},
            {"train_tokens", train_ids.numel()},
            {"eval_tokens", eval_ids.numel()},
            {"seq_len", seq_len},
            {"batch", batch},
            {"steps", steps},
            {"pretrain_steps", pretrain_steps},
            {"bits", bits},
            {"embedding_bits", embedding_bits},
            {"engine", engine},
            {"offload", offload},
            {"checkpoint_activations", checkpoint_activations},
            {"distill", distill},
            {"embedding_dkm", embedding_dkm},
            {"optimizer", optimizer},
            {"optimizer_state_bytes_per_param", state_bytes_per_param},
            {"compressed_file_bytes", file_bytes},
            {"reloaded_matches", same},
            {"peak_host_bytes", mem.cpu.peak},
            {"peak_host_bytes_step", step_peak_cpu},
            {"peak_device_bytes_step", step_peak_cuda},
            {"pretrain_tokens_per_s", pretrain_tok_s},
            {"finetune_tokens_per_s", finetune_tok_s},
            {"last_step_seconds", step_seconds},
            {"total_seconds", total_s}};
  for (const auto& r : rows) {
    j["results"].push_back({{"method", r.method},
                            {"bits_per_weight", r.bits_per_weight},
                            {"bits_per_weight_decoder_linear", r.linear_bits},
                            {"perplexity", r.eval.perplexity},
                            {"eval_tokens_per_s", r.eval.tokens_per_s}});
  }
  edkm::write_text_file(out_dir + "/results.json", j.dump(2) + "\n");
  std::cout << "wrote " << compressed << ", " << out_dir << "/results.md and results.json\n";
  return same ? 0 : 1;
} catch (const c10::Error& e) {
  std::cerr << "edkm_llama_compress: " << e.what_without_backtrace() << "\n";
  return 1;
} catch (const std::exception& e) {
  std::cerr << "edkm_llama_compress: " << e.what() << "\n";
  return 1;
}
