// Kernel benchmarks (Google Benchmark): the table engine's kernels (65,536-bin histogram, gather,
// scatter-add, backward) and the streaming engine's passes, each as achieved memory bandwidth and
// as a fraction of the machine's memory bandwidth measured in the same run (copy and triad probes
// over arrays far larger than the caches, run first).
//
//   edkm_bench_kernels [--quick] [--out benchmarks/results/kernels_cpu] [--benchmark_* flags]
//
// The table kernels are internal (src/kernels/, hidden visibility): this program calls them
// directly through src/kernels/table_math.h (linked from the static library, or compiled in when
// edkm is a shared library). The streaming passes run through the public engine
// (edkm::functional::dkm_cluster with Engine::kStreaming): forward = T statistics passes + one
// output pass, backward = one gamma pass + (T - 1) reduction passes + one input-gradient pass;
// their bytes are the minimum those passes move (every pass reads the weight, the backward
// passes the upstream gradient too, the output passes write one weight-sized array). The passes
// evaluate K exponentials per weight and are compute-bound: their fraction is expected to be small.
// On CPU the passes also run one by one (stream_pass/*: the kernel alone on fp32 weights, the
// vectorised path) against an exp probe (probe/exp: the vector exp those passes use, in L1): their
// fraction of the exp bound is K exps per weight at that rate over the pass's time.
//
// --device cuda runs the same kernels on the GPU instead (the CUDA twins of the table kernels,
// the engines through the public API), against a device-to-device copy probe of HBM bandwidth.
// Each timed iteration launches kCudaRepeats times and then synchronises, so that launch and
// synchronisation latency do not hide the kernels' own time.
//
// Writes OUT.json (rows: kernel, shape, seconds, bytes/s, fraction), OUT.md and OUT.svg.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <edkm/edkm.h>
#include <torch/cuda.h>

#include <cstring>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench_util.h"
#include "kernels/cpu/stream_isa.h"
#include "kernels/stream_math.h"
#include "kernels/table_math.h"
#include "svg_chart.h"

