// eDKM's memory ablation on a LLaMA-7B decoder layer: one DKM forward+backward per weight matrix
// (q, k, v, o 4096x4096; gate, up 11008x4096; down 4096x11008) at 3 bits, per configuration.
//
//   edkm_bench_ablation --device cpu --out benchmarks/results/ablation_cpu           # full shapes
//   edkm_bench_ablation --quick --out benchmarks/results/quick/ablation_cpu          # shapes / 8
//   torchrun --standalone --no-python --nproc-per-node 4 edkm_bench_ablation --quick ...  # + sharded rows
//
// Columns: peak device memory, peak host memory, device<->host traffic, step time, and the ratios
// to the dense row. The matrices run one at a time, so the layer's peak is the maximum over its
// matrices and its time the sum. Writes OUT.json, OUT.md and OUT.svg.
//
// Device and host on a CPU-only machine: everything is host memory there; the offloader runs in
// host-to-host mode and the "device" role is played by LibTorch's CPU allocator (what
// edkm::MemoryMeter counts), the "host" role by the offloader's host buffers (its statistics).
//
// Rows are entries of `configurations()`: dense, +marshaling, +uniquification, +sharding, eDKM
// combined, table, streaming. The sharded rows (+sharding, eDKM combined: dist::ShardedOffloader)
// need a world of several ranks: under torchrun (WORLD_SIZE > 1) rank 0 runs every row and writes
// the outputs, the other ranks run only the sharded rows with it in lockstep (the same seeded
// inputs, warm-up and repeats); a sharded row's figures are per rank, the maximum over the ranks.
// Without torchrun those rows are listed as "needs torchrun", not measured.
//
// For the peers comparison (benchmarks/peers/) the program can read its inputs from a
// safetensors file (`--inputs`: <matrix>.weight, <matrix>.centroids, <matrix>.grad) and write
// W_soft and dL/dW (`--save-output`); every row also records the process's VmRSS before its first
// step and VmHWM after its last, which are meaningful when one process runs one row.
#include <ATen/ATen.h>
#include <edkm/distributed/distributed.h>
#include <edkm/edkm.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "bench_util.h"
#include "svg_chart.h"

using edkm::bench::measured_dkm_step;
using edkm::bench::parse_shape;
using edkm::bench::split;

