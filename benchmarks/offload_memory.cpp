// Peak memory and time of dense DKM forward+backward without the offloader, with it, and with it
// uniquifying (eDKM's marshaling and uniquification), for fp32 and 16-bit weights, with the
// offloader's statistics (de-dup, prefetch, uniquify, traffic) and its host pool's peak.
//
//   edkm_bench_offload_memory --shapes 1024x4096,4096x4096 --dtypes fp32,bf16 --bits 3 --device cpu \
//       --modes plain,offload,offload+uniquify --prefetch 1 --out benchmarks/results/offload_cpu
//
// "Device-role" peak: on cuda the CUDA caching allocator's; on cpu the offloader runs in
// host-to-host mode and the peak is LibTorch's CPU allocator's (edkm::MemoryMeter `cpu`), which does
// not count the offloader's host pool (edkm::HostMemoryPool allocates outside LibTorch's
// allocator): on a CPU-only machine the CPU allocator plays the device and the pool the host, so
// the drop of that peak is the drop the offloader gives a GPU. Writes OUT.json and OUT.md.
#include <ATen/ATen.h>
#include <edkm/edkm.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "bench_util.h"

using edkm::bench::measured_dkm_step;
using edkm::bench::parse_shape;
using edkm::bench::split;

namespace {

at::ScalarType dtype_of(const std::string& name) {
  if (name == "bf16") return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  return at::kFloat;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: dense DKM forward+backward with and without the saved-tensor offloader"};
  std::string shapes = "1024x4096,4096x4096", device = "cpu", out = "benchmarks/results/offload_cpu",
              dtypes = "fp32,bf16", modes = "plain,offload,offload+uniquify";
  int64_t bits = 3, repeats = 1, min_bytes = int64_t{1} << 20, prefetch = 1;
  app.add_option("--shapes", shapes, "comma-separated RxC weight shapes");
  app.add_option("--dtypes", dtypes, "comma-separated weight dtypes: fp32, bf16, fp16");
  app.add_option("--modes", modes, "comma-separated: plain, offload, offload+uniquify");
  app.add_option("--bits", bits)->check(CLI::Range(1, 8));
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--min-bytes", min_bytes, "offload saved tensors of at least this many bytes");
  app.add_option("--prefetch", prefetch, "storages prefetched ahead in backward (0: off)")->check(CLI::Range(0, 64));
  app.add_option("--repeats", repeats, "timed repetitions after one warm-up")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "output path without extension (.json and .md are written)");
  CLI11_PARSE(app, argc, argv);
  edkm::bench::make_out_dir(out);

