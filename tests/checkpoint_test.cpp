// edkm/io/checkpoint.h: bit-packing, bit-exact round trips of palettes, decompression, strict
// loading into modules, and rejection of inconsistent palette entries.
#include <edkm/io/checkpoint.h>
#include <edkm/io/safetensors.h>
#include <torch/nn/modules/linear.h>

#include <limits>

#include "io/safetensors_core.h"
#include "temp_dir.h"
#include "test_util.h"

namespace edkm {
namespace {

struct CheckpointTest : ::testing::Test {
  test::TempDir tmp;
  std::string path(const std::string& name) const { return tmp.path(name); }
};

TEST(PackIndices, LayoutIsLsbFirst) {
  // 3-bit indices 1, 2, 3: bits 0-2 = 001, bits 3-5 = 010, bits 6-8 = 011 -> 0b11'010'001, 0b0
  const uint8_t idx[] = {1, 2, 3};
  uint8_t out[2] = {0xff, 0xff};
  io::pack_indices(idx, 3, 3, out);
  EXPECT_EQ(out[0], 0b11010001);
  EXPECT_EQ(out[1], 0);
  // 5 bits: 31 in bits 0-4, 0 in bits 5-9, 17 = 10001b in bits 10-14 (bits 10 and 14 set)
  const uint8_t idx5[] = {31, 0, 17};
  uint8_t out5[2];
  io::pack_indices(idx5, 3, 5, out5);
  EXPECT_EQ(out5[0], 0x1f);
  EXPECT_EQ(out5[1], 0b01000100);
}

TEST(PackIndices, RoundTripsEveryWidthAndCount) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (int bits = 1; bits <= 8; ++bits) {
    for (uint64_t count : {0, 1, 7, 8, 9, 1001}) {
      auto idx = at::randint(0, 1 << bits, {static_cast<int64_t>(count)}, gen, at::kByte);
      EXPECT_EQ(io::packed_bytes(count, bits), (count * bits + 7) / 8);
      std::vector<uint8_t> packed(io::packed_bytes(count, bits)), back(count);
      io::pack_indices(idx.data_ptr<uint8_t>(), count, bits, packed.data());
      io::unpack_indices(packed.data(), packed.size(), count, bits, back.data());
      EXPECT_TRUE(std::equal(back.begin(), back.end(), idx.data_ptr<uint8_t>())) << bits << " " << count;
      // The layout bit by bit (the 8-at-a-time paths against the definition): bit t of index i is
      // stream bit i * bits + t, LSB-first.
      for (uint64_t i = 0; i < count; ++i)
        for (int t = 0; t < bits; ++t) {
          const uint64_t b = i * bits + t;
          ASSERT_EQ((packed[b / 8] >> (b % 8)) & 1, (idx.data_ptr<uint8_t>()[i] >> t) & 1) << bits << " " << i;
        }
    }
  }
  const uint8_t big[] = {8};
  uint8_t out[1];
  EXPECT_THROW(io::pack_indices(big, 1, 3, out), io::FormatError);
  const uint8_t nine[] = {1, 2, 3, 4, 5, 6, 9, 7, 0};  // 9 in the first group of 8 does not fit 3 bits
  uint8_t out9[4];
  try {
    io::pack_indices(nine, 9, 3, out9);
    ADD_FAILURE() << "an index of 9 packed into 3 bits";
  } catch (const io::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("index 9 does not fit in 3 bits"), std::string::npos) << e.what();
  }
  const uint8_t padded[] = {0b10000001};  // one 3-bit index, padding bit 7 set
  uint8_t one[1];
  EXPECT_THROW(io::unpack_indices(padded, 1, 1, 3, one), io::FormatError);
  EXPECT_THROW(io::unpack_indices(padded, 1, 4, 3, one), io::FormatError);  // 4 indices need 2 bytes
}