namespace {

struct Matrix {
  std::string name;
  int64_t rows, cols;
};

/// The seven weight matrices of a LLaMA-7B decoder layer.
const std::vector<Matrix> kLlama7BLayer = {
    {"q_proj", 4096, 4096},     {"k_proj", 4096, 4096},   {"v_proj", 4096, 4096},    {"o_proj", 4096, 4096},
    {"gate_proj", 11008, 4096}, {"up_proj", 11008, 4096}, {"down_proj", 4096, 11008}};

/// What one configuration is given: the weight, initial centroids, upstream gradient, options.
struct StepInput {
  at::Tensor weight, centroids, grad;  // weight and grad on the device; centroids G x K x 1
  edkm::DKMOptions options;
  at::Device device = at::kCPU;
  int64_t min_bytes = int64_t{1} << 20;      // offloader threshold
  std::shared_ptr<edkm::Communicator> comm;  // the sharded rows' world (null: not under torchrun)
};

/// One forward+backward, measured.
struct Measurement {
  int64_t device_peak = 0;             // bytes: the step's peak + the weight and upstream gradient held outside it
  int64_t host_peak = 0;               // bytes in host buffers at most (offloading rows)
  int64_t traffic = 0;                 // bytes device -> host + host -> device
  double seconds = 0;                  // wall time of the step
  bool host_in_device_figure = false;  // host buffers were allocated by the allocator the device figure counts
  at::Tensor soft, dweight;            // W_soft and dL/dW (kept for --save-output)
};

/// How a row keeps what autograd saves.
enum class Saved {
  kKept,         // as autograd keeps it
  kOffload,      // edkm::Offloader (host-to-host on a CPU)
  kUniquify,     // edkm::Offloader with uniquify
  kShard,        // dist::ShardedOffloader over the torchrun world, blocks on the host
  kShardUnique,  // dist::ShardedOffloader with uniquify (eDKM combined)
};

Measurement run_step(const StepInput& in, edkm::Engine engine, Saved saved = Saved::kKept, bool index_list = false) {
  auto opts = in.options;
  opts.engine(engine).table_fp32_as_bf16(engine == edkm::Engine::kTable);  // fp32: the table clusters the bf16 rounding
  opts.table_index_list(index_list);
  std::shared_ptr<edkm::Offloader> off;
  std::shared_ptr<edkm::dist::ShardedOffloader> shard;
  std::shared_ptr<edkm::SavedTensorHooks> hooks;
  if (saved == Saved::kOffload || saved == Saved::kUniquify)
    hooks = off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions()
                                                        .min_bytes(in.min_bytes)
                                                        .host_to_host(in.device.is_cpu())
                                                        .uniquify(saved == Saved::kUniquify));
  if (saved == Saved::kShard || saved == Saved::kShardUnique) {
    TORCH_CHECK(in.comm, "a sharded row needs the torchrun world");
    hooks = shard =
        std::make_shared<edkm::dist::ShardedOffloader>(in.comm, edkm::dist::ShardedOffloadOptions()
                                                                    .min_bytes(in.min_bytes)
                                                                    .to_host(true)
                                                                    .uniquify(saved == Saved::kShardUnique));
    in.comm->barrier();  // every rank starts the step together
  }
  const int64_t outside = 2 * in.weight.numel() * in.weight.element_size();  // the weight and the upstream gradient
  const auto step = measured_dkm_step(in.weight, in.centroids, opts, in.grad, hooks);
  Measurement m;
  m.seconds = step.seconds;
  m.device_peak = (in.device.is_cuda() ? step.memory.cuda : step.memory.cpu).peak_delta() + outside;
  m.soft = step.soft;
  m.dweight = step.weight.grad();
  if (off) {
    const auto st = off->stats();
    m.host_peak = st.kept_bytes_peak;
    m.traffic = st.bytes_stored + st.bytes_restored;
    if (in.device.is_cpu()) {
      // Are the host buffers counted by the CPU allocator meter? Free the pool and look.
      const int64_t cached = off->stats().pool_cached_bytes, before = edkm::cpu_bytes_in_use();
      off->empty_pool();
      m.host_in_device_figure = cached > 0 && before - edkm::cpu_bytes_in_use() >= cached;
    }
  }
  if (shard) {
    // Per rank: the kept blocks (host pool: not counted by the device-role figure), what pack
    // copied into them plus what unpack's all-gathers returned. Max over the ranks.
    const auto st = shard->stats();
    auto mine = at::tensor(std::vector<int64_t>{m.device_peak, st.kept_bytes_peak, st.bytes_stored + st.bytes_restored,
                                                static_cast<int64_t>(m.seconds * 1e9)},
                           at::kLong);
    const auto all = in.comm->all_gather(mine).view({-1, 4}).amax(0);
    m.device_peak = all[0].item<int64_t>();
    m.host_peak = all[1].item<int64_t>();
    m.traffic = all[2].item<int64_t>();
    m.seconds = static_cast<double>(all[3].item<int64_t>()) * 1e-9;
  }
  return m;
}

/// One row of the ablation table.
struct Configuration {
  std::string name;      // as in the table (sharded rows: " (N ranks)" is added)
  std::string what;      // one line: what it does
  bool sharded = false;  // runs on every rank of the torchrun world
  std::function<Measurement(const StepInput&)> step;
};

