// Peak memory and step time of DKM forward+backward per engine, measured with edkm::MemoryMeter.
//
//   edkm_bench_dkm_memory --shapes 1024x4096,4096x4096 --bits 3 --device cpu --out benchmarks/results/dkm_memory_cpu
//
// Writes OUT.json and OUT.md. "overhead" is the peak above weight + W_soft + their gradients,
// the memory that the clustering itself costs.
#include <ATen/ATen.h>
#include <edkm/edkm.h>

#include <CLI/CLI.hpp>
#include "bench_util.h"

#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

using edkm::bench::parse_shape;
using edkm::bench::split;
using edkm::bench::sync;

int main(int argc, char** argv) try {
  CLI::App app{"edkm: DKM forward+backward peak memory per engine"};
  std::string shapes = "1024x4096,4096x4096", device = "cpu", out = "benchmarks/results/dkm_memory_cpu", dtype = "fp32",
              engines = "dense";
  int64_t bits = 3, repeats = 1, group_size = 0;
  double weight_std = 0.02;
  app.add_option("--shapes", shapes, "comma-separated RxC weight shapes");
  app.add_option("--bits", bits)->check(CLI::Range(1, 8));
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype)->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--engines", engines,
                 "comma-separated: dense, table, streaming, auto (table on fp32 clusters the bf16 rounding)");
  app.add_option("--group-size", group_size, "rows per LUT (per-grouped-channel); 0: one LUT per tensor")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--repeats", repeats, "timed repetitions after one warm-up")->check(CLI::PositiveNumber);
  app.add_option("--weight-std", weight_std,
                 "standard deviation of the Gaussian weights (SmolLM2-135M's layers: 0.14-0.22)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--out", out, "output path without extension (.json and .md are written)");
  CLI11_PARSE(app, argc, argv);
  edkm::bench::make_out_dir(out);

  const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
  const auto st = dtype == "bf16" ? at::kBFloat16 : dtype == "fp16" ? at::kHalf : at::kFloat;
  nlohmann::json results = nlohmann::json::array();
  const auto list = split(shapes), engine_list = split(engines);

  edkm::ProgressBar bar(static_cast<int64_t>(list.size() * engine_list.size()), "dkm memory");
  for (const auto& s : list)
    for (const auto& engine : engine_list) {
      const auto shape = parse_shape(s);
      auto opts = edkm::DKMOptions(bits).epsilon(0);  // all max_iter iterations: the worst case
      opts.engine(edkm::engine_from_string(engine)).table_fp32_as_bf16(engine == "table");
      if (group_size > 0) opts.granularity(edkm::Granularity::kPerGroupedChannel).group_size(group_size);
      auto w = (at::randn(shape, at::TensorOptions().dtype(at::kFloat)) * weight_std).to(st).to(dev);
      auto c = edkm::functional::init_centroids(w, opts);
      auto grad = at::randn(shape, w.options());
      double best_s = 1e30;
      int64_t peak = 0, overhead = 0;
      const int64_t base = 4 * w.numel() * w.element_size();  // weight, W_soft, dW, dW_soft
      for (int64_t r = 0; r <= repeats; ++r) {
        auto wr = w.clone().requires_grad_(true);
        sync(dev);
        edkm::MemoryMeter meter;
        const auto t0 = std::chrono::steady_clock::now();
        auto y = edkm::functional::dkm_cluster(wr, c, opts).weight;
        y.backward(grad);
        sync(dev);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        auto rep = meter.report();
        const auto& f = dev.is_cuda() ? rep.cuda : rep.cpu;
        if (r > 0) best_s = std::min(best_s, secs);
        peak = std::max(peak,
                        f.peak_delta() + 2 * w.numel() * w.element_size());  // + the weight and its grad held outside
        overhead = peak - base;
      }
      results.push_back({{"shape", s},
                         {"bits", bits},
                         {"engine", engine},
                         {"device", device},
                         {"dtype", dtype},
                         {"weight_std", weight_std},
                         {"group_size", group_size},
                         {"peak_bytes", peak},
                         {"overhead_bytes", overhead},
                         {"step_seconds", best_s}});
      bar.tick(s + " " + engine);
    }
  bar.finish();

  edkm::write_text_file(out + ".json", results.dump(2) + "\n");
  std::ostringstream md;
  md << "| shape | bits | LUTs | engine | device | dtype | peak MiB | overhead MiB | overhead / dense | fwd+bwd s "
        "|\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : results) {
    std::string ratio = "-";  // against the dense row of the same shape, when measured
    for (const auto& q : results)
      if (q["engine"] == "dense" && q["shape"] == r["shape"] && q["overhead_bytes"].get<double>() > 0) {
        std::ostringstream f;
        f << std::fixed << std::setprecision(2)
          << 100.0 * r["overhead_bytes"].get<double>() / q["overhead_bytes"].get<double>() << "%";
        ratio = f.str();
      }
    const int64_t gs = r["group_size"].get<int64_t>();
    md << "| " << r["shape"].get<std::string>() << " | " << r["bits"] << " | "
       << (gs > 0 ? "per " + std::to_string(gs) + " rows" : std::string("per tensor")) << " | "
       << r["engine"].get<std::string>() << " | " << r["device"].get<std::string>() << " | "
       << r["dtype"].get<std::string>() << " | " << std::fixed << std::setprecision(1)
       << r["peak_bytes"].get<double>() / (1 << 20) << " | " << r["overhead_bytes"].get<double>() / (1 << 20) << " | "
       << ratio << " | " << std::setprecision(3) << r["step_seconds"].get<double>() << " |\n";
  }
  edkm::write_text_file(out + ".md", md.str());
  std::cout << md.str();
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_dkm_memory");
}
