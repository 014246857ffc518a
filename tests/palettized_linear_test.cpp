// LUT matmul kernels (edkm/nn/palettized_linear.h) against a dense matmul on the decompressed weight:
// every bit width, per-tensor and grouped LUTs, per-channel scales, bias, odd shapes, 1..40 input
// rows (GEMV and GEMM paths), non-contiguous and bf16 inputs, on every CPU path this machine has
// (scalar, AVX2, AVX-512) and on CUDA when present; embeddings; packing and bad input.
#include <edkm/io/checkpoint.h>
#include <edkm/nn/palettized_linear.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cstdlib>
#include <cstring>

#include "kernels/lut_math.h"
#include "temp_dir.h"
#include "test_util.h"

namespace {

using namespace edkm;

struct Case {
  int64_t out, in, bits, rows_per_lut;  // rows_per_lut 0: one LUT per tensor
  bool scale;
};

Palette make_palette(const Case& c, uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor w = at::randn({c.out, c.in}, g);
  auto o = DKMOptions(c.bits).engine(Engine::kDense);
  if (c.rows_per_lut > 0) o.granularity(Granularity::kPerGroupedChannel).group_size(c.rows_per_lut);
  const int64_t groups = c.rows_per_lut > 0 ? c.out / c.rows_per_lut : 1;
  const at::Tensor centroids = at::randn({groups, int64_t{1} << c.bits, 1}, g);
  const at::Tensor s = c.scale ? at::rand({c.out, 1}, g) + 0.5 : at::Tensor();
  return Palette::from_centroids(c.scale ? w / s : w, centroids, o, s);
}

// |a - b| within fp32 rounding of a dot product of length `in`.
void expect_close(const at::Tensor& got, const at::Tensor& want, int64_t in, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double scale = want.abs().max().item<double>() + 1.0;
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  EXPECT_LE(err, 4e-7 * std::sqrt(static_cast<double>(in)) * scale * 8) << what;
}

std::vector<kernels::LutIsa> isas() {
  std::vector<kernels::LutIsa> out{kernels::LutIsa::kScalar};
  if (kernels::lut_isa_available() >= kernels::LutIsa::kAvx2) out.push_back(kernels::LutIsa::kAvx2);
  if (kernels::lut_isa_available() >= kernels::LutIsa::kAvx512) out.push_back(kernels::LutIsa::kAvx512);
  if (kernels::lut_isa_available() >= kernels::LutIsa::kAvx512Vbmi) out.push_back(kernels::LutIsa::kAvx512Vbmi);
  return out;
}

struct IsaGuard {
  ~IsaGuard() { kernels::set_lut_isa(kernels::lut_isa_available()); }
};

TEST(PalettizedLinear, ReportsThePathItTakes) {
  IsaGuard guard;
  const char* names[] = {"scalar", "avx2", "avx512", "avx512vbmi"};
  for (const auto isa : isas()) {
    kernels::set_lut_isa(isa);
    EXPECT_EQ(functional::lut_kernel_isa(), names[static_cast<int>(isa)]);
  }
  kernels::set_lut_isa(kernels::LutIsa::kAvx512Vbmi);  // capped by what this CPU has
  EXPECT_EQ(kernels::lut_isa(), kernels::lut_isa_available());
}

TEST(PalettizedLinear, EqualsDenseMatmulOnEveryPathAndBitWidth) {
  IsaGuard guard;
  std::vector<Case> cases;
  for (int64_t bits = 1; bits <= 8; ++bits) {
    cases.push_back({7, 37, bits, 0, false});     // odd shape, one LUT
    cases.push_back({32, 96, bits, 16, true});    // grouped LUTs + scale
    cases.push_back({12, 131, bits, 1, false});   // one LUT per row, tails
    cases.push_back({48, 576, bits, 16, false});  // a SmolLM2 width
    cases.push_back({16, 200, bits, 4, true});    // 128 + 64 + 8 columns: every step of the VBMI rows
    cases.push_back({8, 1048, bits, 0, false});   // 1048 columns: 8 x 128 + 24 at 3, 4 bits, 4 x 256 + 24 at 2
    cases.push_back({6, 4424, bits, 2, true});    // decode rows 4 at a time + 2 alone; 34 x 128 + 72 columns
  }
  cases.push_back({1, 1, 3, 0, false});
  cases.push_back({5, 15, 5, 0, true});
  // 8 bits past the L1 (x over 24 KB in lane order): rows in pairs of one LUT, a pair never
  // spanning two LUTs (3 rows per LUT), the odd row alone; 42 tail columns.
  cases.push_back({9, 6250, 8, 3, true});
  cases.push_back({7, 6208, 8, 0, false});
  uint64_t seed = 0;
  for (const auto& c : cases) {
    const Palette pal = make_palette(c, ++seed);
    const at::Tensor dense = pal.decompress().to(at::kFloat);
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed * 7);
    const at::Tensor bias = at::randn({c.out}, g);
    PalettizedLinear fc(pal, bias);
    PalettizedLinear nobias(pal);
    EXPECT_TRUE(at::equal(fc->weight(), dense)) << "decompress";
    for (const auto isa : isas()) {
      kernels::set_lut_isa(isa);
      for (int64_t m : {1, 2, 3, 4, 5, 9, 40}) {  // 5, 9: GEMV passes of 4 rows; 40: the LUT-GEMM
        const at::Tensor x = at::randn({m, c.in}, g);
        const std::string what = functional::lut_kernel_isa() + " bits " + std::to_string(c.bits) + " " +
                                 std::to_string(c.out) + "x" + std::to_string(c.in) + " rows/LUT " +
                                 std::to_string(c.rows_per_lut) + " m " + std::to_string(m);
        expect_close(fc(x), at::linear(x.to(at::kDouble), dense.to(at::kDouble), bias.to(at::kDouble)), c.in, what);
        expect_close(nobias(x), at::linear(x.to(at::kDouble), dense.to(at::kDouble)), c.in, what + " no bias");
      }
    }
  }
}

