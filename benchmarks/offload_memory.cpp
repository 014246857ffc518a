// Peak memory and time of dense DKM forward+backward with and without the offloader (saved
// tensors to host memory, de-duplicated by storage), and the offloader's statistics.
//
//   edkm_bench_offload_memory --shapes 1024x4096,4096x4096 --bits 3 --device cpu --out benchmarks/results/offload_cpu
//
// On cuda the peak is the CUDA caching allocator's; on cpu the offloader runs in host-to-host mode
// (saved CPU tensors are moved into its host pool buffers and restored in backward), so the
// peak is the CPU allocator's and mostly shows the cost: what matters there are the de-dup
// statistics and the time overhead. Writes OUT.json and OUT.md.
#include <ATen/ATen.h>
#include <edkm/edkm.h>

#include "bench_util.h"

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

using edkm::bench::parse_shape;
using edkm::bench::split;
using edkm::bench::sync;

namespace {

nlohmann::json to_json(const edkm::OffloadStats& s) {
  return {{"tensors_packed", s.tensors_packed},
          {"tensors_offloaded", s.tensors_offloaded},
          {"tensors_unpacked", s.tensors_unpacked},
          {"storages_copied", s.storages_copied},
          {"bytes_offloaded", s.bytes_offloaded},
          {"copies_avoided", s.copies_avoided},
          {"bytes_not_copied", s.bytes_not_copied},
          {"bytes_restored", s.bytes_restored},
          {"restores_shared", s.restores_shared},
          {"host_bytes_peak", s.host_bytes_peak},
          {"pool_hits", s.pool_hits},
          {"pool_misses", s.pool_misses}};
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: dense DKM forward+backward with and without the saved-tensor offloader"};
  std::string shapes = "1024x4096,4096x4096", device = "cpu", out = "benchmarks/results/offload_cpu";
  int64_t bits = 3, repeats = 1, min_bytes = int64_t{1} << 20;
  app.add_option("--shapes", shapes, "comma-separated RxC weight shapes");
  app.add_option("--bits", bits)->check(CLI::Range(1, 8));
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--min-bytes", min_bytes, "offload saved tensors of at least this many bytes");
  app.add_option("--repeats", repeats, "timed repetitions after one warm-up");
  app.add_option("--out", out, "output path without extension (.json and .md are written)");
  CLI11_PARSE(app, argc, argv);

  const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
  nlohmann::json results = nlohmann::json::array();
  const auto list = split(shapes);
  edkm::ProgressBar bar(static_cast<int64_t>(list.size() * 2), "offload memory");
  for (const auto& s : list) {
    const auto shape = parse_shape(s);
    auto opts = edkm::DKMOptions(bits).epsilon(0);  // all max_iter iterations: the worst case
    auto w = (at::randn(shape, at::TensorOptions().dtype(at::kFloat)) * 0.02).to(dev);
    auto c = edkm::functional::init_centroids(w, opts);
    auto grad = at::randn(shape, w.options());
    at::Tensor reference;
    for (const bool offload : {false, true}) {
      auto off =
          std::make_shared<edkm::Offloader>(edkm::OffloadOptions().min_bytes(min_bytes).host_to_host(dev.is_cpu()));
      double best_s = 1e30;
      int64_t peak = 0, pinned_peak = 0;
      bool same = true;
      for (int64_t r = 0; r <= repeats; ++r) {
        if (r == repeats) off->reset_stats();  // report the stats of one step (the last, with a warm pool)
        auto wr = w.clone().requires_grad_(true);
        sync(dev);
        edkm::MemoryMeter meter;
        const auto t0 = std::chrono::steady_clock::now();
        {
          std::optional<edkm::SavedTensorHooksGuard> guard;
          if (offload) guard.emplace(off);
          auto y = edkm::functional::dkm_cluster(wr, c, opts).weight;
          guard.reset();
          y.backward(grad);
        }
        sync(dev);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const auto rep = meter.report();
        if (r > 0 || repeats == 0) best_s = std::min(best_s, secs);
        peak = std::max(peak, (dev.is_cuda() ? rep.cuda : rep.cpu).peak_delta());
        pinned_peak = std::max(pinned_peak, rep.pinned.peak_delta());
        if (!offload && !reference.defined()) reference = wr.grad();
        if (offload) same = same && at::equal(wr.grad(), reference);
      }
      nlohmann::json row = {{"shape", s},
                            {"bits", bits},
                            {"device", device},
                            {"offload", offload},
                            {"peak_bytes", peak},
                            {"pinned_peak_bytes", pinned_peak},
                            {"step_seconds", best_s},
                            {"grad_bitwise_equal", same}};
      if (offload) row["stats"] = to_json(off->stats());
      results.push_back(row);
      bar.tick(s + (offload ? " offload" : " plain"));
    }
  }
  bar.finish();

  std::ofstream(out + ".json") << results.dump(2) << "\n";
  auto mib = [](const nlohmann::json& v) { return v.get<double>() / (1 << 20); };
  std::ostringstream md;
  md << std::fixed
     << "| shape | bits | device | offloader | peak MiB | fwd+bwd s | time vs plain | grads equal | saved "
        "tensors (offloaded) | storages copied | MiB to host | copies avoided (de-dup) | MiB not copied | MiB "
        "restored | restores shared | host peak MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        "---|\n";
  for (const auto& r : results) {
    double plain_s = 0;
    for (const auto& q : results)
      if (q["shape"] == r["shape"] && !q["offload"].get<bool>()) plain_s = q["step_seconds"].get<double>();
    md << "| " << r["shape"].get<std::string>() << " | " << r["bits"] << " | " << r["device"].get<std::string>()
       << " | " << (r["offload"].get<bool>() ? "on" : "off") << " | " << std::setprecision(1) << mib(r["peak_bytes"])
       << " | " << std::setprecision(3) << r["step_seconds"].get<double>() << " | " << std::setprecision(2)
       << r["step_seconds"].get<double>() / plain_s << "x | " << (r["grad_bitwise_equal"].get<bool>() ? "yes" : "NO");
    if (r.contains("stats")) {
      const auto& st = r["stats"];
      md << " | " << st["tensors_packed"] << " (" << st["tensors_offloaded"] << ") | " << st["storages_copied"] << " | "
         << std::setprecision(1) << mib(st["bytes_offloaded"]) << " | " << st["copies_avoided"] << " | "
         << mib(st["bytes_not_copied"]) << " | " << mib(st["bytes_restored"]) << " | " << st["restores_shared"] << " | "
         << mib(st["host_bytes_peak"]) << " |\n";
    } else {
      md << " | - | - | - | - | - | - | - | - |\n";
    }
  }
  std::ofstream(out + ".md") << md.str();
  std::cout << md.str();
  return 0;
} catch (const std::exception& e) {
  std::cerr << "edkm_bench_offload_memory: " << e.what() << "\n";
  return 1;
}