std::vector<std::pair<std::string, Palette>> sample_palettes() {
  std::vector<std::pair<std::string, Palette>> out;
  auto add = [&](const std::string& name, at::Tensor w, DKMOptions o) {
    at::Tensor s = o.per_channel_scale() ? functional::channel_scale(w, o.scale_scheme()) : at::Tensor();
    out.emplace_back(name, Palette::from_centroids(w, functional::init_centroids(w, o, s), o, s));
  };
  for (int bits = 1; bits <= 8; ++bits)
    add("bits" + std::to_string(bits), test::llm_like({24, 40}, bits), DKMOptions(bits).engine(Engine::kDense));
  add("bf16", test::llm_like({16, 48}, 11, at::kBFloat16), DKMOptions(3).engine(Engine::kDense));
  add("f16", test::llm_like({16, 48}, 12, at::kHalf), DKMOptions(4).engine(Engine::kDense));
  add("grouped.scaled", test::llm_like({32, 20}, 13),
      DKMOptions(3)
          .engine(Engine::kDense)
          .granularity(Granularity::kPerGroupedChannel)
          .group_size(8)
          .per_channel_scale(true));
  add("vector", test::llm_like({16, 12}, 14), DKMOptions(2).engine(Engine::kDense).cluster_dim(2));
  add("conv", test::llm_like({8, 4, 3, 3}, 15), DKMOptions(3).engine(Engine::kDense));
  return out;
}

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  CompressedCheckpoint ckpt;
  for (auto& [name, p] : sample_palettes()) ckpt.palettes[name + ".weight"] = p;
  ckpt.tensors["bias"] = test::llm_like({24}, 20);
  ckpt.tensors["steps"] = at::arange(0, 5, at::kLong);
  ckpt.metadata["model"] = "tiny";
  save_compressed(path("m.safetensors"), ckpt);
  const auto back = load_compressed(path("m.safetensors"));
  EXPECT_EQ(back.metadata, ckpt.metadata);
  ASSERT_EQ(back.palettes.size(), ckpt.palettes.size());
  for (const auto& [name, p] : ckpt.palettes) {
    const auto& q = back.palettes.at(name);
    EXPECT_TRUE(at::equal(q.lut, p.lut)) << name;
    EXPECT_EQ(q.lut.scalar_type(), p.lut.scalar_type()) << name;
    EXPECT_TRUE(at::equal(q.indices, p.indices)) << name;
    EXPECT_EQ(q.scale.defined(), p.scale.defined()) << name;
    if (p.scale.defined()) EXPECT_TRUE(at::equal(q.scale, p.scale)) << name;
    EXPECT_EQ(q.shape, p.shape);
    EXPECT_EQ(q.dtype, p.dtype);
    EXPECT_EQ(q.bits, p.bits);
    EXPECT_EQ(q.granularity, p.granularity);
    EXPECT_EQ(q.group_size, p.group_size);
    EXPECT_EQ(q.cluster_dim, p.cluster_dim);
    EXPECT_TRUE(at::equal(q.decompress(), p.decompress())) << name;
  }
  for (const auto& [name, t] : ckpt.tensors) EXPECT_TRUE(at::equal(back.tensors.at(name), t)) << name;
  // The file is exactly the tensors plus the header.
  EXPECT_EQ(back.tensor_bytes(), ckpt.tensor_bytes());
  EXPECT_GT(static_cast<int64_t>(test::file_size(path("m.safetensors"))), ckpt.tensor_bytes());
}

TEST_F(CheckpointTest, DecompressesToAPlainCheckpoint) {
  CompressedCheckpoint ckpt;
  for (auto& [name, p] : sample_palettes()) ckpt.palettes[name] = p;
  ckpt.tensors["plain"] = at::ones({3});
  ckpt.metadata["who"] = "test";
  save_compressed(path("c.safetensors"), ckpt);
  decompress_checkpoint(path("c.safetensors"), path("plain.safetensors"));
  const auto plain = load_safetensors(path("plain.safetensors"));
  EXPECT_EQ(plain.metadata, ckpt.metadata);
  const auto expect = ckpt.decompress();
  ASSERT_EQ(plain.tensors.size(), expect.size());
  for (const auto& [name, t] : expect) {
    EXPECT_TRUE(at::equal(plain.tensors.at(name), t)) << name;
    EXPECT_EQ(plain.tensors.at(name).scalar_type(), t.scalar_type()) << name;
  }
  // A plain file loads as a checkpoint without palettes.
  const auto as_ckpt = load_compressed(path("plain.safetensors"));
  EXPECT_TRUE(as_ckpt.palettes.empty());
  EXPECT_EQ(as_ckpt.tensors.size(), expect.size());
}

TEST_F(CheckpointTest, LoadsStrictlyIntoModules) {
  torch::nn::Linear fc(4, 3);
  std::map<std::string, at::Tensor> t = {{"weight", at::ones({3, 4})}, {"bias", at::zeros({3})}};
  load_tensors(*fc, t);
  EXPECT_TRUE(at::equal(fc->weight, at::ones({3, 4})));
  EXPECT_TRUE(fc->weight.requires_grad());
  auto missing = t;
  missing.erase("bias");
  test::expect_error([&] { load_tensors(*fc, missing); }, {"no tensor 'bias'"});
  auto extra = t;
  extra["other"] = at::ones({1});
  test::expect_error([&] { load_tensors(*fc, extra); }, {"'other'", "not a parameter"});
  auto wrong = t;
  wrong["bias"] = at::zeros({4});
  test::expect_error([&] { load_tensors(*fc, wrong); }, {"'bias'", "shape"});
}

// The metadata JSON of a palette of an F32 weight of `shape` ("4,4"), cluster_dim 1, no scale.
std::string palette_meta(const std::string& shape, int bits, const std::string& granularity = "per_tensor",
                         int group_size = 0) {
  return R"({"shape":[)" + shape + R"(],"dtype":"F32","bits":)" + std::to_string(bits) + R"(,"granularity":")" +
         granularity + R"(","group_size":)" + std::to_string(group_size) + R"(,"cluster_dim":1,"scale":false})";
}