TEST(PalettizedLinear, NonContiguousBatchedAndBf16Inputs) {
  const Palette pal = make_palette({24, 40, 3, 8, true}, 3);
  PalettizedLinear fc(pal);
  const at::Tensor dense = pal.decompress().to(at::kDouble);
  auto g = at::make_generator<at::CPUGeneratorImpl>(11);
  const at::Tensor xt = at::randn({40, 3}, g).t();  // [3, 40], transposed strides
  ASSERT_FALSE(xt.is_contiguous());
  expect_close(fc(xt), at::linear(xt.to(at::kDouble), dense), 40, "transposed");
  const at::Tensor x3 = at::randn({2, 5, 80}, g).narrow(2, 0, 40);  // [2, 5, 40] with a row stride of 80
  const at::Tensor y3 = fc(x3);
  EXPECT_EQ(y3.sizes(), (std::vector<int64_t>{2, 5, 24}));
  expect_close(y3, at::linear(x3.to(at::kDouble), dense), 40, "3-D strided");
  const at::Tensor xb = at::randn({2, 40}, g).to(at::kBFloat16);
  const at::Tensor yb = fc(xb);
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  expect_close(yb.to(at::kFloat), at::linear(xb.to(at::kDouble), dense).to(at::kBFloat16).to(at::kFloat), 40 * 256,
               "bf16");
  EXPECT_EQ(fc(at::randn({0, 40})).sizes(), (std::vector<int64_t>{0, 24}));
}

TEST(PalettizedLinear, ResidentBytesArePackedIndicesPlusLuts) {
  for (int64_t bits : {1, 3, 4, 8}) {
    const Palette pal = make_palette({64, 100, bits, 16, true}, 5);
    PalettizedLinear fc(pal);
    const int64_t packed = (64 * 100 * bits + 7) / 8 + 16;
    EXPECT_EQ(fc->packed.resident_bytes(), packed + 4 * (4 << bits) + 64 * 4) << bits;
    int64_t buffers = 0;
    for (const auto& b : fc->buffers()) buffers += b.nbytes();
    EXPECT_EQ(buffers, fc->packed.resident_bytes());
  }
}

