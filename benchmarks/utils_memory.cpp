// Memory each memory-saving utility saves against its plain equivalent, and its time cost,
// measured with edkm::MemoryMeter (CPU: the counting allocator; CUDA: the caching allocator).
//
//   edkm_bench_utils_memory --device cpu --out benchmarks/results/utils_memory_cpu
//
// Writes OUT.json and OUT.md. For every utility: peak bytes above the start of the measured
// scope (inputs and parameters exist before it; gradients of parameters are allocated by a
// warm-up run, so the peak is activations and temporaries), bytes still held after the forward
// ("kept": what autograd saved for backward), and the best wall time of --repeats runs.
#include <ATen/ATen.h>
#include <edkm/edkm.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include "bench_util.h"

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace {

at::Device g_device(at::kCPU);

void sync() { edkm::bench::sync(g_device); }

const edkm::MemoryFigures& figures(const edkm::MemoryReport& r) { return g_device.is_cuda() ? r.cuda : r.cpu; }

// What one run reports: the peak and, when the body calls forward_done(), the bytes held then.
struct Probe {
  edkm::MemoryMeter* meter = nullptr;
  int64_t kept = -1;
  void forward_done() {
    sync();
    kept = figures(meter->report()).current_delta();
  }
};

struct Result {
  int64_t peak = 0, kept = -1;
  double seconds = 1e30;
};

// One warm-up run (allocates parameter gradients, first-touch costs), then `repeats` runs.
Result measure(const std::function<void(Probe&)>& body, int64_t repeats) {
  Result r;
  for (int64_t i = 0; i <= repeats; ++i) {
    sync();
    edkm::MemoryMeter meter;
    Probe p{&meter};
    const auto t0 = std::chrono::steady_clock::now();
    body(p);
    sync();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i == 0) continue;
    r.seconds = std::min(r.seconds, s);
    r.peak = std::max(r.peak, figures(meter.report()).peak_delta());
    r.kept = std::max(r.kept, p.kept);
  }
  return r;
}

nlohmann::json g_results = nlohmann::json::array();

void record(const std::string& utility, const std::string& config, const std::string& plain_name, const Result& plain,
            const std::string& edkm_name, const Result& ours, const std::string& note = "") {
  g_results.push_back({{"utility", utility},
                       {"config", config},
                       {"plain", plain_name},
                       {"edkm", edkm_name},
                       {"plain_peak_bytes", plain.peak},
                       {"edkm_peak_bytes", ours.peak},
                       {"plain_kept_bytes", plain.kept},
                       {"edkm_kept_bytes", ours.kept},
                       {"plain_seconds", plain.seconds},
                       {"edkm_seconds", ours.seconds},
                       {"note", note},
                       {"device", g_device.str()},
                       {"threads", at::get_num_threads()}});
  std::cout << utility << " [" << config << "]: peak " << plain.peak / double(1 << 20) << " -> "
            << ours.peak / double(1 << 20) << " MiB, time " << plain.seconds << " -> " << ours.seconds << " s\n";
}

at::TensorOptions fopts() { return at::TensorOptions().dtype(at::kFloat).device(g_device); }

torch::nn::Sequential mlp_block(int64_t d, int64_t hidden) {
  return torch::nn::Sequential(torch::nn::Linear(d, hidden), torch::nn::GELU(), torch::nn::Linear(hidden, d));
}

// --- the utilities --------------------------------------------------------------------------------