namespace {

namespace k = edkm::kernels;

double g_bandwidth = 0;                     // bytes/s: the best probe so far
double g_exp_rate = 0;                      // exps/s of the streaming passes' vector exp (CPU probe)
int64_t g_rows = 11008, g_cols = 4096;      // table kernels' weight shape
int64_t g_stream_rows = 1024;               // streaming passes' weight rows (x g_cols)
constexpr int64_t kProbeFloats = 64 << 20;  // 256 MiB per probe array
bool g_cuda = false;                        // --device cuda
constexpr int kCudaRepeats = 10;            // launches per timed iteration on the GPU

/// Launches `f` (kCudaRepeats times on the GPU, then waits for the device); returns the launches.
template <class F>
int run_kernel(F&& f) {
  if (!g_cuda) {
    f();
    return 1;
  }
  for (int i = 0; i < kCudaRepeats; ++i) f();
  torch::cuda::synchronize();
  return kCudaRepeats;
}

// The CUDA twins exist only in a CUDA build; elsewhere their launch lambdas are never called.
#if defined(EDKM_WITH_CUDA)
#define CUDA_ONLY(call) (call)
#else
#define CUDA_ONLY(call) 0
#endif

at::TensorOptions device_options() { return at::TensorOptions().device(g_cuda ? at::kCUDA : at::kCPU); }

void set_bandwidth_counters(benchmark::State& state, double bytes_per_launch) {
  const double bytes_per_iteration = bytes_per_launch * (g_cuda ? kCudaRepeats : 1);
  state.SetBytesProcessed(static_cast<int64_t>(bytes_per_iteration) * state.iterations());
  if (g_bandwidth > 0)
    state.counters["bw_fraction"] =
        benchmark::Counter(bytes_per_iteration * state.iterations() / g_bandwidth, benchmark::Counter::kIsRate);
}

// --- bandwidth probes ------------------------------------------------------------------------

void BM_Probe_Copy(benchmark::State& state) {
  if (g_cuda) {  // device to device, as a GPU kernel streams HBM
    auto a = at::rand({kProbeFloats}, device_options()), b = at::empty_like(a);
    for (auto _ : state) run_kernel([&] { b.copy_(a); });
    const double bytes = 2.0 * kProbeFloats * sizeof(float) * kCudaRepeats;  // read + write
    state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
    return;
  }
  auto a = at::rand({kProbeFloats}), b = at::empty_like(a);
  const float* src = a.data_ptr<float>();
  float* dst = b.data_ptr<float>();
  for (auto _ : state) {
    at::parallel_for(0, kProbeFloats, 1 << 20, [&](int64_t lo, int64_t hi) {
      std::memcpy(dst + lo, src + lo, static_cast<size_t>(hi - lo) * sizeof(float));
    });
    benchmark::ClobberMemory();
  }
  const double bytes = 2.0 * kProbeFloats * sizeof(float);  // read + write
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}

void BM_Probe_Triad(benchmark::State& state) {
  if (g_cuda) {  // a = b + 3 c through ATen's fused elementwise kernel
    auto a = at::empty({kProbeFloats}, device_options()), b = at::rand({kProbeFloats}, device_options()),
         c = at::rand({kProbeFloats}, device_options());
    for (auto _ : state) run_kernel([&] { at::add_out(a, b, c, 3.0); });
    const double bytes = 3.0 * kProbeFloats * sizeof(float) * kCudaRepeats;  // two reads + one write
    state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
    return;
  }
  auto a = at::empty({kProbeFloats}), b = at::rand({kProbeFloats}), c = at::rand({kProbeFloats});
  float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>(), *pc = c.data_ptr<float>();
  for (auto _ : state) {
    at::parallel_for(0, kProbeFloats, 1 << 20, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    });
    benchmark::ClobberMemory();
  }
  const double bytes = 3.0 * kProbeFloats * sizeof(float);  // two reads + one write
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}

// --- table engine kernels (internal) -----------------------------------------------------------

struct TableInputs {
  at::Tensor w, grad, out, table, slope, shift, counts, sums;
  k::TableParams p;
  TableInputs() {
    at::manual_seed(0);
    const auto o = device_options();
    w = (at::randn({g_rows, g_cols}) * 0.02).to(at::kBFloat16).to(o.device());
    grad = at::randn({g_rows, g_cols}).to(at::kBFloat16).to(o.device());
    out = at::empty_like(w);
    table = at::randn({k::kTableSize}, o);
    slope = at::randn({k::kTableSize}, o);
    shift = at::randn({k::kTableSize}, o);
    counts = at::empty({k::kTableSize}, o.dtype(at::kLong));
    sums = at::empty({k::kTableSize}, o.dtype(at::kDouble));
    p.weight = w.data_ptr();
    p.n = w.numel();
    p.dtype = k::DType::kBF16;
  }
  double n() const { return static_cast<double>(p.n); }
};

/// Runs the CPU kernel, or its CUDA twin on the default stream (failing the benchmark on a CUDA error).
template <class Cpu, class Cuda>
void launch(benchmark::State& state, Cpu&& cpu, Cuda&& cuda) {
#if defined(EDKM_WITH_CUDA)
  if (g_cuda) {
    int err = 0;
    run_kernel([&] { err = err ? err : cuda(); });
    if (err) state.SkipWithError(("CUDA error " + std::to_string(err)).c_str());
    return;
  }
#else
  (void)cuda;
  if (g_cuda) {
    state.SkipWithError("edkm was built without its CUDA kernels");
    return;
  }
#endif
  cpu();
}