// A palette entry written with a hand-made metadata JSON and tensors.
struct Crafted {
  std::string meta = palette_meta("4,4", 3);
  at::Tensor lut = at::zeros({1, 8, 1});
  at::Tensor indices = at::zeros({6}, at::kByte);  // 16 indices * 3 bits = 6 bytes
  at::Tensor scale;
  std::string format = "edkm-palette/1";
  void write(const std::string& p) const {
    SafetensorsFile f;
    f.metadata["edkm.palette.w"] = meta;
    f.metadata["edkm.format"] = format;
    f.tensors["w.lut"] = lut;
    f.tensors["w.indices"] = indices;
    if (scale.defined()) f.tensors["w.scale"] = scale;
    save_safetensors(p, f);
  }
};

TEST_F(CheckpointTest, RejectsInconsistentPalettes) {
  const std::string p = path("bad.safetensors");
  auto rejects = [&](const Crafted& c, std::initializer_list<std::string> parts) {
    c.write(p);
    test::expect_error([&] { load_compressed(p); }, parts);
  };
  Crafted ok;
  ok.write(p);
  EXPECT_EQ(load_compressed(p).palettes.at("w").decompress().sizes(), (std::vector<int64_t>{4, 4}));

  Crafted bits;  // metadata says 4 bits: 16 indices need 8 bytes, the file has 6
  bits.meta = palette_meta("4,4", 4);
  bits.lut = at::zeros({1, 16, 1});
  rejects(bits, {"palette 'w'", "16 indices of 4 bits need U8 [8]"});
  Crafted lut;
  lut.lut = at::zeros({1, 4, 1});
  rejects(lut, {"LUT is F32 [1, 4, 1], expected F32 [1, 8, 1]"});
  Crafted dtype;
  dtype.lut = at::zeros({1, 8, 1}, at::kDouble);
  rejects(dtype, {"LUT is F64"});
  Crafted idx_dtype;
  idx_dtype.indices = at::zeros({6}, at::kChar);
  rejects(idx_dtype, {"indices are I8"});
  Crafted padding;  // 16 * 3 = 48 bits: no padding; use 15 elements -> 45 bits, 6 bytes, 3 padding bits
  padding.meta = palette_meta("3,5", 3);
  padding.indices = at::full({6}, 0xff, at::kByte);
  rejects(padding, {"padding bits"});
  Crafted groups;
  groups.meta = palette_meta("4,4", 3, "per_grouped_channel", 3);
  rejects(groups, {"group_size 3 does not divide the 4 rows"});
  Crafted gran;
  gran.meta = palette_meta("4,4", 3, "per_row");
  rejects(gran, {"unknown granularity 'per_row'"});
  Crafted scale;
  scale.scale = at::ones({4, 1});
  rejects(scale, {"'w.scale' is present but the metadata says no scale"});
  Crafted lacks;
  lacks.meta = R"({"shape":[4,4],"dtype":"F32","bits":3})";
  rejects(lacks, {"lacks 'granularity'"});
  Crafted not_json;
  not_json.meta = "{shape";
  rejects(not_json, {"not valid JSON"});
  Crafted big_bits;
  big_bits.meta = palette_meta("4,4", 9);
  rejects(big_bits, {"bits must be in 1..8, got 9"});
  Crafted version;
  version.format = "edkm-palette/99";
  rejects(version, {"unsupported format 'edkm-palette/99'"});
  Crafted nan_lut;  // the layout is fine; a NaN entry would become every weight indexing it
  nan_lut.lut = at::zeros({1, 8, 1});
  nan_lut.lut[0][5][0] = std::numeric_limits<float>::quiet_NaN();
  rejects(nan_lut, {"palette 'w'", "LUT entry that is NaN or infinite"});
}

TEST_F(CheckpointTest, RejectsBadPalettesOnSave) {
  CompressedCheckpoint ckpt;
  auto p = sample_palettes().front().second;
  ckpt.palettes["w"] = p;
  ckpt.metadata["edkm.mine"] = "x";
  test::expect_error([&] { save_compressed(path("x"), ckpt); }, {"reserved"});
  ckpt.metadata.clear();
  ckpt.tensors["w"] = at::ones({1});
  test::expect_error([&] { save_compressed(path("x"), ckpt); }, {"'w' is both a palette and a plain tensor"});
  ckpt.tensors.clear();
  ckpt.palettes["w"].indices = at::full_like(p.indices, 3);  // 1-bit palette with index 3
  test::expect_error([&] { save_compressed(path("x"), ckpt); }, {"does not fit in 1 bits"});
  ckpt.palettes["w"] = p;  // what load_compressed refuses is not written: a NaN LUT entry
  ckpt.palettes["w"].lut = p.lut.clone();
  ckpt.palettes["w"].lut.view({-1})[0] = std::nan("");
  test::expect_error([&] { save_compressed(path("x"), ckpt); }, {"LUT entry that is NaN or infinite"});
  EXPECT_EQ(test::file_size(path("x")), -1);
}

}  // namespace
}  // namespace edkm