TEST(PalettizedLinear, FromACompressedCheckpointFile) {
  test::TempDir dir;
  CompressedCheckpoint ckpt;
  ckpt.palettes["fc.weight"] = make_palette({20, 33, 3, 4, false}, 8);
  const std::string path = dir.path("m.edkm.safetensors");
  save_compressed(path, ckpt);
  const auto back = load_compressed(path);
  PalettizedLinear fc(back.palettes.at("fc.weight"));
  const at::Tensor x = at::randn({3, 33});
  expect_close(fc(x), at::linear(x.to(at::kDouble), ckpt.palettes.at("fc.weight").decompress().to(at::kDouble)), 33,
               "reloaded");
}

TEST(PalettizedLinear, StackedRowBlocksEqualTheParts) {
  for (const int64_t in : {13, 16})
    for (int64_t bits : {3, 5}) {
      // in 13: 8 x 13 x 3 bits = 312 bits, the second part's stream starts mid-byte (re-packed);
      // in 16: every part ends on a byte (byte copies).
      const std::vector<Case> cases{{8, in, bits, 4, true}, {12, in, bits, 4, true}, {4, in, bits, 4, true}};
      std::vector<PackedWeight> parts;
      std::vector<at::Tensor> dense;
      uint64_t seed = 60;
      for (const auto& c : cases) {
        const Palette pal = make_palette(c, ++seed);
        parts.push_back(PackedWeight::from_palette(pal));
        dense.push_back(pal.decompress().to(at::kFloat));
      }
      const PackedWeight all = PackedWeight::concat_rows(parts);
      EXPECT_EQ(all.out_features, 24);
      EXPECT_TRUE(at::equal(all.decompress(), at::cat(dense, 0)));
      const at::Tensor x = at::randn({2, in});
      expect_close(functional::lut_linear(x, all), at::linear(x.to(at::kDouble), at::cat(dense, 0).to(at::kDouble)), in,
                   "stacked");
    }
  const auto a = PackedWeight::from_palette(make_palette({8, 13, 3, 4, false}, 1));
  const auto b = PackedWeight::from_palette(make_palette({8, 13, 3, 8, false}, 2));
  test::expect_error([&] { PackedWeight::concat_rows({a, b}); }, {"rows per LUT"});
}