void BM_Table_Histogram(benchmark::State& state) {
  TableInputs in;
  for (auto _ : state) {
    launch(
        state, [&] { k::table_histogram_cpu(in.p, in.counts.data_ptr<int64_t>()); },
        [&] { return CUDA_ONLY(k::table_histogram_cuda(in.p, in.counts.data_ptr<int64_t>(), nullptr)); });
    benchmark::DoNotOptimize(in.counts.data_ptr<int64_t>());
  }
  set_bandwidth_counters(state, 2 * in.n());  // reads the weight
}

void BM_Table_Gather(benchmark::State& state) {
  TableInputs in;
  for (auto _ : state) {
    launch(
        state, [&] { k::table_gather_cpu(in.p, in.table.data_ptr<float>(), in.out.data_ptr()); },
        [&] { return CUDA_ONLY(k::table_gather_cuda(in.p, in.table.data_ptr<float>(), in.out.data_ptr(), nullptr)); });
    benchmark::ClobberMemory();
  }
  set_bandwidth_counters(state, 4 * in.n());  // reads the weight, writes W_soft
}

void BM_Table_ScatterAdd(benchmark::State& state) {
  TableInputs in;
  for (auto _ : state) {
    launch(
        state, [&] { k::table_scatter_add_cpu(in.p, in.grad.data_ptr(), in.sums.data_ptr<double>()); },
        [&] {
          return CUDA_ONLY(k::table_scatter_add_cuda(in.p, in.grad.data_ptr(), in.sums.data_ptr<double>(), nullptr));
        });
    benchmark::DoNotOptimize(in.sums.data_ptr<double>());
  }
  set_bandwidth_counters(state, 4 * in.n());  // reads the weight and the gradient
}

void BM_Table_Backward(benchmark::State& state) {
  TableInputs in;
  for (auto _ : state) {
    launch(
        state,
        [&] {
          k::table_backward_cpu(in.p, in.grad.data_ptr(), in.slope.data_ptr<float>(), in.shift.data_ptr<float>(),
                                in.out.data_ptr());
        },
        [&] {
          return CUDA_ONLY(k::table_backward_cuda(in.p, in.grad.data_ptr(), in.slope.data_ptr<float>(),
                                                  in.shift.data_ptr<float>(), in.out.data_ptr(), nullptr));
        });
    benchmark::ClobberMemory();
  }
  set_bandwidth_counters(state, 6 * in.n());  // reads weight and gradient, writes dL/dw
}

// --- engines through the public API ------------------------------------------------------------

edkm::DKMOptions engine_options(edkm::Engine e) {
  return edkm::DKMOptions(3).epsilon(0).engine(e);  // every iteration runs
}

/// Times forward+backward of `engine` on a seeded rows x g_cols bf16 weight; returns N.
double time_forward_backward(benchmark::State& state, edkm::Engine engine, int64_t rows) {
  at::manual_seed(0);
  const auto opts = engine_options(engine);
  auto w = (at::randn({rows, g_cols}) * 0.02).to(at::kBFloat16).to(device_options().device());
  auto grad = at::randn({rows, g_cols}).to(at::kBFloat16).to(w.device());
  auto c = edkm::functional::init_centroids(w, opts);
  for (auto _ : state) {
    run_kernel([&] {
      auto wr = w.detach().requires_grad_(true);
      edkm::functional::dkm_cluster(wr, c, opts).weight.backward(grad);
      benchmark::DoNotOptimize(wr.grad().data_ptr());
    });
  }
  return static_cast<double>(w.numel());
}

void BM_TableEngine_ForwardBackward(benchmark::State& state) {
  const double n = time_forward_backward(state, edkm::Engine::kTable, g_rows);
  // histogram + gather forward (2 + 4 bytes / weight), scatter-add + backward (4 + 6)
  set_bandwidth_counters(state, 16.0 * n);
}

void set_weight_rate(benchmark::State& state, double n) {
  state.counters["weights_per_s"] =
      benchmark::Counter(n * state.iterations() * (g_cuda ? kCudaRepeats : 1), benchmark::Counter::kIsRate);
}

