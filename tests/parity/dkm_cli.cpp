// Small CLI over the dense engine for the parity test with coremltools:
//   edkm_dkm_cli IN_DIR OUT_DIR
// IN_DIR: spec.json (shape, options), weight.bin, centroids.bin (G x K x d), grad.bin (upstream
// gradient), all raw little-endian float32 (or float64 with "dtype": "float64"). OUT_DIR: soft.bin (W_soft),
// dweight.bin, centroids.bin, hard.bin (the weight hard-assigned to the new centroids: what
// finalize gives), result.json (iterations, inertia).
#include <ATen/TensorOperators.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <edkm/dkm/dkm.h>
#include <edkm/dkm/palette.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

namespace {

at::ScalarType g_dtype = at::kFloat;  // float32 or float64 files, per spec.json "dtype"

at::Tensor read_raw(const std::string& path, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  const int64_t bytes = n * static_cast<int64_t>(c10::elementSize(g_dtype));
  std::ifstream f(path, std::ios::binary);
  TORCH_CHECK(f, "cannot open ", path);
  std::vector<char> buf(bytes);
  f.read(buf.data(), bytes);
  TORCH_CHECK(f.gcount() == bytes, path, ": expected ", bytes, " bytes");
  return at::from_blob(buf.data(), shape, g_dtype).clone();
}

void write_raw(const std::string& path, const at::Tensor& t) {
  auto c = t.detach().to(g_dtype).contiguous();
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(c.data_ptr()), c.numel() * static_cast<int64_t>(c.element_size()));
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 3) {
    std::cerr << "usage: edkm_dkm_cli IN_DIR OUT_DIR\n";
    return 2;
  }
  const std::string in = argv[1], out = argv[2];
  nlohmann::json spec;
  std::ifstream(in + "/spec.json") >> spec;
  g_dtype = spec.value("dtype", std::string("float32")) == "float64" ? at::kDouble : at::kFloat;
  auto shape = spec.at("shape").get<std::vector<int64_t>>();
  edkm::DKMOptions o(spec.at("bits").get<int64_t>());
  o.engine(edkm::Engine::kDense)  // the reference (DKMOptions' default is kAuto)
      .tau(spec.value("tau", o.tau()))
      .max_iter(spec.value("max_iter", o.max_iter()))
      .epsilon(spec.value("epsilon", o.epsilon()))
      .zero_threshold(spec.value("zero_threshold", o.zero_threshold()))
      .prune_threshold(spec.value("prune_threshold", o.prune_threshold()))
      .enforce_zero(spec.value("enforce_zero", false))
      .cluster_dim(spec.value("cluster_dim", int64_t{1}))
      .per_channel_scale(spec.value("per_channel_scale", false));
  if (spec.value("group_size", int64_t{0}) > 0)
    o.granularity(edkm::Granularity::kPerGroupedChannel).group_size(spec.at("group_size").get<int64_t>());
  // Zeros, not empty: the layout checks that the weight is finite, and uninitialised memory may not be.
  const auto layout = edkm::ClusterLayout::of(at::zeros(shape), o);
  auto w = read_raw(in + "/weight.bin", shape).requires_grad_(true);
  auto c = read_raw(in + "/centroids.bin", {layout.groups, o.n_clusters(), o.cluster_dim()});
  auto g = read_raw(in + "/grad.bin", shape);
  at::Tensor scale;
  if (o.per_channel_scale()) scale = edkm::functional::channel_scale(w, edkm::ScaleScheme::kMinMax);
  auto r = edkm::functional::dkm_cluster(w, c, o, scale);
  (r.weight * g).sum().backward();
  write_raw(out + "/soft.bin", r.weight);
  write_raw(out + "/dweight.bin", w.grad());
  write_raw(out + "/centroids.bin", r.centroids);
  write_raw(out + "/hard.bin",
            edkm::Palette::from_centroids(w.detach(), r.centroids, o, scale).decompress().to(w.scalar_type()));
  nlohmann::json result;
  result["iterations"] = r.iterations;
  result["inertia"] = r.inertia;
  std::ofstream(out + "/result.json") << result.dump();
  return 0;
} catch (const std::exception& e) {
  std::cerr << "edkm_dkm_cli: " << e.what() << "\n";
  return 1;
}