// PackedWeight::random: a valid packed weight of the shape (indices in range, the stream's last
// bits and the pad zero, LUT entries N(0, std^2)), repeatable under manual_seed, running the GEMV.
TEST(PackedWeight, RandomIsAValidWeightOfTheShape) {
  for (const auto& [out, in, bits, rows] :
       std::vector<std::array<int64_t, 4>>{{24, 13, 3, 8}, {7, 5, 5, 0}, {16, 32, 8, 4}}) {
    torch::manual_seed(5);
    const PackedWeight w = PackedWeight::random(out, in, bits, rows, at::kCPU, 0.5);
    torch::manual_seed(5);
    const PackedWeight again = PackedWeight::random(out, in, bits, rows, at::kCPU, 0.5);
    const std::string what = std::to_string(out) + "x" + std::to_string(in) + " at " + std::to_string(bits) + " bits";
    EXPECT_TRUE(w.packed.equal(again.packed) && w.lut.equal(again.lut)) << what;
    EXPECT_EQ(w.lut.sizes(), (std::vector<int64_t>{rows ? out / rows : 1, int64_t{1} << bits})) << what;
    EXPECT_EQ(w.rows_per_lut, rows ? rows : out) << what;
    const int64_t stream = (out * in * bits + 7) / 8;
    ASSERT_EQ(w.packed.numel(), stream + kernels::kLutPadBytes) << what;
    EXPECT_EQ(w.packed.narrow(0, stream, kernels::kLutPadBytes).count_nonzero().item<int64_t>(), 0) << what;
    if (out * in * bits % 8)
      EXPECT_EQ(w.packed[stream - 1].item<int64_t>() >> (out * in * bits % 8), 0)
          << what << ": bits past the last index";
    EXPECT_GT(w.packed.narrow(0, 0, stream).to(at::kFloat).std().item<double>(), 30) << what << ": random bytes";
    const at::Tensor dense = w.decompress();
    // Every weight is an entry of its rows' LUT.
    for (int64_t r = 0; r < out; ++r) {
      const at::Tensor lut = w.lut[r / w.rows_per_lut];
      EXPECT_TRUE((dense[r].unsqueeze(1) == lut.unsqueeze(0)).any(1).all().item<bool>()) << what << " row " << r;
    }
    const at::Tensor x = at::randn({3, in});
    expect_close(functional::lut_linear(x, w), at::matmul(x, dense.t()), in, what);
  }
  const double sd = PackedWeight::random(64, 1024, 4, 0).lut.std().item<double>();
  EXPECT_NEAR(sd, 0.02, 0.015) << "default stddev";
  using edkm::test::expect_error;
  expect_error([] { PackedWeight::random(0, 4, 3); }, {"shape 0 x 4"});
  expect_error([] { PackedWeight::random(4, 4, 9); }, {"bits must be in 1..8", "9"});
  expect_error([] { PackedWeight::random(12, 4, 3, 8); }, {"rows_per_lut 8", "12 rows"});
  expect_error([] { PackedWeight::random(8, 4, 3, 0, at::kCPU, -1); }, {"stddev", "-1"});
}

TEST(PalettizedEmbedding, LooksUpTheDecompressedRowsAndServesATiedHead) {
  IsaGuard guard;
  for (const auto isa : isas()) {
    kernels::set_lut_isa(isa);
    for (int64_t bits : {2, 4, 6, 8}) {
      const Palette pal = make_palette({50, 24, bits, 0, false}, 20 + bits);
      PalettizedEmbedding emb(pal);
      const at::Tensor table = pal.decompress().to(at::kFloat);
      const at::Tensor ids = at::tensor(std::vector<int64_t>{0, 49, 7, 7, 13, 31}, at::kLong).reshape({2, 3});
      EXPECT_TRUE(at::equal(emb(ids), at::embedding(table, ids))) << functional::lut_kernel_isa() << " bits " << bits;
      const at::Tensor h = at::randn({1, 24});
      expect_close(emb->linear(h), at::linear(h.to(at::kDouble), table.to(at::kDouble)), 24, "tied head");
    }
  }
}

TEST(PalettizedLinear, BadInputIsRefusedByName) {
  const Palette pal = make_palette({8, 16, 3, 0, false}, 1);
  PalettizedLinear fc(pal);
  test::expect_error([&] { fc(at::randn({2, 15})); }, {"input", "16 input features"});
  test::expect_error([&] { fc(at::ones({2, 16}, at::kLong)); }, {"floating point"});
  test::expect_error([&] { PalettizedLinear(pal, at::zeros({7})); }, {"bias", "8 output features"});
  PalettizedEmbedding emb(pal);
  test::expect_error([&] { emb(at::tensor(std::vector<int64_t>{3, 8}, at::kLong)); }, {"token id 8", "0..7"});
  test::expect_error([&] { emb(at::tensor(std::vector<int64_t>{-1}, at::kLong)); }, {"token id -1"});
  Palette conv = make_palette({8, 16, 3, 0, false}, 2);
  conv.shape = {8, 4, 4};
  test::expect_error([&] { PackedWeight::from_palette(conv); }, {"2-D weight"});
  Palette bad = pal;
  bad.indices = pal.indices.clone();
  bad.indices.view(-1)[5] = 8;  // outside the 8-entry LUT
  test::expect_error([&] { PackedWeight::from_palette(bad); }, {"out of range", "8-entry LUT"});
  PackedWeight w = PackedWeight::from_palette(pal);
  w.packed = w.packed.narrow(0, 0, w.packed.numel() - 1).contiguous();  // a truncated index stream
  test::expect_error([&] { functional::lut_linear(at::randn({1, 16}), w); }, {"contiguous bytes"});
  Palette empty = pal;
  empty.shape = {8, 0};
  empty.indices = at::empty({1, 0}, at::kByte);
  test::expect_error([&] { PackedWeight::from_palette(empty); }, {"empty weight", "[8, 0]"});
}