void BM_Streaming_Forward(benchmark::State& state) {
  at::manual_seed(0);
  const auto opts = engine_options(edkm::Engine::kStreaming);
  auto w = (at::randn({g_stream_rows, g_cols}) * 0.02).to(at::kBFloat16).to(device_options().device());
  auto c = edkm::functional::init_centroids(w, opts);
  for (auto _ : state) {
    run_kernel([&] {
      auto y = edkm::functional::dkm_cluster(w, c, opts).weight;
      benchmark::DoNotOptimize(y.data_ptr());
    });
  }
  const double es = 2, n = static_cast<double>(w.numel()), T = static_cast<double>(opts.max_iter());
  set_bandwidth_counters(state, (T + 1) * n * es + n * es);  // T stats + 1 output pass read w; output writes
  set_weight_rate(state, n);
}

void BM_Streaming_ForwardBackward(benchmark::State& state) {
  const double n = time_forward_backward(state, edkm::Engine::kStreaming, g_stream_rows);
  const double es = 2, T = static_cast<double>(engine_options(edkm::Engine::kStreaming).max_iter());
  // forward: (T + 1) reads + 1 write; backward: (1 + (T - 1) + 1) passes reading w and g + 1 write
  set_bandwidth_counters(state, ((T + 1) * n + n + (T + 1) * 2 * n + n) * es);
  set_weight_rate(state, n);
}

// --- the streaming passes one by one (CPU, fp32, cluster_dim 1: the vectorised path) -----------

