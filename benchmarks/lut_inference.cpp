// Running palettized weights without decompressing them (edkm/nn/palettized_linear.h,
// edkm/models/llama_runtime.h): the LUT-GEMV at SmolLM2 and LLaMA-7B shapes against LibTorch's fp32 and
// bf16 matmul on the dense weight, as time, GB/s and % of the memory bandwidth a copy probe
// measures in the same run; and, for compressed LLaMA checkpoints, end-to-end decode tokens/s and
// resident weight memory packed against the same checkpoint decompressed to fp32 (with the
// greedy tokens of both compared); and decode of models of SmolLM2-135M's or LLaMA-7B's shapes with
// random weights (LlamaRuntime::random: no checkpoint needed, e.g. on a GPU machine), packed at
// each --bits and dense fp32 / bf16, against the bound the copy probe sets (bandwidth / bytes of
// weights a step reads).
//
//   edkm_bench_lut_inference --out benchmarks/results/lut_inference \
//       [--decode smollm2-4bit=out4/model.edkm.safetensors --decode smollm2-3bit=out3/model.edkm.safetensors]
//   edkm_bench_lut_inference --device cuda --shapes 4096x4096,11008x4096,4096x11008 --out OUT
//   edkm_bench_lut_inference --device cuda --shapes '' --decode-random smollm2,llama7b --bits 3,4 --out OUT
//
// --device cuda times the CUDA LUT-GEMV against cuBLAS (fp32, bf16 and fp16) with HBM bandwidth
// from a device-to-device copy probe; every measurement launches a batch of calls and then
// synchronises once (time per call = batch time / calls). Decode runs on the device too (each
// step ends with its argmax read back, as a sampling loop does). --shapes '' runs no GEMVs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <edkm/io/checkpoint.h>
#include <edkm/io/file_io.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_runtime.h>
#include <edkm/nn/palettized_linear.h>
#include <torch/cuda.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "results_io.h"
#include "svg_chart.h"

using edkm::bench::fixed;
using edkm::bench::mib;

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool g_cuda = false;            // --device cuda
constexpr int kCudaBatch = 20;  // calls per synchronisation on the GPU