/// The rows, in table order (eDKM's ablation, then edkm's engines). Extension point.
std::vector<Configuration> configurations() {
  using edkm::Engine;
  return {
      {"dense", "plain autograd over N x K maps (the reference)", false,
       [](const StepInput& in) { return run_step(in, Engine::kDense); }},
      {"+marshaling", "dense under edkm::Offloader: saved tensors to host, de-duplicated by storage", false,
       [](const StepInput& in) { return run_step(in, Engine::kDense, Saved::kOffload); }},
      {"+uniquification", "+marshaling with uniquify: repeated rows stored once + a 16-bit index list", false,
       [](const StepInput& in) { return run_step(in, Engine::kDense, Saved::kUniquify); }},
      {"+sharding", "dense under dist::ShardedOffloader: each rank keeps 1/world of every saved storage", true,
       [](const StepInput& in) { return run_step(in, Engine::kDense, Saved::kShard); }},
      {"eDKM combined", "ShardedOffloader with uniquify: distinct rows on every rank, the index list split", true,
       [](const StepInput& in) { return run_step(in, Engine::kDense, Saved::kShardUnique); }},
      {"table + index list",
       "the paper's uniquification: attention table over the distinct values + a 16-bit index "
       "per weight, saved for backward (table engine, table_index_list)",
       false, [](const StepInput& in) { return run_step(in, Engine::kTable, Saved::kKept, true); }},
      {"table + index list, marshaled", "the same under edkm::Offloader: the index list moves to host", false,
       [](const StepInput& in) { return run_step(in, Engine::kTable, Saved::kOffload, true); }},
      {"table + index list, sharded",
       "the same under dist::ShardedOffloader: each rank keeps 1/world of the index list", true,
       [](const StepInput& in) { return run_step(in, Engine::kTable, Saved::kShard, true); }},
      {"table", "table engine: 65,536-pattern uniquification, no index list", false,
       [](const StepInput& in) { return run_step(in, Engine::kTable); }},
      {"streaming", "streaming engine: fused passes, backward recomputes from saved centroids", false,
       [](const StepInput& in) { return run_step(in, Engine::kStreaming); }},
  };
}

// Two decimals below 10 MiB.
std::string mib(double bytes) { return edkm::bench::mib(bytes, bytes < 10 * (1 << 20) ? 2 : 1); }