// The packed weight is fixed; x and the bias get the gradients of the dense layer on every path
// (one-pass GEMV, GEMV in passes, LUT-GEMM), and a [out, 1] bias is read as [out] on all of them.
TEST(PalettizedLinear, GradientsReachTheInputAndBiasOnEveryPath) {
  for (int64_t bits : {3, 8}) {
    const Case c{24, 40, bits, 8, true};
    const Palette pal = make_palette(c, 30 + bits);
    const PackedWeight w = PackedWeight::from_palette(pal);
    const at::Tensor dense = w.decompress();
    for (int64_t m : {1, 3, 7, 24, 40}) {
      const std::string what = "bits " + std::to_string(bits) + ", m " + std::to_string(m);
      auto g = at::make_generator<at::CPUGeneratorImpl>(m);
      const at::Tensor x0 = at::randn({m, 2, c.in}, g).transpose(0, 1);  // [2, m, in], not contiguous
      const at::Tensor b0 = at::randn({c.out, 1}, g);
      const at::Tensor r = at::randn({2, m, c.out}, g);
      at::Tensor x = x0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
      const at::Tensor y = functional::lut_linear(x, w, b);
      ASSERT_TRUE(y.requires_grad()) << what;
      (y * r).sum().backward();
      at::Tensor xd = x0.clone().requires_grad_(true), bd = b0.clone().requires_grad_(true);
      const at::Tensor yd = at::matmul(xd, dense.t()) + bd.view(-1);
      (yd * r).sum().backward();
      expect_close(y.detach(), yd.detach(), c.in, what + ": output");
      expect_close(x.grad(), xd.grad(), c.out, what + ": input gradient");
      ASSERT_EQ(b.grad().sizes(), b0.sizes()) << what;
      expect_close(b.grad(), bd.grad(), m, what + ": bias gradient");
      // Without a gradient: the same values, no graph.
      at::NoGradGuard no_grad;
      const at::Tensor y2 = functional::lut_linear(x, w, b);
      EXPECT_FALSE(y2.requires_grad()) << what;
      EXPECT_TRUE(at::equal(y2, y.detach())) << what;
    }
  }
}