/// exps per second of the vector exp the streaming passes use (kernels/cpu/vec_exp.h), on a buffer
/// that stays in L1: the compute bound of a pass is K exps per weight at this rate.
/// Every thread of the passes runs its own buffer (the passes' parallel_for), 64 times per call.
void BM_Probe_Exp(benchmark::State& state) {
  constexpr int64_t kFloats = 4096, kRepeats = 64;
  const int64_t threads = at::get_num_threads();
  std::vector<float> in(static_cast<size_t>(kFloats * threads)), out(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = -0.01f * static_cast<float>(i % 1000);
  for (auto _ : state) {
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        for (int64_t r = 0; r < kRepeats; ++r)
          k::stream_exp(k::stream_isa(), false, in.data() + t * kFloats, out.data() + t * kFloats, kFloats);
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["exps_per_s"] =
      benchmark::Counter(static_cast<double>(kFloats * kRepeats * threads) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

/// One pass of the streaming engine over g_stream_rows x g_cols fp32 weights (std 0.02, 3 bits,
/// 3 iterations), on centroids at the weight's quantiles: the kernel alone (stream_pass_cpu), no
/// autograd or allocation around it.
struct StreamInputs {
  static constexpr int kK = 8, kT = 3;
  at::Tensor x, g, out, c_hist, inv_s, gamma, partials, iters;
  k::StreamParams p;
  StreamInputs() {
    at::manual_seed(0);
    x = at::randn({g_stream_rows * g_cols}) * 0.02;
    g = at::randn_like(x) * 1e-3;
    out = at::zeros_like(x);
    const auto q = at::linspace(0.5 / kK, 1 - 0.5 / kK, kK, x.options());
    const auto c = at::quantile(x.narrow(0, 0, std::min<int64_t>(x.numel(), 1 << 20)), q);
    c_hist = c.repeat({kT + 1});
    inv_s = at::full({kT * kK}, static_cast<double>(kK) / static_cast<double>(x.numel()), x.options());
    gamma = at::linspace(1e-3, 8e-3, (kT + 1) * kK, x.options());
    iters = at::full({1}, kT, at::TensorOptions().dtype(at::kInt));
    p.x = x.data_ptr();
    p.grad = g.data_ptr();
    p.out = out.data_ptr();
    p.kind = k::DType::kF32;
    p.groups = 1;
    p.n = x.numel();
    p.d = 1;
    p.k = kK;
    p.width = 2 * kK + 1;
    p.chunk = k::stream_chunk(p.n, 1, p.width, 4 * at::get_num_threads());
    p.chunks = (p.n + p.chunk - 1) / p.chunk;
    p.max_iter = kT;
    p.iters = iters.data_ptr<int32_t>();
    p.c_hist = c_hist.data_ptr();
    p.inv_s_hist = inv_s.data_ptr();
    p.gamma_hist = gamma.data_ptr();
    partials = at::zeros({p.chunks, p.width}, at::TensorOptions().dtype(at::kDouble));
    p.partials = partials.data_ptr<double>();
  }
};

/// bytes: the minimum the pass moves (x 4 bytes per weight read, g read, out read and/or written).
void run_stream_pass(benchmark::State& state, k::StreamPass pass, int level, bool fused, double bytes_per_weight) {
  StreamInputs in;
  in.p.pass = pass;
  in.p.level = level;
  in.p.grad_levels = fused ? 1 : 1 << 30;
  in.p.accumulate = fused;
  for (auto _ : state) {
    k::stream_pass_cpu(in.p);
    benchmark::ClobberMemory();
  }
  const double n = static_cast<double>(in.p.n);
  set_bandwidth_counters(state, bytes_per_weight * n);
  set_weight_rate(state, n);
  state.counters["exp_fraction"] =  // the K exps per weight at the probe's rate, over the time taken
      benchmark::Counter(g_exp_rate > 0 ? StreamInputs::kK * n * state.iterations() / g_exp_rate : 0.0,
                         benchmark::Counter::kIsRate);
}
void BM_Pass_Stats(benchmark::State& s) { run_stream_pass(s, k::StreamPass::kStats, 1, false, 4); }
void BM_Pass_Output(benchmark::State& s) { run_stream_pass(s, k::StreamPass::kOutput, 0, false, 8); }
void BM_Pass_GammaLast(benchmark::State& s) { run_stream_pass(s, k::StreamPass::kGammaLast, 0, false, 8); }
void BM_Pass_Reduce(benchmark::State& s) { run_stream_pass(s, k::StreamPass::kReduce, 1, true, 16); }
void BM_Pass_GradInput(benchmark::State& s) { run_stream_pass(s, k::StreamPass::kGradInput, 0, true, 16); }

/// Console output as usual, and every run kept for the JSON / Markdown / SVG.
class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  std::vector<Run> runs;
  void ReportRuns(const std::vector<Run>& report) override {
    for (const auto& r : report)
      if (!r.error_occurred && r.run_type == Run::RT_Iteration) runs.push_back(r);
    ConsoleReporter::ReportRuns(report);
  }
};

double counter(const benchmark::BenchmarkReporter::Run& r, const std::string& name) {
  auto it = r.counters.find(name);
  return it == r.counters.end() ? 0.0 : it->second.value;
}

}  // namespace

int main(int argc, char** argv) try {
  // Our flags first (Google Benchmark rejects unknown ones).
  std::string out = "benchmarks/results/kernels_cpu";
  bool quick = false;
  std::string device = "cpu";
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--device" && i + 1 < argc)
      device = argv[++i];
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else
      rest.push_back(argv[i]);
  }
  if (device == "cuda") {
    if (!torch::cuda::is_available()) {
      std::cerr << "edkm_bench_kernels: --device cuda, but no CUDA device is available\n";
      return 77;
    }
    g_cuda = true;
    g_stream_rows = 4096;  // the GPU runs the full LLaMA-7B shapes even with --quick
  } else if (device != "cpu") {
    std::cerr << "edkm_bench_kernels: --device must be cpu or cuda, got '" << device << "'\n";
    return 2;
  } else if (quick) {
    g_rows = 4096, g_stream_rows = 128;
  }
  const double min_time = quick ? 0.2 : 1.0;
  const std::string shape = std::to_string(g_rows) + "x" + std::to_string(g_cols);
  const std::string sshape = std::to_string(g_stream_rows) + "x" + std::to_string(g_cols);

  // Registration order is run order: the probes first, so the kernels see the bandwidth.
  std::vector<std::pair<std::string, std::string>> what;  // name -> shape
  auto add = [&](const std::string& name, void (*fn)(benchmark::State&), const std::string& shp, double mt) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->MinTime(mt)->UseRealTime()->Unit(benchmark::kMillisecond);
    what.emplace_back(name, shp);
  };
  const std::string pshape = std::to_string(kProbeFloats >> 20) + "M floats";
  add("probe/copy", BM_Probe_Copy, pshape, min_time);
  add("probe/triad", BM_Probe_Triad, pshape, min_time);
  add("table/histogram", BM_Table_Histogram, shape + " bf16", min_time);
  add("table/gather", BM_Table_Gather, shape + " bf16", min_time);
  add("table/scatter_add", BM_Table_ScatterAdd, shape + " bf16", min_time);
  add("table/backward", BM_Table_Backward, shape + " bf16", min_time);
  add("table_engine/forward_backward", BM_TableEngine_ForwardBackward, shape + " bf16 3-bit", min_time);
  add("streaming/forward", BM_Streaming_Forward, sshape + " bf16 3-bit", min_time);
  add("streaming/forward_backward", BM_Streaming_ForwardBackward, sshape + " bf16 3-bit", min_time);
  // The passes one by one, on the vectorised CPU path (fp32 weights), against the exp probe.
  const bool passes = !g_cuda && k::stream_isa() != k::StreamIsa::kScalar;
  if (passes) {
    add("probe/exp", BM_Probe_Exp, "4096 floats per thread, in L1 (" + k::to_string(k::stream_isa()) + ")", min_time);
    for (const auto& [name, fn] :
         std::vector<std::pair<std::string, void (*)(benchmark::State&)>>{{"stream_pass/statistics", BM_Pass_Stats},
                                                                          {"stream_pass/output", BM_Pass_Output},
                                                                          {"stream_pass/gamma_last", BM_Pass_GammaLast},
                                                                          {"stream_pass/reduce_fused", BM_Pass_Reduce},
                                                                          {"stream_pass/gradient", BM_Pass_GradInput}})
      add(name, fn, sshape + " fp32 3-bit", min_time);
  }

  int bargc = static_cast<int>(rest.size());
  benchmark::Initialize(&bargc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, rest.data())) return 2;

  // The probes run in their own pass so that the kernels' fraction counters have the bandwidth.
  CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter, "^probe/");
  for (const auto& r : reporter.runs) g_bandwidth = std::max(g_bandwidth, counter(r, "bytes_per_second"));
  for (const auto& r : reporter.runs) g_exp_rate = std::max(g_exp_rate, counter(r, "exps_per_s"));
  std::cerr << "measured memory bandwidth: " << g_bandwidth / 1e9 << " GB/s (best probe)\n";
  benchmark::RunSpecifiedBenchmarks(&reporter, "^(table|table_engine|streaming|stream_pass)/");
  benchmark::Shutdown();
  // --benchmark_list_tests, or a filter that matched no kernel: nothing measured, nothing written
  // (an empty table would replace the results file).
  bool measured = false;
  for (const auto& r : reporter.runs) measured = measured || r.benchmark_name().rfind("probe/", 0) != 0;
  if (!measured) {
    std::cerr << "edkm_bench_kernels: no kernel was measured; " << out << ".* left as it was\n";
    return 0;
  }
  edkm::bench::make_out_dir(out);

  const std::string machine = edkm::bench::machine_name();
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : reporter.runs) {
    const std::string name = r.benchmark_name();
    std::string shp, kernel = name;
    for (const auto& [n, s] : what)
      if (name.rfind(n + "/", 0) == 0 || name == n) shp = s, kernel = n;  // drop "/min_time:.../real_time"
    const double bps = counter(r, "bytes_per_second");
    rows.push_back({{"kernel", kernel},
                    {"shape", shp},
                    {"seconds", r.GetAdjustedRealTime() / 1e3},  // the unit is ms
                    {"iterations", r.iterations},
                    {"bytes_per_second", bps},
                    {"bandwidth_fraction", g_bandwidth > 0 ? bps / g_bandwidth : 0.0},
                    {"weights_per_second", counter(r, "weights_per_s")},
                    {"exps_per_second", counter(r, "exps_per_s")},
                    {"exp_bound_fraction", counter(r, "exp_fraction")}});
  }
  std::ostringstream cmd;
  for (int i = 0; i < argc; ++i) cmd << (i ? " " : "") << argv[i];
  nlohmann::json doc = {{"benchmark", "kernels"},
                        {"machine", machine},
                        {"device", device},
                        {"command", cmd.str()},
                        {"threads", at::get_num_threads()},
                        {"bandwidth_bytes_per_second", g_bandwidth},
                        {"exps_per_second", g_exp_rate},
                        {"rows", rows}};
  edkm::write_text_file(out + ".json", doc.dump(2) + "\n");

  std::ostringstream md;
  md << "# Kernel benchmarks (" << (g_cuda ? "CUDA" : "CPU") << ")\n\nMachine: " << machine << ", ";
  if (g_cuda)
    md << "kernels on the GPU, " << kCudaRepeats << " launches per synchronisation";
  else
    md << at::get_num_threads() << " thread(s)";
  md << ". Command: `" << cmd.str()
     << "`. Memory bandwidth measured in the same run (best of the copy / triad probes): " << std::fixed
     << std::setprecision(2) << g_bandwidth / 1e9 << " GB/s.";
  if (g_exp_rate > 0)
    md << " Vector exp of the streaming passes (probe/exp, in L1): " << std::setprecision(2) << g_exp_rate / 1e9
       << " G exps/s; a pass's compute bound is K = 8 exps per weight at that rate.";
  md << "\n\n| kernel | shape | time ms | GB/s | fraction of bandwidth | Mweights/s | fraction of exp bound "
        "|\n|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    md << "| " << r["kernel"].get<std::string>() << " | " << r["shape"].get<std::string>() << " | "
       << std::setprecision(3) << r["seconds"].get<double>() * 1e3 << " | ";
    if (r["bytes_per_second"].get<double>() > 0)
      md << std::setprecision(2) << r["bytes_per_second"].get<double>() / 1e9 << " | " << std::setprecision(1)
         << 100 * r["bandwidth_fraction"].get<double>() << "% | ";
    else
      md << "- | - | ";
    const double wps = r["weights_per_second"].get<double>(), ef = r["exp_bound_fraction"].get<double>();
    if (wps > 0)
      md << std::setprecision(2) << wps / 1e6;
    else
      md << "-";
    md << " | ";
    if (ef > 0)
      md << std::setprecision(1) << 100 * ef << "%";
    else
      md << "-";
    md << " |\n";
  }
  md << "\nBytes are the minimum each kernel must move (see benchmarks/kernels.cpp); the streaming passes are "
        "compute-bound (K exponentials per weight per pass): `stream_pass/*` times each pass alone on fp32 "
        "weights, and its fraction of the exp bound is the time K exps per weight take at probe/exp's rate over "
        "the pass's time (the rest is the distances, the softmax and the fp64 reductions).\n";
  edkm::write_text_file(out + ".md", md.str());
  std::cout << md.str();

  edkm::bench::BarChart chart;
  chart.title = "Kernels: achieved bandwidth as % of the measured memory bandwidth";
  chart.machine = machine;
  chart.y_label = "% of measured bandwidth";
  edkm::bench::BarSeries s{"% of bandwidth", {}};
  for (const auto& r : rows) {
    chart.categories.push_back(r["kernel"].get<std::string>());
    s.values.push_back(100 * r["bandwidth_fraction"].get<double>());
  }
  chart.series.push_back(s);
  chart.save(out + ".svg");
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_kernels");
}