/// "123x" / "inf" for a ratio (dense / config) of memory figures.
std::string times(double dense, double value) {
  if (value <= 0) return dense > 0 ? "inf (0 B)" : "-";
  std::ostringstream f;
  const double r = dense / value;
  f << std::fixed << std::setprecision(r < 10 ? 2 : r < 100 ? 1 : 0) << r << "x";
  return f.str();
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: eDKM memory ablation on a LLaMA-7B decoder layer (forward+backward per weight matrix)"};
  std::string device = "cpu", dtype = "bf16", out = "benchmarks/results/ablation_cpu", matrices, configs, shape, inputs,
              save_output;
  int64_t bits = 3, repeats = 1, scale = 1, min_bytes = int64_t{1} << 20, max_iter = 3;
  bool quick = false, no_warmup = false;
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype, "weight dtype (LLaMA checkpoints are bf16)")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  app.add_option("--bits", bits)->check(CLI::Range(1, 8));
  app.add_option("--max-iter", max_iter, "DKM iterations (all run: epsilon = 0)")->check(CLI::Range(1, 100));
  app.add_option("--matrices", matrices,
                 "comma-separated subset of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                 "down_proj (default: all)");
  app.add_option("--configs", configs, "comma-separated subset of the rows (default: all)");
  app.add_option("--scale", scale, "divide every shape by this (1: the real shapes)")->check(CLI::Range(1, 4096));
  app.add_flag("--quick", quick, "the shapes divided by 8 (unless --scale is given)");
  app.add_option("--shape", shape, "RxC: one matrix of this shape instead of the layer (tests)");
  app.add_option("--repeats", repeats, "timed repetitions (best time, highest peak)")->check(CLI::Range(1, 100));
  app.add_flag("--no-warmup", no_warmup, "no untimed warm-up run before the timed ones");
  app.add_option("--min-bytes", min_bytes, "offloader: saved tensors of at least this many bytes go to host");
  app.add_option("--inputs", inputs, "safetensors with <matrix>.weight / .centroids / .grad (default: seeded)");
  app.add_option("--save-output", save_output, "write <matrix>.<config>.soft / .dweight to this safetensors file");
  app.add_option("--out", out, "output path without extension (.json, .md and .svg are written)");
  CLI11_PARSE(app, argc, argv);
  edkm::bench::make_out_dir(out);
  if (quick && scale == 1) scale = 8;

  // Under torchrun (WORLD_SIZE > 1) the sharded rows run on every rank; rank 0 runs the others
  // alone meanwhile, so the collectives wait long.
  std::shared_ptr<edkm::Communicator> comm;
  const char* world_env = std::getenv("WORLD_SIZE");
  if (world_env && std::atoll(world_env) > 1)
    comm = edkm::dist::init_from_env(edkm::dist::DistOptions().timeout_s(3600));
  const int64_t world = comm ? comm->world_size() : 1;
  const bool lead = !comm || comm->rank() == 0;  // runs every row and writes the outputs

  const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
  const auto st = dtype == "bf16" ? at::kBFloat16 : dtype == "fp16" ? at::kHalf : at::kFloat;
  std::vector<Matrix> layer;
  if (!shape.empty()) {
    const auto s = parse_shape(shape);
    layer.push_back({"matrix", s[0], s[1]});
  } else {
    const auto wanted = split(matrices);
    for (const auto& m : kLlama7BLayer)
      if (matrices.empty() || std::count(wanted.begin(), wanted.end(), m.name))
        layer.push_back({m.name, m.rows / scale, m.cols / scale});
    TORCH_CHECK(!layer.empty(), "--matrices '", matrices, "' names none of the layer's matrices");
  }
  std::vector<Configuration> rows;
  std::vector<std::string> needs_torchrun;  // sharded rows asked for without a world of several ranks
  const auto wanted_configs = split(configs);
  for (auto& c : configurations()) {
    if (!configs.empty() && !std::count(wanted_configs.begin(), wanted_configs.end(), c.name)) continue;
    if (c.sharded && !comm) {
      needs_torchrun.push_back(c.name);
      continue;
    }
    if (c.sharded) c.name += " (" + std::to_string(world) + " ranks)";
    if (lead || c.sharded) rows.push_back(c);
  }
  TORCH_CHECK(!rows.empty() || !needs_torchrun.empty(), "--configs '", configs, "' names none of the rows");

  std::optional<edkm::SafetensorsFile> given;
  if (!inputs.empty()) given = edkm::load_safetensors(inputs);
  edkm::SafetensorsFile saved;
  nlohmann::json results = nlohmann::json::array();
  const int64_t rss_start = edkm::bench::proc_status_bytes("VmRSS");
  std::optional<edkm::ProgressBar> bar;
  if (lead) bar.emplace(static_cast<int64_t>(layer.size() * rows.size()), "ablation");
  for (size_t mi = 0; mi < layer.size(); ++mi) {
    const auto& mat = layer[mi];
    StepInput in;
    in.device = dev;
    in.min_bytes = min_bytes;
    in.comm = comm;
    in.options = edkm::DKMOptions(bits).epsilon(0).max_iter(max_iter);  // every iteration runs: the worst case
    if (given) {
      auto get = [&](const std::string& what) {
        auto it = given->tensors.find(mat.name + "." + what);
        TORCH_CHECK(it != given->tensors.end(), inputs, " has no tensor ", mat.name, ".", what);
        return it->second;
      };
      in.weight = get("weight").to(st).to(dev);
      in.centroids = get("centroids").to(at::kFloat).to(dev);
      in.grad = get("grad").to(st).to(dev);
      TORCH_CHECK(in.grad.sizes() == in.weight.sizes(), mat.name, ".grad must have the weight's shape");
    } else {
      at::manual_seed(static_cast<uint64_t>(1000 + mi));
      in.weight = (at::randn({mat.rows, mat.cols}) * 0.02).to(st).to(dev);
      in.grad = at::randn({mat.rows, mat.cols}).to(st).to(dev);
      in.centroids = edkm::functional::init_centroids(in.weight, in.options);
    }
    for (const auto& cfg : rows) {
      Measurement best;
      best.seconds = 1e300;
      for (int64_t r = no_warmup ? 1 : 0; r <= repeats; ++r) {
        auto m = cfg.step(in);
        if (r == 0) continue;  // warm-up
        best.seconds = std::min(best.seconds, m.seconds);
        best.device_peak = std::max(best.device_peak, m.device_peak);
        best.host_peak = std::max(best.host_peak, m.host_peak);
        best.traffic = m.traffic;
        best.host_in_device_figure = m.host_in_device_figure;
        best.soft = m.soft, best.dweight = m.dweight;
      }
      const int64_t base = 4 * in.weight.numel() * in.weight.element_size();  // weight, W_soft, dW, dW_soft
      results.push_back({{"matrix", mat.name},
                         {"shape", std::to_string(mat.rows) + "x" + std::to_string(mat.cols)},
                         {"config", cfg.name},
                         {"what", cfg.what},
                         {"ranks", cfg.sharded ? world : 1},
                         {"device", device},
                         {"dtype", dtype},
                         {"bits", bits},
                         {"device_peak_bytes", best.device_peak},
                         {"overhead_bytes", std::max<int64_t>(0, best.device_peak - base)},
                         {"host_peak_bytes", best.host_peak},
                         {"traffic_bytes", best.traffic},
                         {"host_in_device_figure", best.host_in_device_figure},
                         {"step_seconds", best.seconds},
                         {"rss_start_bytes", rss_start},
                         {"hwm_bytes", edkm::bench::proc_status_bytes("VmHWM")}});
      if (!save_output.empty()) {
        saved.tensors[mat.name + "." + cfg.name + ".soft"] = best.soft.cpu();
        saved.tensors[mat.name + "." + cfg.name + ".dweight"] = best.dweight.cpu();
      }
      if (bar) bar->tick(mat.name + " " + cfg.name);
    }
  }
  if (!lead) return 0;  // rank 0 writes the outputs
  bar->finish();
  if (!save_output.empty()) edkm::save_safetensors(save_output, saved);

  // Layer totals: the matrices run one at a time, so peaks are maxima and times sums.
  auto find = [&](const std::string& matrix, const std::string& config) -> const nlohmann::json* {
    for (const auto& r : results)
      if (r["matrix"] == matrix && r["config"] == config) return &r;
    return nullptr;
  };
  nlohmann::json totals = nlohmann::json::array();
  for (const auto& cfg : rows) {
    int64_t dpk = 0, hpk = 0, traffic = 0, over = 0;
    double secs = 0;
    bool counted = false;
    for (const auto& mat : layer) {
      const auto* r = find(mat.name, cfg.name);
      dpk = std::max(dpk, (*r)["device_peak_bytes"].get<int64_t>());
      over = std::max(over, (*r)["overhead_bytes"].get<int64_t>());
      hpk = std::max(hpk, (*r)["host_peak_bytes"].get<int64_t>());
      traffic += (*r)["traffic_bytes"].get<int64_t>();
      secs += (*r)["step_seconds"].get<double>();
      counted = counted || (*r)["host_in_device_figure"].get<bool>();
    }
    totals.push_back({{"matrix", "layer"},
                      {"config", cfg.name},
                      {"device_peak_bytes", dpk},
                      {"overhead_bytes", over},
                      {"host_peak_bytes", hpk},
                      {"traffic_bytes", traffic},
                      {"host_in_device_figure", counted},
                      {"step_seconds", secs}});
  }

  const std::string machine = edkm::bench::machine_name();
  nlohmann::json doc = {{"benchmark", "ablation"},
                        {"machine", machine},
                        {"device", device},
                        {"dtype", dtype},
                        {"bits", bits},
                        {"max_iter", max_iter},
                        {"threads", at::get_num_threads()},
                        {"scale", scale},
                        {"ranks", world},
                        {"not_measured_needs_torchrun", needs_torchrun},
                        {"rows", results},
                        {"layer", totals}};
  edkm::write_text_file(out + ".json", doc.dump(2) + "\n");

  // Markdown: the layer first (the headline), then every matrix.
  std::ostringstream md;
  const bool cpu = dev.is_cpu();
  md << "# eDKM memory ablation: LLaMA-7B decoder layer"
     << (scale > 1 ? " (shapes / " + std::to_string(scale) + ")" : "") << ", " << bits << " bits, " << dtype
     << ", forward+backward\n\nMachine: " << machine << ". Device: " << device
     << (cpu ? " (device role = LibTorch's CPU allocator, host role = the offloader's host buffers)" : "") << ", "
     << at::get_num_threads() << " thread(s). Every DKM iteration runs (max_iter " << max_iter << ", epsilon 0).\n\n";
  auto table = [&](const nlohmann::json& list, bool with_matrix) {
    md << "| " << (with_matrix ? "matrix | shape | " : "") << "configuration | peak device MiB | overhead MiB | "
       << "peak host MiB | traffic MiB | step s | memory vs dense (peak) | memory vs dense (overhead) | time vs dense "
          "|\n|"
       << (with_matrix ? "---|---|" : "") << "---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : list) {
      const nlohmann::json* d = nullptr;
      for (const auto& q : list)
        if (q["config"] == "dense" && q["matrix"] == r["matrix"]) d = &q;
      auto ratio = [&](const char* key) {
        return d ? times((*d)[key].get<double>(), r[key].get<double>()) : std::string("-");
      };
      std::ostringstream tr;
      if (d)
        tr << std::fixed << std::setprecision(2) << r["step_seconds"].get<double>() / (*d)["step_seconds"].get<double>()
           << "x";
      md << "| ";
      if (with_matrix) md << r["matrix"].get<std::string>() << " | " << r["shape"].get<std::string>() << " | ";
      md << r["config"].get<std::string>() << " | " << mib(r["device_peak_bytes"].get<double>())
         << (r["host_in_device_figure"].get<bool>() ? " *" : "") << " | " << mib(r["overhead_bytes"].get<double>())
         << " | " << mib(r["host_peak_bytes"].get<double>()) << " | " << mib(r["traffic_bytes"].get<double>()) << " | "
         << std::fixed << std::setprecision(3) << r["step_seconds"].get<double>() << " | " << ratio("device_peak_bytes")
         << " | " << ratio("overhead_bytes") << " | " << (d ? tr.str() : "-") << " |\n";
    }
    if (!with_matrix)
      for (const auto& name : needs_torchrun)
        md << "| " << name << " | needs torchrun (not measured) | | | | | | | |\n";
  };
  md << "## Layer (matrices run one at a time: peak = max over the matrices, time = sum)\n\n";
  table(totals, false);
  md << "\n## Per matrix\n\n";
  table(results, true);
  bool counted = false;
  for (const auto& r : totals) counted = counted || r["host_in_device_figure"].get<bool>();
  md << "\n`peak device` = the step's peak + the weight and upstream gradient held outside it; `overhead` = peak "
        "device minus weight, W_soft and their gradients: what the clustering itself costs. Ratios are dense / "
        "configuration (memory, x less) and configuration / dense (time).\n";
  if (counted)
    md << "\n\\* The offloader's host buffers are allocated by LibTorch's CPU allocator in this build, so on a CPU the "
          "device-role figure of the offloading row includes them (it cannot fall below dense there); on a GPU, or "
          "once the offloader allocates from edkm::HostMemoryPool, it is the device role alone.\n";
  if (comm)
    md << "\nSharded rows (N ranks) ran on " << world
       << " ranks under torchrun, in lockstep with rank 0; their "
          "figures are per rank, the maximum over the ranks: peak device = that rank's device-role peak, peak host = "
          "the blocks it kept (index blocks and distinct rows for eDKM combined), traffic = what it copied into "
          "them plus what its all-gathers returned.\n";
  if (!needs_torchrun.empty())
    md << "\nThe sharded rows need several ranks: run under `torchrun --standalone --no-python --nproc-per-node N` "
          "to measure them.\n";

  // The targets, checked on the layer figures (clustering overhead, dense / configuration).
  md << "\n## Targets\n\n";
  const nlohmann::json *dense_total = nullptr, *combined = nullptr;
  for (const auto& t : totals) {
    if (t["config"] == "dense") dense_total = &t;
    if (t["config"].get<std::string>().rfind("eDKM combined", 0) == 0) combined = &t;
  }
  constexpr double kPaperCombined = 130;  // eDKM (arXiv 2309.00964): all techniques, ~130x less than dense
  if (!dense_total) {
    md << "- no dense row in this run: no ratios.\n";
  } else {
    const double dense_over = (*dense_total)["overhead_bytes"].get<double>();
    double combined_ratio = 0;
    if (combined) {
      const double v = (*combined)["overhead_bytes"].get<double>();
      combined_ratio = v > 0 ? dense_over / v : 1e300;
      md << std::fixed << std::setprecision(0) << "- eDKM combined >= " << kPaperCombined
         << "x (paper, GPU): " << times(dense_over, v) << (combined_ratio >= kPaperCombined ? " - met" : " - NOT met")
         << (cpu ? " (a CPU run)" : "") << ".\n";
      if (combined_ratio < kPaperCombined)
        md << "  Where the memory goes: saved-tensor hooks only move what autograd keeps between forward and "
              "backward (the host column: what a rank keeps of it). The device-role peak that remains is the dense "
              "engine's live working set: one iteration's N x K maps (fp32 distances, attention, their gradients) "
              "while they are computed in forward and while backward consumes them, which no hook touches. eDKM's "
              "130x also needs that working set small (on a GPU, with the saved maps of all iterations dominating); "
              "here it is the table and streaming engines that remove it.\n";
    } else {
      md << std::fixed << std::setprecision(0) << "- eDKM combined >= " << kPaperCombined
         << "x (paper, GPU): not measured (the row needs torchrun with several ranks); the table and streaming "
         << "rows are held to 10x the paper's figure instead.\n";
    }
    // Saved tensors alone: what a rank keeps of them (eDKM combined's host column) against all of them
    // (+marshaling's host column: every saved storage once, de-duplicated).
    const nlohmann::json* marshaling = nullptr;
    for (const auto& t : totals)
      if (t["config"] == "+marshaling") marshaling = &t;
    if (combined && marshaling)
      md << "- eDKM combined, saved tensors only (what a rank keeps of them vs all of them, +marshaling's host "
            "column): "
         << times((*marshaling)["host_peak_bytes"].get<double>(), (*combined)["host_peak_bytes"].get<double>())
         << " less.\n";
    // The engines are held to 10x beyond the better of the paper's figure and the measured one.
    const double goal = 10 * std::max(kPaperCombined, combined_ratio);
    for (const auto& t : totals) {
      const std::string name = t["config"].get<std::string>();
      if (name != "table" && name != "streaming") continue;
      const double v = t["overhead_bytes"].get<double>(), r = v > 0 ? dense_over / v : 1e300;
      md << "- " << name << " >= 10x beyond "
         << (combined_ratio > kPaperCombined ? "eDKM combined (measured)" : "eDKM's 130x") << " (" << std::fixed
         << std::setprecision(0) << goal << "x): " << times(dense_over, v) << (r >= goal ? " - met" : " - NOT met")
         << ".\n";
      if (r < goal && name == "table")
        md << "  Where the memory goes: the table engine's clustering memory is a fixed set of 65,536-entry "
              "tables per iteration (T x 65,536 x K values and their gradients, ~"
           << mib(v) << " MiB here), independent of the weight's size: against dense's N x K maps the ratio "
           << "grows with N and falls short on small (--quick) shapes; the rest of its peak is the weight, "
              "W_soft and their gradients, which every engine holds.\n";
      if (r < goal && name == "streaming")
        md << "  Where the memory goes: the streaming engine keeps only T x K centroids and per-chunk partial "
              "sums (~"
           << mib(v) << " MiB here); the rest of its peak is the weight, W_soft and their gradients.\n";
    }
  }
  edkm::write_text_file(out + ".md", md.str());
  std::cout << md.str();

  // Chart: memory ratio to dense (overhead) per matrix, one bar per configuration, log scale.
  edkm::bench::BarChart chart;
  chart.title = "DKM forward+backward memory vs dense, LLaMA-7B layer" +
                (scale > 1 ? std::string(" (shapes / ") + std::to_string(scale) + ")" : std::string()) + ", " +
                std::to_string(bits) + " bits " + dtype;
  chart.machine = machine + ", " + device;
  chart.y_label = "x less clustering memory than dense";
  chart.log_scale = true;
  for (const auto& mat : layer) chart.categories.push_back(mat.name);
  chart.categories.push_back("layer");
  for (const auto& cfg : rows) {
    if (cfg.name == "dense") continue;
    edkm::bench::BarSeries s{cfg.name, {}};
    auto add = [&](const nlohmann::json& r, const nlohmann::json& d) {
      const double v = r["overhead_bytes"].get<double>(), dv = d["overhead_bytes"].get<double>();
      s.values.push_back(v > 0 ? dv / v : dv / 1024);  // 0 B: drawn as if 1 KiB (a lower bound)
    };
    for (const auto& mat : layer) {
      const auto *r = find(mat.name, cfg.name), *d = find(mat.name, "dense");
      if (d)
        add(*r, *d);
      else
        s.values.push_back(std::nan(""));
    }
    const nlohmann::json *tr = nullptr, *td = nullptr;
    for (const auto& t : totals) {
      if (t["config"] == cfg.name) tr = &t;
      if (t["config"] == "dense") td = &t;
    }
    if (td)
      add(*tr, *td);
    else
      s.values.push_back(std::nan(""));
    chart.series.push_back(s);
  }
  chart.save(out + ".svg");
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_ablation");
}