// lut_linear_out writes what lut_linear returns, bit for bit, on every path (one-pass GEMV, GEMV
// in passes, LUT-GEMM, no rows) into the caller's tensor, and refuses what it cannot write into.
TEST(PalettizedLinear, OutFormEqualsTheAllocatingFormAndRefusesBadBuffers) {
  at::NoGradGuard no_grad;
  for (int64_t bits : {3, 4, 8}) {
    const Case c{40, 72, bits, 8, true};
    const PackedWeight w = PackedWeight::from_palette(make_palette(c, 70 + bits));
    auto g = at::make_generator<at::CPUGeneratorImpl>(bits);
    const at::Tensor b = at::randn({c.out}, g);
    for (int64_t m : {0, 1, 4, 9, 40, 64}) {
      const at::Tensor x = at::randn({m, c.in}, g);
      at::Tensor out = at::full({m, c.out}, std::nanf(""));
      functional::lut_linear_out(out, x, w, b);
      EXPECT_TRUE(at::equal(out, functional::lut_linear(x, w, b))) << "bits " << bits << ", m " << m;
      functional::lut_linear_out(out, x, w);
      EXPECT_TRUE(at::equal(out, functional::lut_linear(x, w))) << "bits " << bits << ", m " << m << ", no bias";
    }
  }
  const PackedWeight w = PackedWeight::from_palette(make_palette({8, 16, 3, 0, false}, 3));
  const at::Tensor x = at::randn({2, 16}), out = at::empty({2, 8});
  test::expect_error([&] { functional::lut_linear_out(at::empty({2, 7}), x, w); }, {"out must be [2, 8]"});
  test::expect_error([&] { functional::lut_linear_out(at::empty({8, 2}).t(), x, w); }, {"not contiguous"});
  test::expect_error([&] { functional::lut_linear_out(out, at::randn({16, 2}).t(), w); }, {"not contiguous"});
  test::expect_error([&] { functional::lut_linear_out(out, x.to(at::kDouble), w); }, {"contiguous fp32", "Double"});
  test::expect_error([&] { functional::lut_linear_out(out.to(at::kBFloat16), x, w); }, {"out must be"});
  test::expect_error([&] { functional::lut_linear_out(out, at::randn({2, 15}), w); }, {"input must be [rows, 16]"});
  test::expect_error([&] { functional::lut_linear_out(out, x, w, at::zeros({7})); }, {"bias must hold 8"});
  const at::Tensor shared = at::randn({2, 16});  // out over x's own memory
  test::expect_error(
      [&] {
        functional::lut_linear_out(shared.view({-1}).narrow(0, 0, 16).view({2, 8}), shared, w);
      },
      {"single memory location"});
  {
    at::AutoGradMode on(true);
    const at::Tensor xg = x.clone().requires_grad_(true);
    test::expect_error([&] { functional::lut_linear_out(out, xg, w); }, {"records no gradient", "lut_linear"});
  }
}

// The tiled CUDA GEMV unpacks a run of 32 indices from BITS aligned words (and rows2 their byte
// offsets): the same indices as
// the byte-pair unpack every other path uses, for every width (checked here on the CPU).
template <int BITS>
void expect_word_unpack_matches_stream(const std::vector<uint8_t>& bytes) {
  std::vector<uint32_t> words(bytes.size() / 4);
  std::memcpy(words.data(), bytes.data(), words.size() * 4);
  const int64_t runs = static_cast<int64_t>(words.size() / BITS) - 1;
  for (int64_t run = 0; run < runs; ++run)
    for (int j = 0; j < 32; ++j) {
      const uint32_t index = kernels::lut_index_at(bytes.data(), static_cast<uint64_t>(run * 32 + j) * BITS, BITS);
      ASSERT_EQ(kernels::lut_index_in_words<BITS>(words.data() + run * BITS, j), index)
          << BITS << " bits, run " << run << ", index " << j;
      // rows2's byte offset (its funnel shift emulated on the host)
      ASSERT_EQ(kernels::lut_index4_in_words<BITS>(words.data() + run * BITS, j), 4 * index)
          << BITS << " bits, run " << run << ", index " << j;
    }
}

TEST(PalettizedLinear, WordAlignedUnpackMatchesTheByteStream) {
  std::vector<uint8_t> bytes(4 * 8 * 64 + 16);
  uint32_t state = 12345;
  for (auto& b : bytes) b = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
  expect_word_unpack_matches_stream<1>(bytes);
  expect_word_unpack_matches_stream<2>(bytes);
  expect_word_unpack_matches_stream<3>(bytes);
  expect_word_unpack_matches_stream<4>(bytes);
  expect_word_unpack_matches_stream<5>(bytes);
  expect_word_unpack_matches_stream<6>(bytes);
  expect_word_unpack_matches_stream<7>(bytes);
  expect_word_unpack_matches_stream<8>(bytes);
}