// Median seconds per call of f over repetitions filling ~min_time (at least 5). On the GPU a
// repetition is kCudaBatch calls and one synchronisation.
template <class F>
double time_it(F f, double min_time) {
  const int calls = g_cuda ? kCudaBatch : 1;
  auto once = [&] {
    for (int i = 0; i < calls; ++i) f();
    if (g_cuda) torch::cuda::synchronize();
  };
  once();  // warm
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 5 || seconds_since(start) < min_time) {
    const auto s = Clock::now();
    once();
    t.push_back(seconds_since(s) / calls);
    if (t.size() > 100000) break;
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

// Bytes of weights a GEMV measurement cycles through, as the copy probe's buffers: no weight stays in
// the caches between calls (decode reads each layer's weights once per token, and a model's weights
// pass the L3; a 4096x4096 3-bit weight alone, 6 MiB, would sit in this CPU's 32 MiB L3).
int64_t working_set() { return int64_t{1} << (g_cuda ? 30 : 28); }

// A call that runs f on the next of enough copies of t to fill working_set(), in turn.
template <class F>
auto cycled(const at::Tensor& t, F f) {
  const int64_t bytes = std::max<int64_t>(1, t.numel() * static_cast<int64_t>(t.element_size()));
  const int64_t n = std::max<int64_t>(1, (working_set() + bytes - 1) / bytes);
  std::vector<at::Tensor> copies{t};
  for (int64_t k = 1; k < n; ++k) copies.push_back(t.clone());
  return [copies = std::move(copies), f = std::move(f), k = size_t{0}]() mutable { f(copies[k++ % copies.size()]); };
}

// Copy probe: bytes read + written per second over a buffer far larger than the caches, with
// LibTorch's threads (or device to device on the GPU: 1 GiB each way, past the H200's L2).
double copy_bandwidth(double min_time, at::Device device) {
  const int64_t n = int64_t{1} << (g_cuda ? 28 : 26);  // fp32 elements each way
  at::Tensor a = at::ones({n}, device), b = at::empty({n}, device);
  const double s = time_it([&] { b.copy_(a); }, min_time);
  return 2.0 * 4.0 * static_cast<double>(n) / s;
}

// SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M), the shapes that matter to decode speed.
edkm::LlamaConfig smollm2_config() {
  return edkm::LlamaConfig()
      .vocab_size(49152)
      .hidden_size(576)
      .intermediate_size(1536)
      .num_hidden_layers(30)
      .num_attention_heads(9)
      .num_key_value_heads(3)
      .max_position_embeddings(8192)
      .rope_theta(100000)
      .rms_norm_eps(1e-5)
      .tie_word_embeddings(true);
}

struct DecodeTiming {
  double prefill = 0, tok_s = 0;
  std::vector<int64_t> tokens;  // greedy
};

// Prefill `prompt`, one greedy step untimed (a step graph's capture, first kernel launches), then
// `steps` greedy one-token steps timed, each ending by reading its argmax back. tokens: the first
// steps + 1 greedy tokens.
DecodeTiming time_decode(const edkm::LlamaRuntime& rt, const std::vector<int64_t>& prompt, int64_t steps) {
  DecodeTiming r;
  auto cache = rt.new_cache(static_cast<int64_t>(prompt.size()) + steps + 1);
  auto t0 = Clock::now();
  at::Tensor logits = rt.forward(at::tensor(prompt, at::kLong), cache, edkm::LlamaRuntime::Logits::kLast);
  int64_t next = logits.select(0, -1).argmax().item<int64_t>();
  r.prefill = seconds_since(t0);
  auto step = [&] {
    r.tokens.push_back(next);
    next = rt.forward(at::tensor(std::vector<int64_t>{next}, at::kLong), cache).select(0, -1).argmax().item<int64_t>();
  };
  step();
  t0 = Clock::now();
  for (int64_t k = 0; k < steps; ++k) step();
  r.tok_s = static_cast<double>(steps) / seconds_since(t0);
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: LUT-GEMV and packed decode against dense fp32 / bf16"};
  std::string shapes = "576x576,1536x576,576x1536,4096x4096,11008x4096,4096x11008", bits_list = "3,4,8", out;
  std::vector<std::string> decodes;
  std::string randoms, dense_list = "fp32,bf16", graphs_mode = "off";
  int64_t threads = -1, rows_per_lut = 0, decode_tokens = 32, prompt_tokens = 16, random_layers = 0,
          random_rows_per_lut = 16;
  double min_time = 0.5;
  app.add_option("--shapes", shapes, "out x in of the GEMVs")->capture_default_str();
  app.add_option("--bits", bits_list)->capture_default_str();
  app.add_option("--rows-per-lut", rows_per_lut, "rows sharing a LUT (0: one LUT per tensor)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--decode", decodes,
                 "label=PATH of a compressed LLaMA checkpoint (config.json beside it): decode tokens/s, packed and "
                 "decompressed; repeatable");
  app.add_option("--decode-random", randoms,
                 "models with random weights, comma-separated: smollm2 (SmolLM2-135M's shapes), llama7b "
                 "(LLaMA-7B's): decode packed at each --bits and dense (--decode-dense)");
  app.add_option("--random-layers", random_layers, "decoder layers of the random models (0: the model's own)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--random-rows-per-lut", random_rows_per_lut, "rows sharing a LUT in the random models")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--decode-dense", dense_list, "dense baselines of the random models: fp32, bf16, fp16 or none")
      ->capture_default_str();
  app.add_option("--decode-graphs", graphs_mode,
                 "random models' steps as CUDA graphs (LlamaRuntime::step_graphs): off, on, or both (each row twice)")
      ->check(CLI::IsMember({"off", "on", "both"}))
      ->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens)->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens)->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--min-time", min_time, "seconds per measurement")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--threads", threads, "LibTorch threads (default: all cores)")->check(CLI::PositiveNumber);
  std::string device_name = "cpu";
  app.add_option("--device", device_name, "cpu or cuda (the GEMVs and the decode)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--out", out, "write OUT.json, OUT.md and OUT.svg")->required();
  CLI11_PARSE(app, argc, argv);
  // Everything the run will parse, checked before any measurement.
  for (const auto& s : edkm::bench::split(shapes)) {
    const auto shape = edkm::bench::parse_shape(s);
    TORCH_CHECK(rows_per_lut == 0 || shape[0] % rows_per_lut == 0, "--rows-per-lut ", rows_per_lut,
                " does not divide the ", shape[0], " rows of ", s);
  }
  for (const auto& b : edkm::bench::split(bits_list)) {
    TORCH_CHECK(!b.empty() && b.size() <= 1 && b.find_first_not_of("12345678") == std::string::npos,
                "--bits takes comma-separated widths in 1..8, got '", b, "'");
  }
  // --decode label=PATH: the checkpoint and the config.json beside it, both readable.
  struct Decode {
    std::string label, path, dir;
  };
  std::vector<Decode> decode_runs;
  for (const auto& d : decodes) {
    const auto eq = d.find('=');
    TORCH_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < d.size(), "--decode: expected label=PATH, got '", d, "'");
    Decode r{d.substr(0, eq), d.substr(eq + 1), {}};
    r.dir = r.path.find('/') == std::string::npos ? "." : r.path.substr(0, r.path.rfind('/'));
    TORCH_CHECK(std::ifstream(r.path).good(), "--decode ", r.label, ": cannot open the checkpoint ", r.path);
    TORCH_CHECK(std::ifstream(r.dir + "/config.json").good(), "--decode ", r.label, ": no readable config.json beside ",
                r.path, " (", r.dir, "/config.json); edkm_llama_compress --out writes both");
    decode_runs.push_back(std::move(r));
  }
  std::vector<std::pair<std::string, edkm::LlamaConfig>> random_models;
  for (const auto& name : edkm::bench::split(randoms)) {
    TORCH_CHECK(name == "smollm2" || name == "llama7b", "--decode-random: unknown model '", name,
                "' (expected smollm2 or llama7b)");
    edkm::LlamaConfig c = name == "llama7b" ? edkm::LlamaConfig::llama_7b() : smollm2_config();
    if (random_layers > 0) c.num_hidden_layers(random_layers);
    random_models.emplace_back(name, c);
  }
  std::vector<std::pair<std::string, at::ScalarType>> dense_baselines;
  for (const auto& d : edkm::bench::split(dense_list)) {
    if (d == "none") continue;
    TORCH_CHECK(d == "fp32" || d == "bf16" || d == "fp16", "--decode-dense: expected fp32, bf16, fp16 or none, got '",
                d, "'");
    dense_baselines.emplace_back(d, d == "fp32" ? at::kFloat : d == "bf16" ? at::kBFloat16 : at::kHalf);
  }
  edkm::bench::make_out_dir(out);
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  at::NoGradGuard ng;
  g_cuda = device_name == "cuda";
  if (g_cuda && !torch::cuda::is_available()) {
    std::cerr << "edkm_bench_lut_inference: --device cuda, but no CUDA device is available\n";
    return 77;
  }
  const at::Device device(g_cuda ? at::kCUDA : at::kCPU);
  const std::string isa = g_cuda ? "cuda" : edkm::functional::lut_kernel_isa();

  const double bandwidth = copy_bandwidth(min_time, device);
  std::cout << "copy probe: " << fixed(bandwidth / 1e9, 2) << " GB/s (read + write), LUT kernels: " << isa << ", "
            << (g_cuda ? "GPU" : std::to_string(at::get_num_threads()) + " threads") << "\n";
  json gemv = json::array();
  std::ostringstream md;
  md << "| shape (out x in) | bits | LUT-GEMV us | GB/s | copy probe GB/s | % of copy bandwidth | fp32 us | bf16 us "
        "| x faster than fp32 | x faster than bf16 |"
     << (g_cuda ? " fp16 us | x faster than fp16 | rows2 kernel us | tiled kernel us | warp-per-row kernel us |" : "")
     << "\n|---|---|---|---|---|---|---|---|---|---|" << (g_cuda ? "---|---|---|---|---|" : "") << "\n";
  edkm::bench::BarChart chart;
  chart.title = std::string("LUT-GEMV speed-up over LibTorch fp32 (batch 1") + (g_cuda ? ", CUDA)" : ")");
  chart.machine = edkm::bench::machine_name();
  chart.y_label = "x faster than fp32 matmul";
  std::map<int64_t, std::vector<double>> speedups;
  for (const auto& s : edkm::bench::split(shapes)) {
    const auto shape = edkm::bench::parse_shape(s);
    TORCH_CHECK(shape.size() == 2, "--shapes: ", s, " is not OUTxIN");
    const int64_t o = shape[0], i = shape[1];
    chart.categories.push_back(s);
    // The shape's own probe, just before its GEMVs: this shared machine's bandwidth moves by up to
    // 2x within minutes, so one probe at the start would misstate the later shapes' fractions.
    const double probe = copy_bandwidth(min_time, device);
    const at::Tensor w = at::randn({o, i}), x = at::randn({1, i}, device);
    const at::Tensor wd = w.to(device), xb = x.to(at::kBFloat16);
    const double t32 = time_it(cycled(wd, [&](const at::Tensor& v) { at::linear(x, v); }), min_time);
    const double t16 = time_it(cycled(wd.to(at::kBFloat16), [&](const at::Tensor& v) { at::linear(xb, v); }), min_time);
    double th = 0;  // fp16: the GPU kernels' usual baseline (SqueezeLLM's anchor)
    if (g_cuda) {
      const at::Tensor xh = x.to(at::kHalf);
      th = time_it(cycled(wd.to(at::kHalf), [&](const at::Tensor& v) { at::linear(xh, v); }), min_time);
    }
    for (const auto& bs : edkm::bench::split(bits_list)) {
      const int64_t bits = std::stoll(bs);
      auto opts = edkm::DKMOptions(bits);
      if (rows_per_lut > 0) opts.granularity(edkm::Granularity::kPerGroupedChannel).group_size(rows_per_lut);
      const int64_t groups = rows_per_lut > 0 ? o / rows_per_lut : 1;
      const auto pal = edkm::Palette::from_centroids(w, at::randn({groups, int64_t{1} << bits, 1}), opts);
      edkm::PalettizedLinear fc(edkm::PackedWeight::from_palette(pal).to(device));
      auto lut_gemv = [&](const at::Tensor& v) {  // the GEMV on packed indices v (fc's LUTs and shape)
        edkm::PackedWeight pw = fc->packed;
        pw.packed = v;
        edkm::functional::lut_linear(x, pw);
      };
      const double t = time_it(cycled(fc->packed.packed, lut_gemv), min_time);
      // The CUDA kernels beside the default (rows): rows2 (tuned, opt-in, not yet run on a GPU),
      // tiled (the default before the first H100 run) and warp-per-row (any shape).
      double t_rows2 = 0, t_tiled = 0, t_warp = 0;
      if (g_cuda) {
        for (auto [kernel, seconds] : {std::pair{"rows2", &t_rows2}, {"tiled", &t_tiled}, {"warp", &t_warp}}) {
          ::setenv("EDKM_LUT_CUDA_KERNEL", kernel, 1);
          *seconds = time_it(cycled(fc->packed.packed, lut_gemv), min_time);
        }
        ::unsetenv("EDKM_LUT_CUDA_KERNEL");
      }
      const double bytes = static_cast<double>(fc->packed.resident_bytes() + 4 * (i + o));
      const double gbs = bytes / t / 1e9;
      gemv.push_back({{"shape", s},
                      {"bits", bits},
                      {"rows_per_lut", rows_per_lut > 0 ? rows_per_lut : o},
                      {"lut_gemv_seconds", t},
                      {"fp32_seconds", t32},
                      {"bf16_seconds", t16},
                      {"bytes", bytes},
                      {"gb_per_s", gbs},
                      {"copy_bandwidth_bytes_per_s", probe},
                      {"bandwidth_fraction", bytes / t / probe},
                      {"speedup_vs_fp32", t32 / t},
                      {"speedup_vs_bf16", t16 / t}});
      if (g_cuda) {
        gemv.back()["fp16_seconds"] = th;
        gemv.back()["speedup_vs_fp16"] = th / t;
        gemv.back()["rows2_kernel_seconds"] = t_rows2;
        gemv.back()["tiled_kernel_seconds"] = t_tiled;
        gemv.back()["warp_kernel_seconds"] = t_warp;
      }
      speedups[bits].push_back(t32 / t);
      md << "| " << s << " | " << bits << " | " << fixed(t * 1e6, 1) << " | " << fixed(gbs, 2) << " | "
         << fixed(probe / 1e9, 2) << " | " << fixed(100 * bytes / t / probe, 1) << "% | " << fixed(t32 * 1e6, 1)
         << " | " << fixed(t16 * 1e6, 1) << " | " << fixed(t32 / t, 2) << " | " << fixed(t16 / t, 2) << " |";
      if (g_cuda)
        md << " " << fixed(th * 1e6, 1) << " | " << fixed(th / t, 2) << " | " << fixed(t_rows2 * 1e6, 1) << " | "
           << fixed(t_tiled * 1e6, 1) << " | " << fixed(t_warp * 1e6, 1) << " |";
      md << "\n";
      std::cout << s << " " << bits << "-bit: " << fixed(t * 1e6, 1) << " us (" << fixed(gbs, 2) << " GB/s, "
                << fixed(100 * bytes / t / probe, 1) << "% of copy at " << fixed(probe / 1e9, 2) << " GB/s), fp32 "
                << fixed(t32 * 1e6, 1) << " us, bf16 " << fixed(t16 * 1e6, 1) << " us";
      if (g_cuda)
        std::cout << "; rows2 " << fixed(t_rows2 * 1e6, 1) << " us, tiled " << fixed(t_tiled * 1e6, 1) << " us, warp "
                  << fixed(t_warp * 1e6, 1) << " us";
      std::cout << "\n";
    }
  }
  for (const auto& [bits, v] : speedups) chart.series.push_back({std::to_string(bits) + "-bit", v});

  // End-to-end decode.
  json decode = json::array();
  std::ostringstream dmd;
  if (!decodes.empty())
    dmd << "| model | weights | resident weight MiB | prefill " << prompt_tokens
        << " tokens, s | decode tok/s | x fp32 "
        << "| greedy tokens equal to the decompressed model |\n|---|---|---|---|---|---|---|\n";
  for (const auto& [label, path, dir] : decode_runs) {
    const auto config = edkm::LlamaConfig::from_json(edkm::read_text_file(dir + "/config.json"));
    const auto ckpt = edkm::load_compressed(path);
    edkm::LlamaForCausalLM dense(config);
    edkm::load_tensors(*dense, ckpt.decompress());
    dense->to(at::kFloat);
    dense->eval();
    std::vector<int64_t> prompt;
    for (int64_t t = 0; t < prompt_tokens; ++t) prompt.push_back((t * 7919 + 13) % config.vocab_size());
    std::vector<std::pair<std::string, edkm::LlamaRuntime>> runs;
    runs.emplace_back("fp32 (decompressed)", edkm::LlamaRuntime(dense));
    runs.emplace_back("packed LUTs", edkm::LlamaRuntime(config, ckpt));
    std::vector<std::vector<int64_t>> tokens;
    double fp32_tok_s = 0;
    for (auto& [kind, rt] : runs) {
      rt.to(device);
      const DecodeTiming timing = time_decode(rt, prompt, decode_tokens);
      const double prefill = timing.prefill, tok_s = timing.tok_s;
      if (kind.rfind("fp32", 0) == 0) fp32_tok_s = tok_s;
      tokens.push_back(timing.tokens);
      const bool same = tokens.size() < 2 || tokens[0] == tokens.back();
      decode.push_back({{"model", label},
                        {"weights", kind},
                        {"path", path},
                        {"resident_weight_bytes", rt.weight_bytes()},
                        {"packed_layers", rt.packed_layers()},
                        {"prefill_seconds", prefill},
                        {"decode_tokens_per_s", tok_s},
                        {"speedup_vs_fp32", fp32_tok_s > 0 ? tok_s / fp32_tok_s : 1.0},
                        {"greedy_equal", same}});
      dmd << "| " << label << " | " << kind << " | " << mib(rt.weight_bytes()) << " | " << fixed(prefill, 3) << " | "
          << fixed(tok_s, 2) << " | " << fixed(fp32_tok_s > 0 ? tok_s / fp32_tok_s : 1.0, 2) << " | "
          << (tokens.size() < 2 ? "-"
              : same            ? "yes"
                                : "NO")
          << " |\n";
      std::cout << label << " " << kind << ": " << mib(rt.weight_bytes()) << " MiB of weights, " << fixed(tok_s, 2)
                << " tok/s decode, prefill " << fixed(prefill, 3) << " s\n";
    }
  }

  // Decode of random models: packed at each --bits, dense baselines; against bandwidth / bytes read.
  json random_decode = json::array();
  std::ostringstream rmd;
  if (!random_models.empty())
    rmd << "| model | layers | weights | resident weight MiB | MiB read per step | decode tok/s | x first row"
        << " | bound tok/s (copy probe / bytes read) | % of bound | prefill " << prompt_tokens
        << " tokens, s |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& [name, config] : random_models) {
    struct Kind {
      std::string label;
      edkm::RandomWeights weights;
      bool graphs;
    };
    std::vector<Kind> kinds;  // each weight kind without and / or with step graphs (--decode-graphs)
    auto add = [&](const std::string& label, const edkm::RandomWeights& weights) {
      if (graphs_mode != "on") kinds.push_back({label, weights, false});
      if (graphs_mode != "off")
        kinds.push_back(
            {label + (g_cuda ? ", CUDA graphs" : ", position steps (graphs' math, no graph)"), weights, true});
    };
    for (const auto& [label, dtype] : dense_baselines)
      add(label + " dense", edkm::RandomWeights().bits(0).dense_dtype(dtype).device(device));
    for (const auto& b : edkm::bench::split(bits_list))
      add(b + "-bit packed, " +
              (random_rows_per_lut ? std::to_string(random_rows_per_lut) + " rows per LUT" : "one LUT per tensor"),
          edkm::RandomWeights().bits(std::stoll(b)).rows_per_lut(random_rows_per_lut).device(device));
    std::vector<int64_t> prompt;
    for (int64_t t = 0; t < prompt_tokens; ++t) prompt.push_back((t * 7919 + 13) % config.vocab_size());
    double first_tok_s = 0;
    for (const auto& [kind, weights, graphs] : kinds) {
      const double probe = copy_bandwidth(min_time, device);  // beside this row, as the GEMVs' rows
      torch::manual_seed(0);
      double tok_s = 0, prefill = 0;
      int64_t resident = 0, read = 0;
      {
        auto rt = edkm::LlamaRuntime::random(config, weights);
        rt.step_graphs(graphs);
        const DecodeTiming timing = time_decode(rt, prompt, decode_tokens);
        tok_s = timing.tok_s;
        prefill = timing.prefill;
        resident = rt.weight_bytes();
        read = rt.decode_bytes();
      }  // freed before the next model is made
      if (first_tok_s == 0) first_tok_s = tok_s;
      const double bound = probe / static_cast<double>(read);
      random_decode.push_back({{"model", name},
                               {"layers", config.num_hidden_layers()},
                               {"weights", kind},
                               {"bits", weights.bits()},
                               {"step_graphs", graphs},
                               {"resident_weight_bytes", resident},
                               {"bytes_read_per_step", read},
                               {"decode_tokens_per_s", tok_s},
                               {"speedup_vs_first", tok_s / first_tok_s},
                               {"copy_bandwidth_bytes_per_s", probe},
                               {"bound_tokens_per_s", bound},
                               {"prefill_seconds", prefill}});
      rmd << "| " << name << " | " << config.num_hidden_layers() << " | " << kind << " | " << mib(resident) << " | "
          << mib(read) << " | " << fixed(tok_s, 1) << " | " << fixed(tok_s / first_tok_s, 2) << " | " << fixed(bound, 1)
          << " | " << fixed(100 * tok_s / bound, 1) << "% | " << fixed(prefill, 3) << " |\n";
      std::cout << name << " (" << config.num_hidden_layers() << " layers) " << kind << ": " << fixed(tok_s, 1)
                << " tok/s, " << mib(read) << " MiB read per step, bound " << fixed(bound, 1) << " tok/s at "
                << fixed(probe / 1e9, 2) << " GB/s\n";
    }
  }

  std::ostringstream cmd;
  for (int i = 0; i < argc; ++i) cmd << (i ? " " : "") << argv[i];
  const json doc = {{"machine", edkm::bench::machine_name()},
                    {"command", cmd.str()},
                    {"threads", at::get_num_threads()},
                    {"device", device_name},
                    {"lut_kernel_isa", isa},
                    {"copy_bandwidth_bytes_per_s", bandwidth},
                    {"gemv", gemv},
                    {"decode", decode},
                    {"random_decode", random_decode}};
  edkm::write_text_file(out + ".json", doc.dump(2) + "\n");
  std::ostringstream full;
  full << "# Palettized weights run packed: LUT-GEMV and decode\n\nMachine: " << edkm::bench::machine_name() << ", "
       << (g_cuda ? std::string("GPU") : std::to_string(at::get_num_threads()) + " threads") << ", LUT kernels " << isa
       << ". Command: `" << cmd.str() << "`\n\nCopy probe: bytes read + written per second, "
       << (g_cuda ? "1 GiB buffers, device to device" : "256 MiB buffers") << "; " << fixed(bandwidth / 1e9, 2)
       << " GB/s at the start, and again before each shape's GEMVs and each decode row (its row's figure, which its % "
          "uses). GEMV bytes = "
          "packed indices + LUTs + x + y; batch 1; the median of repeated calls, each on the "
          "next of enough copies of the weight (packed or dense) to fill "
       << (g_cuda ? "1 GiB" : "256 MiB")
       << ", as a model's decode reads every weight once per token: no weight stays in the caches between calls"
       << (g_cuda
               ? "; on the GPU each repetition is " + std::to_string(kCudaBatch) +
                     " calls and one synchronisation, fp16 / bf16 / fp32 are LibTorch's cuBLAS GEMV on the dense weight"
               : std::string())
       << ".\n\n";
  if (!gemv.empty()) full << md.str();
  if (!decodes.empty())
    full << "\n## Decode (batch 1, greedy, KV cache" << (g_cuda ? ", on the GPU" : "") << ")\n\nPrefill of "
         << prompt_tokens << " tokens, then " << decode_tokens
         << " decode steps timed after one untimed step; resident weight memory = what the runtime holds (packed "
            "indices + "
         << "LUTs + dense norms for the packed rows).\n\n"
         << dmd.str();
  if (!random_models.empty())
    full << "\n## Decode of models with random weights (batch 1, greedy, KV cache)\n\n"
         << "LlamaRuntime::random: the model's shapes, weights drawn at random (norms 1), packed at each --bits "
         << "(embedding and head too) or dense. Prefill of " << prompt_tokens << " tokens, then " << decode_tokens
         << " one-token steps timed after one untimed step (where a CUDA graph is captured), each ending with its "
            "argmax read back"
         << (g_cuda ? " (a device synchronisation)" : "")
         << ". Bytes read per step = the weights but an untied embedding; bound = the copy probe measured before "
         << "the row (bytes read + written per second) / those bytes; the KV cache and activations are not "
         << "counted. x first row = tokens/s over the model's first row.\n\n"
         << rmd.str();
  edkm::write_text_file(out + ".md", full.str());
  if (!gemv.empty()) chart.save(out + ".svg");
  std::cout << "wrote " << out << ".json, .md" << (gemv.empty() ? "" : ", .svg") << "\n";
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_lut_inference");
}