void bench_checkpoint(int64_t layers, int64_t d, int64_t rows, int64_t repeats) {
  std::vector<torch::nn::Sequential> blocks;
  torch::nn::Sequential ckpt;
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(mlp_block(d, 4 * d));
    blocks.back()->to(g_device);
    ckpt->push_back(edkm::Checkpoint(blocks.back()));
  }
  auto x = at::randn({rows, d}, fopts()).requires_grad_(true);
  auto plain = measure(
      [&](Probe& p) {
        at::Tensor y = x;
        for (auto& b : blocks) y = b->forward(y);
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  auto ours = measure(
      [&](Probe& p) {
        auto y = ckpt->forward(x);
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  std::ostringstream c, note;
  c << layers << " x MLP(" << d << "->" << 4 * d << "->" << d << "), " << rows << " rows, fwd+bwd";
  note << "one layer's activations (Linear out + GELU out + output): " << std::setprecision(3)
       << rows * 9 * d * 4.0 / (1 << 20) << " MiB";
  record("checkpoint", c.str(), "plain stack", plain, "edkm::Checkpoint per layer", ours, note.str());
}

void bench_glu(edkm::GLUActivation act, int64_t d, int64_t hidden, int64_t rows, int64_t repeats) {
  edkm::GLUFeedForward ff(edkm::GLUFeedForwardOptions(d, hidden).activation(act));
  ff->to(g_device);
  auto x = at::randn({rows, d}, fopts()).requires_grad_(true);
  auto run = [&](bool fused) {
    return measure(
        [&](Probe& p) {
          ff->options.fused(fused);
          auto y = ff(x);
          p.forward_done();
          y.sum().backward();
        },
        repeats);
  };
  auto plain = run(false), ours = run(true);
  std::ostringstream c, note;
  c << "GLUFeedForward(" << d << ", h=" << hidden << "), " << rows << " rows, fwd+bwd";
  note << "gate activations [rows, h]: " << rows * hidden * 4.0 / (1 << 20) << " MiB";
  const std::string name = act == edkm::GLUActivation::kSiLU ? "swiglu" : "geglu";
  record(name, c.str(), "x1 * act(x2) (autograd)", plain, "fused_glu", ours, note.str());
}

void bench_local_attention(int64_t n, int64_t window, int64_t heads, int64_t head_dim, bool causal, int64_t repeats) {
  auto q = at::randn({1, heads, n, head_dim}, fopts()).requires_grad_(true);
  auto k = at::randn({1, heads, n, head_dim}, fopts()).requires_grad_(true);
  auto v = at::randn({1, heads, n, head_dim}, fopts()).requires_grad_(true);
  auto mask = edkm::functional::band_mask(n, window, causal, g_device);  // built outside the scope
  auto plain = measure(
      [&](Probe& p) {
        auto y = edkm::functional::masked_attention(q, k, v, mask);
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  auto ours = measure(
      [&](Probe& p) {
        auto y = edkm::functional::local_attention(q, k, v, edkm::LocalAttentionFuncOptions(window).causal(causal));
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  std::ostringstream c;
  c << "n=" << n << ", window=" << window << (causal ? ", causal" : ", bidirectional") << ", " << heads << " heads x "
    << head_dim << ", fwd+bwd";
  record("local_attention", c.str(), "full attention + band mask", plain, "local_attention (blocked)", ours,
         "full: O(n^2) scores; blocked: O(n * (block + 2 window))");
}

void bench_prune(int64_t out, int64_t in, int64_t rows, int64_t repeats) {
  // plain: torch.nn.utils.prune's reparametrisation, weight = weight_orig * mask (fp32 mask) every forward
  torch::nn::Linear ref(in, out), fc(in, out);
  ref->to(g_device);
  fc->to(g_device);
  auto x = at::randn({rows, in}, fopts());
  Result plain, ours;
  {
    edkm::MemoryMeter m;
    auto fmask = edkm::functional::l1_unstructured_mask(ref->weight, 0.5).to(at::kFloat);
    plain = measure(
        [&](Probe& p) {
          auto y = at::linear(x, ref->weight * fmask, ref->bias);
          p.forward_done();
          y.sum().backward();
        },
        repeats);
    plain.peak += figures(m.report()).current_delta();  // the persistent mask
  }
  {
    edkm::MemoryMeter m;
    edkm::prune::l1_unstructured(*fc, "weight", 0.5);
    const int64_t persistent = figures(m.report()).current_delta();  // the bool mask
    ours = measure(
        [&](Probe& p) {
          auto y = fc(x);
          p.forward_done();
          y.sum().backward();
        },
        repeats);
    ours.peak += persistent;
  }
  std::ostringstream c;
  c << "Linear(" << in << ", " << out << "), 50% L1 unstructured, " << rows << " rows, fwd+bwd";
  record("prune", c.str(), "weight_orig * mask per forward (fp32 mask)", plain, "in-place mask + grad hook (bool mask)",
         ours, "peaks include the persistent mask");
}

void bench_distill(int64_t layers, int64_t d, int64_t rows, int64_t classes, int64_t repeats) {
  std::vector<torch::nn::Sequential> teacher;
  for (int64_t i = 0; i < layers; ++i) teacher.push_back(mlp_block(d, 4 * d));
  torch::nn::Linear teacher_head(d, classes);
  torch::nn::Sequential student(torch::nn::Linear(d, d), torch::nn::GELU(), torch::nn::Linear(d, classes));
  for (auto& b : teacher) b->to(g_device);
  teacher_head->to(g_device);
  student->to(g_device);
  auto teacher_fwd = [&](const at::Tensor& x) {
    at::Tensor h = x;
    for (auto& b : teacher) h = b->forward(h);
    return std::vector<at::Tensor>{teacher_head(h)};
  };
  auto student_fwd = [&](const at::Tensor& x) { return std::vector<at::Tensor>{student->forward(x)}; };
  auto x = at::randn({rows, d}, fopts());
  auto plain = measure(
      [&](Probe& p) {  // the teacher's forward with autograd on: its activations kept
        auto t = teacher_fwd(x)[0];
        auto s = student->forward(x);
        auto loss = edkm::functional::distillation_kl_loss(s, t, 2.0);
        p.forward_done();
        loss.backward();
      },
      repeats);
  edkm::Distiller distill(teacher_fwd, student_fwd);
  auto ours = measure(
      [&](Probe& p) {
        auto out = distill.step(x);
        p.forward_done();
        out.loss.backward();
      },
      repeats);
  std::ostringstream c;
  c << "teacher " << layers << " x MLP(" << d << "), student 1 x MLP, " << rows << " rows, " << classes
    << " classes, step+bwd";
  record("distill", c.str(), "teacher with autograd", plain, "edkm::Distiller (teacher no-grad)", ours);
}

// The LM head and its losses (cross entropy + distillation KL against a teacher's head) at a
// SmolLM2-135M step's shape: the logits of both models, log_softmax and autograd, against
// edkm::functional::lm_head_loss (chunks of 256 tokens; matmul_dtype as given).
void bench_head_loss(int64_t batch, int64_t seq, int64_t dim, int64_t vocab, at::ScalarType mm_dtype,
                     at::ScalarType logits_dtype, int64_t repeats) {
  auto w = (at::randn({vocab, dim}, fopts()) * 0.05).requires_grad_(true);
  const auto tw = at::randn({vocab, dim}, fopts()) * 0.05;
  auto h = at::randn({batch, seq, dim}, fopts()).requires_grad_(true);
  const auto th = at::randn({batch, seq, dim}, fopts());
  const auto tokens = at::randint(vocab, {batch, seq}, fopts().dtype(at::kLong));
  auto plain = measure(
      [&](Probe& p) {
        const at::Tensor logits = at::matmul(h, w.t());
        const at::Tensor t_logits = at::matmul(th, tw.t());
        auto loss = 0.5 * edkm::functional::distillation_kl_loss(logits, t_logits, 2.0) +
                    0.5 * edkm::functional::causal_lm_loss(logits, tokens);
        p.forward_done();
        loss.backward();
      },
      repeats);
  const auto o =
      edkm::LmHeadLossOptions().alpha(0.5).temperature(2.0).gradient_matmul_dtype(mm_dtype).logits_matmul_dtype(
          logits_dtype);
  auto ours = measure(
      [&](Probe& p) {
        auto loss = edkm::functional::lm_head_loss(h, w, tokens, th, tw, o);
        p.forward_done();
        loss.backward();
      },
      repeats);
  std::ostringstream c;
  c << batch << " x " << seq << " tokens, dim " << dim << ", vocab " << vocab << ", teacher, T 2, alpha 0.5, fwd+bwd";
  if (mm_dtype != at::kFloat) c << ", " << c10::toString(mm_dtype) << " gradient matmuls";
  if (logits_dtype != at::kFloat) c << ", " << c10::toString(logits_dtype) << " logit matmuls";
  record("head_loss", c.str(), "logits + log_softmax (autograd)", plain, "lm_head_loss (fused)", ours);
}

void bench_padding(int64_t sequences, int64_t max_len, int64_t batch, int64_t d, int64_t repeats) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  auto l = at::randint(16, max_len + 1, {sequences}, gen, at::kLong);
  std::vector<int64_t> lengths(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + sequences);
  std::vector<at::Tensor> seqs;
  for (auto len : lengths) seqs.push_back(at::randint(0, 32000, {len}, gen, at::kLong));
  torch::nn::Embedding emb(32000, d);
  auto block = mlp_block(d, 4 * d);
  emb->to(g_device);
  block->to(g_device);
  std::vector<std::vector<int64_t>> in_order;
  for (int64_t i = 0; i < sequences; i += batch) {
    in_order.emplace_back();
    for (int64_t j = i; j < std::min(i + batch, sequences); ++j) in_order.back().push_back(j);
  }
  auto bucketed = edkm::bucket_by_length(lengths, edkm::BucketOptions(batch));
  // every batch: embedding + MLP forward, no grad (an evaluation pass). Memory: the peak of one
  // batch, averaged over the batches (each batch's peak follows its padded size).
  auto pass = [&](const std::vector<std::vector<int64_t>>& batches, bool global_max) {
    int64_t peak_sum = 0;
    auto r = measure(
        [&](Probe&) {
          at::NoGradGuard no_grad;
          peak_sum = 0;
          for (const auto& b : batches) {
            edkm::MemoryMeter m;
            std::vector<at::Tensor> part;
            for (auto i : b) part.push_back(seqs[i]);
            auto pb = edkm::pad_sequences(part, edkm::PadOptions().pad_to_multiple_of(global_max ? max_len : 1));
            auto y = block->forward(emb->forward(pb.values.to(g_device)));
            sync();
            peak_sum += figures(m.report()).peak_delta();
          }
        },
        repeats);
    r.peak = peak_sum / static_cast<int64_t>(batches.size());
    return r;
  };
  auto plain = pass(in_order, true), dynamic = pass(in_order, false), ours = pass(bucketed, false);
  int64_t real = 0;
  for (auto len : lengths) real += len;
  std::ostringstream c, note1, note2;
  c << sequences << " sequences, lengths U[16, " << max_len << "], batch " << batch << ", Embedding+MLP(" << d
    << ") forward, mean peak per batch";
  note1 << "tokens: " << real << " real, " << sequences * max_len << " padded to max, "
        << edkm::padded_tokens(lengths, in_order) << " padded to batch longest";
  note2 << "tokens: " << real << " real, " << sequences * max_len << " padded to max, "
        << edkm::padded_tokens(lengths, bucketed) << " bucketed";
  record("dynamic_padding", c.str(), "pad to max length", plain, "pad_sequences (batch longest)", dynamic, note1.str());
  record("length_bucketing", c.str(), "pad to max length", plain, "bucket_by_length + pad_sequences", ours,
         note2.str());
}

void bench_chunked(int64_t n, int64_t d, int64_t chunk, int64_t repeats) {
  auto mlp = mlp_block(d, 4 * d);
  mlp->to(g_device);
  auto fn = [mlp](const at::Tensor& t) mutable { return mlp->forward(t); };
  auto x = at::randn({1, n, d}, fopts());
  auto inf_plain = measure(
      [&](Probe&) {
        at::NoGradGuard g;
        auto y = fn(x);
      },
      repeats);
  auto inf_ours = measure(
      [&](Probe&) {
        at::NoGradGuard g;
        auto y = edkm::functional::chunked(fn, x, edkm::ChunkOptions(chunk));
      },
      repeats);
  std::ostringstream c;
  c << "MLP(" << d << "->" << 4 * d << ") over [1, " << n << ", " << d << "], chunks of " << chunk;
  record("chunked", c.str() + ", inference", "one call", inf_plain, "chunked", inf_ours);
  auto xr = x.clone().requires_grad_(true);
  auto tr_plain = measure(
      [&](Probe& p) {
        auto y = fn(xr);
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  auto tr_ours = measure(
      [&](Probe& p) {
        auto y = edkm::functional::chunked(fn, xr, edkm::ChunkOptions(chunk).checkpoint(true), mlp->parameters());
        p.forward_done();
        y.sum().backward();
      },
      repeats);
  record("chunked_checkpoint", c.str() + ", fwd+bwd", "one call", tr_plain, "chunked + checkpoint per chunk", tr_ours);
}

void bench_host_pool(int64_t rounds, int64_t repeats) {
  // an offloader's traffic: each round takes 16 host buffers of 1..16 MiB, writes them, gives them back
  std::vector<int64_t> sizes;
  for (int64_t i = 0; i < 16; ++i) sizes.push_back((1 + (i * 7) % 16) << 20);
  auto plain = measure(
      [&](Probe&) {
        for (int64_t r = 0; r < rounds; ++r) {
          std::vector<at::Tensor> held;
          for (auto s : sizes) held.push_back(at::empty({s}, at::kByte).fill_(1));
        }
      },
      repeats);
  edkm::HostMemoryPool pool;
  auto ours = measure(
      [&](Probe&) {
        for (int64_t r = 0; r < rounds; ++r) {
          std::vector<at::Tensor> held;
          for (auto s : sizes) held.push_back(pool.empty({s}, at::kByte).fill_(1));
        }
      },
      repeats);
  const auto st = pool.stats();
  ours.peak = st.peak_reserved_bytes;  // the pool's own memory (not through the CPU allocator)
  std::ostringstream c, note;
  c << rounds << " rounds x 16 buffers of 1..16 MiB, written" << (pool.pinned() ? ", pinned" : ", pageable");
  note << "pool: " << st.hits << " hits, " << st.misses << " misses, reserved peak "
       << st.peak_reserved_bytes / double(1 << 20) << " MiB for " << st.peak_in_use_bytes / double(1 << 20)
       << " MiB in use (requested " <<
      [&] {
        int64_t t = 0;
        for (auto s : sizes) t += s;
        return t >> 20;
      }()
       << " MiB)";
  record("host_pool", c.str(), "at::empty each time", plain, "edkm::HostMemoryPool", ours, note.str());
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: memory saved by the memory-saving utilities against their plain equivalents"};
  std::string device = "cpu", out = "benchmarks/results/utils_memory_cpu", only;
  int64_t repeats = 2;
  bool quick = false;
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--repeats", repeats, "timed repetitions after one warm-up")->check(CLI::PositiveNumber);
  app.add_option("--only", only,
                 "comma-separated subset: checkpoint,glu,local_attention,prune,distill,padding,"
                 "chunked,host_pool,head_loss");
  app.add_flag("--quick", quick, "small shapes (a smoke run)");
  int64_t threads = 0;
  app.add_option("--threads", threads, "intra-op threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--out", out, "output path without extension (.json and .md are written)");
  CLI11_PARSE(app, argc, argv);
  for (const auto& name : edkm::bench::split(only)) {
    const std::string known = ",checkpoint,glu,local_attention,prune,distill,padding,chunked,host_pool,head_loss,";
    if (known.find("," + name + ",") == std::string::npos)
      throw std::invalid_argument("--only: unknown part '" + name + "' (known: " + known.substr(1, known.size() - 2) +
                                  ")");
  }
  edkm::bench::make_out_dir(out);
  g_device = at::Device(device == "cuda" ? at::kCUDA : at::kCPU);
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  edkm::install_cpu_memory_counter();
  at::manual_seed(0);
  auto want = [&](const std::string& name) {
    return only.empty() || ("," + only + ",").find("," + name + ",") != std::string::npos;
  };
  const int64_t s = quick ? 8 : 1;  // shrink factor

  if (want("checkpoint")) bench_checkpoint(8, 512 / s, 2048 / s, repeats);
  if (want("glu")) {
    bench_glu(edkm::GLUActivation::kSiLU, 1024 / s, 2816 / s, 2048 / s, repeats);
    bench_glu(edkm::GLUActivation::kGELU, 1024 / s, 2816 / s, 2048 / s, repeats);
  }
  if (want("local_attention")) {
    for (int64_t n : {2048, 4096, 8192}) bench_local_attention(n / s, 256 / s, 2, 64, true, repeats);
    bench_local_attention(8192 / s, 256 / s, 2, 64, false, repeats);
  }
  if (want("prune")) bench_prune(4096 / s, 4096 / s, 512 / s, repeats);
  if (want("distill")) bench_distill(4, 512 / s, 2048 / s, 1000, repeats);
  if (want("padding")) bench_padding(512, 1024 / s, 32, 128, repeats);
  if (want("chunked")) bench_chunked(32768 / s, 256, 2048 / s, repeats);
  if (want("host_pool")) bench_host_pool(quick ? 2 : 20, repeats);
  if (want("head_loss")) {
    bench_head_loss(4, 256 / s, 576 / s, 49152 / s, at::kFloat, at::kFloat, repeats);
    bench_head_loss(4, 256 / s, 576 / s, 49152 / s, at::kBFloat16, at::kFloat, repeats);
    bench_head_loss(4, 256 / s, 576 / s, 49152 / s, at::kBFloat16, at::kBFloat16, repeats);
  }

  edkm::write_text_file(out + ".json", g_results.dump(2) + "\n");
  std::ostringstream md;
  auto mib = [](int64_t b) { return b < 0 ? std::string("-") : edkm::bench::mib(static_cast<double>(b)); };
  md << "| utility | config | plain | edkm | plain peak MiB | edkm peak MiB | saved | plain kept MiB | edkm kept MiB "
        "| plain s | edkm s | time x |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : g_results) {
    const int64_t pp = r["plain_peak_bytes"], ep = r["edkm_peak_bytes"];
    const double ps = r["plain_seconds"], es = r["edkm_seconds"];
    md << "| " << r["utility"].get<std::string>() << " | " << r["config"].get<std::string>() << " | "
       << r["plain"].get<std::string>() << " | " << r["edkm"].get<std::string>() << " | " << mib(pp) << " | " << mib(ep)
       << " | " << std::fixed << std::setprecision(0) << (pp > 0 ? 100.0 * (pp - ep) / pp : 0.0) << "% | "
       << mib(r["plain_kept_bytes"]) << " | " << mib(r["edkm_kept_bytes"]) << " | " << std::setprecision(3) << ps
       << " | " << es << " | " << std::setprecision(2) << es / ps << " |\n";
  }
  md << "\nNotes:\n";
  for (const auto& r : g_results)
    if (!r["note"].get<std::string>().empty())
      md << "- " << r["utility"].get<std::string>() << " (" << r["config"].get<std::string>()
         << "): " << r["note"].get<std::string>() << "\n";
  edkm::write_text_file(out + ".md", md.str());
  std::cout << md.str();
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_utils_memory");
}
