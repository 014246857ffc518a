// Every DKM kernel op on every backend this machine has, against the CPU reference, on the shapes
// the per-op tests do not reach (in the spirit of ggml's test-backend-ops: one table of cases, each
// run on each backend): more than 65,535 LUT groups, a LLaMA-scale weight, streaming with
// cluster_dim > 1, the fp32-as-bf16 and the 8-bit table, 8-bit grouped streaming.
// Backends: "cpu" (the reference: the per-weight scalar streaming path), "cpu-avx2" and
// "cpu-avx512" (the vectorised streaming passes, cluster_dim 1 only), "cuda" (when a device is
// usable; EDKM_REQUIRE_GPU=1 makes its absence a failure). The LUT matmul ops have their own
// every-path test (palettized_linear_test.cpp).
#include <edkm/dkm/dkm.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/stream_isa.h"
#include "kernels/ops.h"
#include "test_util.h"

namespace edkm {
namespace {

using test::max_rel;
using test::run;

struct Backend {
  std::string name;
  at::Device device;
  kernels::StreamIsa isa;  // the CPU streaming path while it runs
};

std::vector<Backend> backends() {
  std::vector<Backend> out{{"cpu", at::kCPU, kernels::StreamIsa::kScalar}};
  const auto best = kernels::stream_isa_available();
  if (best >= kernels::StreamIsa::kAvx2) out.push_back({"cpu-avx2", at::kCPU, kernels::StreamIsa::kAvx2});
  if (best >= kernels::StreamIsa::kAvx512) out.push_back({"cpu-avx512", at::kCPU, kernels::StreamIsa::kAvx512});
  if (test::has_gpu()) out.push_back({"cuda", at::Device(at::kCUDA, 0), kernels::StreamIsa::kScalar});
  return out;
}

struct IsaReset {
  kernels::StreamIsa was = kernels::stream_isa();
  ~IsaReset() { kernels::set_stream_isa(was); }
};

// A DKM forward + backward case: weight, gradient, options, tolerances against the reference.
struct DkmCase {
  std::string name;
  std::function<at::Tensor()> weight;
  DKMOptions options;
  double out_tol, centroid_tol, grad_tol;
};

void run_dkm_cases(const std::vector<DkmCase>& cases, bool cuda_only_case) {
  IsaReset reset;
  const auto all = backends();
  if (cuda_only_case && !test::has_gpu() && test::gpu_required()) FAIL() << "EDKM_REQUIRE_GPU=1 but no CUDA device";
  for (const auto& c : cases) {
    const at::Tensor w = c.weight();
    const at::Tensor g = (test::llm_like(w.sizes().vec(), 907) / 0.02).to(w.scalar_type());
    const at::Tensor cent = functional::init_centroids(w, c.options);
    kernels::set_stream_isa(kernels::StreamIsa::kScalar);
    const auto ref = run(w, cent, g, c.options);
    // fp64 dense: how far from the truth the reference itself is (the CPU paths are held to it as
    // the engine tests hold every engine: within 1e-5 of the reference, or as accurate as it).
    test::Run exact;
    if (!cuda_only_case)
      exact =
          run(w.to(at::kDouble), cent.to(at::kDouble), g.to(at::kDouble), DKMOptions(c.options).engine(Engine::kDense));
    for (const auto& b : all) {
      if (b.name == "cpu") continue;
      if (cuda_only_case && !b.device.is_cuda()) continue;
      SCOPED_TRACE(c.name + " on " + b.name);
      kernels::set_stream_isa(b.isa);
      const auto got = run(w.to(b.device), cent.to(b.device), g.to(b.device), c.options);
      EXPECT_EQ(got.iterations, ref.iterations);
      if (!b.device.is_cuda() && w.scalar_type() == at::kFloat) {
        test::expect_as_accurate(got.out, ref.out, exact.out, "forward");
        test::expect_as_accurate(got.centroids, ref.centroids, exact.centroids, "centroids");
        test::expect_as_accurate(got.grad, ref.grad, exact.grad, "gradient");
        continue;
      }
      EXPECT_LE(max_rel(got.out.cpu(), ref.out), c.out_tol);
      EXPECT_LE(max_rel(got.centroids.cpu(), ref.centroids), c.centroid_tol);
      EXPECT_LE(max_rel(got.grad.cpu(), ref.grad), c.grad_tol);
    }
  }
}

// Hard assignment: CUDA equals the CPU twin exactly (both square exactly and pick the first
// index on ties), past the 65,535 groups of one grid dimension and at LLaMA scale.
TEST(BackendOps, CudaAssignBeyond65535GroupsAndAtLlamaScale) {
  EDKM_SKIP_WITHOUT_GPU();
  struct Case {
    std::vector<int64_t> shape;
    DKMOptions options;
  };
  const std::vector<Case> cases{
      {{70000, 8},
       DKMOptions(2).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(1)},  // 70,000 LUTs
      {{4096, 4096}, DKMOptions(3).engine(Engine::kDense)},  // 16.8M weights
      {{11008, 64}, DKMOptions(4).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(16)},
  };
  for (const auto& c : cases) {
    const at::Tensor w = test::llm_like(c.shape, 5);
    const at::Tensor cent = functional::init_centroids(w, c.options);
    const at::Tensor cpu = functional::assign(w, cent, c.options);
    const at::Tensor gpu = functional::assign(w.cuda(), cent.cuda(), c.options);
    EXPECT_TRUE(at::equal(cpu, gpu.cpu())) << c.shape[0] << "x" << c.shape[1];
  }
}

// The table engine on CUDA against its CPU kernels: bf16 3 bits at LLaMA scale, fp32 through the
// bf16 rounding, 8 bits (256 centroids), fp16 weights (the table engine is per tensor only).
TEST(BackendOps, CudaTableEngineFp32AsBf16And8Bit) {
  EDKM_SKIP_WITHOUT_GPU();
  auto table = [](int64_t bits) { return DKMOptions(bits).engine(Engine::kTable); };
  run_dkm_cases(
      {
          {"bf16 4096x4096 3-bit",
           [] {
             return test::llm_like({4096, 4096}, 11, at::kBFloat16);
           },
           table(3), 1e-2, 1e-5, 2e-2},
          {"fp32 as bf16 1024x1024 3-bit",
           [] {
             return test::llm_like({1024, 1024}, 12);
           },
           table(3).table_fp32_as_bf16(true), 1e-5, 1e-5, 1e-4},
          {"bf16 1024x512 8-bit",
           [] {
             return test::llm_like({1024, 512}, 13, at::kBFloat16);
           },
           table(8), 1e-2, 1e-5, 2e-2},
          {"fp16 512x256 4-bit",
           [] {
             return test::llm_like({512, 256}, 14, at::kHalf);
           },
           table(4), 1e-2, 1e-5, 2e-2},
      },
      /*cuda_only_case=*/true);
}

// The streaming engine on the vectorised CPU paths and CUDA against the per-weight reference:
// cluster_dim 2 and 4 (per-weight path on CPU, the vector kernel on CUDA), 8 bits grouped,
// 8 bits per tensor with skipping, bf16 weights.
TEST(BackendOps, StreamingOnEveryBackendIncludingCuda) {
  auto stream = [](int64_t bits) { return DKMOptions(bits).engine(Engine::kStreaming); };
  run_dkm_cases(
      {
          {"fp32 256x64 4-bit cluster_dim 2",
           [] {
             return test::llm_like({256, 64}, 21);
           },
           stream(4).cluster_dim(2), 1e-5, 1e-5, 1e-4},
          {"fp32 128x64 3-bit cluster_dim 4",
           [] {
             return test::llm_like({128, 64}, 22);
           },
           stream(3).cluster_dim(4), 1e-5, 1e-5, 1e-4},
          {"fp32 256x128 8-bit, 16 rows per LUT",
           [] {
             return test::llm_like({256, 128}, 23) * 10;
           },
           stream(8).granularity(Granularity::kPerGroupedChannel).group_size(16), 1e-5, 1e-5, 1e-4},
          {"fp32 512x128 8-bit per tensor",
           [] {
             return test::llm_like({512, 128}, 24) * 10;
           },
           stream(8), 1e-5, 1e-5, 1e-4},
          {"bf16 384x96 3-bit",
           [] {
             return test::llm_like({384, 96}, 25, at::kBFloat16);
           },
           stream(3), 1e-2, 1e-5, 2e-2},
      },
      /*cuda_only_case=*/false);
}

// The tensor-level op entries (kernels/ops.h) name the bad argument and never reach a kernel with
// it; empty inputs return without a launch; every op equals its CPU twin on each device.
TEST(BackendOps, OpEntriesCheckTheirArgumentsAndHandleEmptyInputs) {
  namespace ops = kernels::ops;
  const auto w = test::llm_like({64, 32}, 31, at::kBFloat16);
  const auto table = at::randn({kernels::kTableSize});
  test::expect_error([&] { ops::table_gather(w, table.narrow(0, 0, 100)); }, {"table must be 65536"});
  test::expect_error([&] { ops::table_scatter_add(w, w.to(at::kFloat)); }, {"grad must be contiguous"});
  test::expect_error([&] { ops::table_histogram(w.to(at::kDouble)); }, {"got Double"});
  test::expect_error([&] { ops::table_histogram(w.t()); }, {"contiguous"});
  const auto meta = at::empty({4}, at::TensorOptions().device(at::kMeta).dtype(at::kBFloat16));
  test::expect_error([&] { ops::table_histogram(meta); }, {"CPU and CUDA tensors only"});
  kernels::LutParams p;
  p.in = 8;
  p.out = 4;
  test::expect_error([&] { ops::lut_gemv(p, at::zeros({5, 8}), at::zeros({5, 4})); }, {"at most 4 rows"});
  test::expect_error([&] { ops::lut_decode(p, 3, 5, at::zeros({2, 8})); }, {"outside 0..4"});
  kernels::StreamParams sp;
  test::expect_error([&] { ops::stream_pass(sp, w); }, {"needs x"});
  if (!ops::cuda_kernels_built()) {
    EXPECT_NE(ops::unsupported_device(at::empty({1}, at::TensorOptions().device(at::kCUDA))), "");
  }

  for (const auto& b : backends()) {
    if (b.isa != kernels::StreamIsa::kScalar) continue;  // the table ops have one CPU path
    SCOPED_TRACE(b.name);
    const auto empty = at::empty({0}, at::TensorOptions().device(b.device).dtype(at::kBFloat16));
    EXPECT_EQ(ops::table_histogram(empty).sum().item<int64_t>(), 0);
    EXPECT_EQ(ops::table_scatter_add(empty, empty).abs().sum().item<double>(), 0.0);
    EXPECT_EQ(ops::table_gather(empty, table.to(b.device)).numel(), 0);
    const auto wd = w.to(b.device), g = test::llm_like({64, 32}, 32, at::kBFloat16).to(b.device);
    const auto counts = ops::table_histogram(wd).cpu();
    EXPECT_EQ(counts.sum().item<int64_t>(), w.numel());
    EXPECT_TRUE(at::equal(counts, ops::table_histogram(w)));
    EXPECT_TRUE(at::equal(ops::table_gather(wd, table.to(b.device)).cpu(), ops::table_gather(w, table)));
    EXPECT_LT(max_rel(ops::table_scatter_add(wd, g).cpu(), ops::table_scatter_add(w, g.cpu())), 1e-12);
    const auto slope = at::randn({kernels::kTableSize}), shift = at::randn({kernels::kTableSize});
    EXPECT_LT(max_rel(ops::table_backward(wd, g, slope.to(b.device), shift.to(b.device)).cpu().to(at::kFloat),
                      ops::table_backward(w, g.cpu(), slope, shift).to(at::kFloat)),
              1e-2);
  }
}

}  // namespace
}  // namespace edkm