// The CUDA GEMV kernels (rows, the default, and tiled: in % 32 == 0 and x fits in shared memory;
// warp: any shape; each forced by EDKM_LUT_CUDA_KERNEL=rows|tiled|warp where the shape allows;
// rows2: the tuned rows kernel, opt-in) and the decode / GEMM
// path against the CPU kernels, every width; 40 x 11008 with 4 rows stages 190 KB of x (past the 48 KB default: the
// opt-in limit).
TEST(PalettizedLinear, CudaEqualsTheCpuKernels) {
  EDKM_SKIP_WITHOUT_GPU();
  for (int64_t bits = 1; bits <= 8; ++bits) {
    for (const Case& c :
         {Case{70000, 8, bits, 1, true}, Case{96, 576, bits, 16, false}, Case{40, 11008, bits, 0, true}}) {
      const Palette pal = make_palette(c, 40 + bits);
      PalettizedLinear cpu(pal);
      PalettizedLinear gpu(pal);
      gpu->to(at::kCUDA);
      for (const char* kernel : {"", "rows", "rows2", "tiled", "warp"}) {
        ::setenv("EDKM_LUT_CUDA_KERNEL", kernel, 1);
        // The default path also with 7 rows of x (GEMV passes of 4 and 3) and 19 (past
        // kCudaGemvMaxRows: the decoded GEMM, which no kernel choice changes); the forced kernels
        // with 1, 2 and 4 (the sanitizer runs of this test stay short).
        const std::vector<int64_t> rows = *kernel ? std::vector<int64_t>{1, 2, 4} : std::vector<int64_t>{1, 4, 7, 19};
        for (int64_t m : rows) {
          const at::Tensor x = at::randn({m, c.in});
          expect_close(gpu(x.cuda()).cpu(), cpu(x), c.in,
                       "cuda bits " + std::to_string(bits) + " " + std::to_string(c.out) + "x" + std::to_string(c.in) +
                           " m " + std::to_string(m) + " kernel " + (*kernel ? kernel : "default"));
        }
      }
      ::unsetenv("EDKM_LUT_CUDA_KERNEL");
      PalettizedEmbedding emb(pal);
      PalettizedEmbedding emb_gpu(pal);
      emb_gpu->to(at::kCUDA);
      const at::Tensor ids = at::tensor(std::vector<int64_t>{0, c.out - 1, 5}, at::kLong);
      EXPECT_TRUE(at::equal(emb_gpu(ids.cuda()).cpu(), emb(ids)));
    }
  }
}

// More row pairs than the rows kernel has resident warps (its grid is its resident blocks: a warp
// prefetches its next pair's words during this pair's arithmetic), several steps per pair
// (4128 = 129 runs of 32), an odd row count (the last pair's second row written nowhere); and the
// GEMM path past kCudaGemvMaxRows rows of x over several decoded blocks. Apart
// from CudaEqualsTheCpuKernels so that the sanitizer runs of that one stay short.
TEST(PalettizedLinear, CudaManyRowPairsPerWarp) {
  EDKM_SKIP_WITHOUT_GPU();
  for (const int64_t bits : {3, 4, 8}) {
    torch::manual_seed(bits);
    const PackedWeight pw = PackedWeight::random(12801, 4128, bits, 0, at::kCPU, 0.5);
    PalettizedLinear cpu(pw);
    PalettizedLinear gpu(pw.to(at::kCUDA));
    for (const char* kernel : {"", "rows2", "tiled"}) {
      ::setenv("EDKM_LUT_CUDA_KERNEL", kernel, 1);
      for (int64_t m : {1, 3, 19}) {  // 19: the GEMM over 4 blocks of 64 MiB decoded
        const at::Tensor x = at::randn({m, 4128});
        expect_close(gpu(x.cuda()).cpu(), cpu(x), 4128,
                     "12801x4128 bits " + std::to_string(bits) + " m " + std::to_string(m) + " kernel " + kernel);
      }
    }
    ::unsetenv("EDKM_LUT_CUDA_KERNEL");
  }
}

}  // namespace