  const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
  const auto shape_list = split(shapes), dtype_list = split(dtypes), mode_list = split(modes);
  for (const auto& d : dtype_list)
    if (d != "fp32" && d != "bf16" && d != "fp16") throw std::invalid_argument("unknown dtype " + d);
  for (const auto& m : mode_list)
    if (m != "plain" && m != "offload" && m != "offload+uniquify") throw std::invalid_argument("unknown mode " + m);
  nlohmann::json results = nlohmann::json::array();
  edkm::ProgressBar bar(static_cast<int64_t>(shape_list.size() * dtype_list.size() * mode_list.size()),
                        "offload memory");
  for (const auto& s : shape_list) {
    const auto shape = parse_shape(s);
    for (const auto& dt : dtype_list) {
      auto opts = edkm::DKMOptions(bits).epsilon(0).engine(edkm::Engine::kDense);  // all iterations: the worst case
      auto w = (at::randn(shape, at::TensorOptions().dtype(at::kFloat)) * 0.02).to(dtype_of(dt)).to(dev);
      auto c = edkm::functional::init_centroids(w, opts);
      auto grad = at::randn(shape, w.options());
      at::Tensor reference;
      for (const auto& mode : mode_list) {
        const bool offload = mode != "plain";
        auto off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions()
                                                         .min_bytes(min_bytes)
                                                         .host_to_host(dev.is_cpu())
                                                         .prefetch(prefetch)
                                                         .uniquify(mode == "offload+uniquify"));
        double best_s = 1e30;
        int64_t peak = 0, pinned_peak = 0;
        bool same = true;
        for (int64_t r = 0; r <= repeats; ++r) {
          if (r == repeats) {  // report the stats of one step (the last, with a warm pool)
            off->reset_stats();
            off->pool()->reset_peak_stats();
          }
          const auto step = measured_dkm_step(w, c, opts, grad, offload ? off : nullptr);
          const auto& wr = step.weight;
          const double secs = step.seconds;
          const auto& rep = step.memory;
          if (r > 0 || repeats == 0) best_s = std::min(best_s, secs);
          peak = std::max(peak, (dev.is_cuda() ? rep.cuda : rep.cpu).peak_delta());
          pinned_peak = std::max(pinned_peak, rep.pinned.peak_delta());
          if (!reference.defined()) reference = wr.grad();  // the first mode's gradient
          same = same && at::equal(wr.grad(), reference);
        }
        nlohmann::json row = {{"shape", s},
                              {"dtype", dt},
                              {"bits", bits},
                              {"device", device},
                              {"mode", mode},
                              {"offload", offload},
                              {"prefetch", offload ? prefetch : 0},
                              {"peak_bytes", peak},
                              {"pinned_peak_bytes", pinned_peak},
                              {"step_seconds", best_s},
                              {"grad_bitwise_equal", same}};
        if (offload) row["stats"] = nlohmann::json::parse(off->stats().to_json());  // every counter, `pool` nested
        results.push_back(row);
        bar.tick(s + " " + dt + " " + mode);
      }
    }
  }
  bar.finish();

  edkm::write_text_file(out + ".json", results.dump(2) + "\n");
  auto mib = [](const nlohmann::json& v) { return edkm::bench::mib(v.get<double>()); };
  std::ostringstream md;
  md << std::fixed
     << "| shape | dtype | mode | device-role peak MiB | plain / this | fwd+bwd s | time vs plain | grads equal | "
        "host pool peak MiB | storages copied | copies avoided (de-dup) | MiB to host | MiB restored | prefetched "
        "(hits, wasted) | uniquified | uniquify MiB before -> after |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : results) {
    double plain_s = 0, plain_peak = 0;
    for (const auto& q : results)
      if (q["shape"] == r["shape"] && q["dtype"] == r["dtype"] && !q["offload"].get<bool>()) {
        plain_s = q["step_seconds"].get<double>();
        plain_peak = q["peak_bytes"].get<double>();
      }
    md << "| " << r["shape"].get<std::string>() << " | " << r["dtype"].get<std::string>() << " | "
       << r["mode"].get<std::string>() << " | " << std::setprecision(1) << mib(r["peak_bytes"]) << " | ";
    if (plain_peak > 0)
      md << std::setprecision(2) << plain_peak / r["peak_bytes"].get<double>() << "x";
    else
      md << "-";
    md << " | " << std::setprecision(3) << r["step_seconds"].get<double>() << " | ";
    if (plain_s > 0)
      md << std::setprecision(2) << r["step_seconds"].get<double>() / plain_s << "x";
    else
      md << "-";
    md << " | " << (r["grad_bitwise_equal"].get<bool>() ? "yes" : "NO");
    if (r.contains("stats")) {
      const auto& st = r["stats"];
      md << " | " << std::setprecision(1) << mib(st["pool"]["peak_in_use_bytes"]) << " | " << st["storages_kept"]
         << " | " << st["copies_avoided"] << " | " << mib(st["bytes_stored"]) << " | " << mib(st["bytes_restored"])
         << " | " << st["prefetches"] << " (" << st["prefetch_hits"] << ", " << st["prefetch_wasted"] << ") | "
         << st["tensors_uniquified"] << " (" << st["index_lists_shared"] << " shared index) | "
         << mib(st["uniquify_bytes_before"]) << " -> " << mib(st["uniquify_bytes_after"]) << " |\n";
    } else {
      md << " | - | - | - | - | - | - | - | - |\n";
    }
  }
  edkm::write_text_file(out + ".md", md.str());
  std::cout << md.str();
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_offload_memory");
}
