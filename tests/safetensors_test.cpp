// edkm/io/safetensors.h: round trips, atomic writes, and rejection of corrupt or hostile files.
#include <edkm/io/safetensors.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <sys/stat.h>
#include <unistd.h>

#include "temp_dir.h"
#include "test_util.h"

namespace edkm {
namespace {

struct SafetensorsTest : ::testing::Test {
  test::TempDir tmp;
  std::string path(const std::string& name) const { return tmp.path(name); }

  // A file with an explicit header length field, header text and buffer.
  std::string raw(const std::string& name, const std::string& header, const std::string& buffer,
                  std::optional<uint64_t> length = std::nullopt) {
    const uint64_t n = length.value_or(header.size());
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    bytes += header + buffer;
    std::ofstream(path(name), std::ios::binary) << bytes;
    return path(name);
  }
};

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  SafetensorsFile f;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  f.tensors["f32"] = at::randn({3, 5}, gen);
  f.tensors["f64"] = at::randn({4}, gen, at::kDouble);
  f.tensors["bf16"] = at::randn({2, 3, 4}, gen).to(at::kBFloat16);
  f.tensors["f16"] = at::randn({7}, gen).to(at::kHalf);
  f.tensors["i64"] = at::arange(-5, 5, at::kLong);
  f.tensors["i32"] = at::arange(0, 9, at::kInt).reshape({3, 3});
  f.tensors["u8"] = at::arange(0, 256, at::kInt).to(at::kByte);
  f.tensors["bool"] = at::randn({6}, gen) > 0;
  f.tensors["strided"] = at::randn({4, 6}, gen).t();  // non-contiguous
  f.tensors["scalar"] = at::scalar_tensor(3.5);
  f.tensors["empty"] = at::empty({0, 3});
  f.metadata = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}};
  save_safetensors(path("a.safetensors"), f);
  auto back = load_safetensors(path("a.safetensors"));
  EXPECT_EQ(back.metadata, f.metadata);
  ASSERT_EQ(back.tensors.size(), f.tensors.size());
  for (const auto& [name, t] : f.tensors) {
    const auto& b = back.tensors.at(name);
    EXPECT_EQ(b.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(b.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(b, t)) << name;
  }
  // 8-byte length, header padded to 8 bytes, then exactly the tensor bytes.
  const std::string bytes = read_bytes(path("a.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  int64_t data = 0;
  for (const auto& [name, t] : f.tensors) data += static_cast<int64_t>(t.nbytes());
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), 8 + static_cast<int64_t>(n) + data);
}

TEST_F(SafetensorsTest, WritesAtomically) {
  SafetensorsFile f;
  f.tensors["x"] = at::ones({16});
  save_safetensors(path("x.safetensors"), f);
  f.tensors["x"] = at::zeros({16});
  save_safetensors(path("x.safetensors"), f);  // replaces the file
  EXPECT_TRUE(at::equal(load_safetensors(path("x.safetensors")).tensors.at("x"), at::zeros({16})));
  // A write that fails after the data went out (the final rename onto a directory) removes its
  // temporary file; one refused up front leaves the old file as it was.
  ASSERT_EQ(::mkdir(path("a_directory").c_str(), 0755), 0);
  test::expect_error([&] { save_safetensors(path("a_directory"), f); }, {"renaming"});
  f.tensors["bad"] = at::zeros({2}, at::kComplexFloat);
  test::expect_error([&] { save_safetensors(path("x.safetensors"), f); }, {"no dtype"});
  EXPECT_TRUE(at::equal(load_safetensors(path("x.safetensors")).tensors.at("x"), at::zeros({16})));
  auto entries = tmp.entries();
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"a_directory", "x.safetensors"}));
  f.tensors.erase("bad");
  test::expect_error([&] { save_safetensors(path("missing_dir/y.safetensors"), f); }, {"cannot create"});
}

// Replacing a file keeps its permission bits; a symlink is written through (the link stays, its
// target gets the new contents); the temporary of a writer killed before its rename (its process
// gone) is removed by the next write of that file.
TEST_F(SafetensorsTest, OverwritesKeepModeLinksAndNoLeftovers) {
  SafetensorsFile f;
  f.tensors["x"] = at::ones({4});
  save_safetensors(path("m.safetensors"), f);
  ASSERT_EQ(::chmod(path("m.safetensors").c_str(), 0600), 0);
  save_safetensors(path("m.safetensors"), f);
  struct stat st {};
  ASSERT_EQ(::stat(path("m.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::symlink("m.safetensors", path("link.safetensors").c_str()), 0);
  f.tensors["x"] = at::zeros({4});
  save_safetensors(path("link.safetensors"), f);
  ASSERT_EQ(::lstat(path("link.safetensors").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_TRUE(at::equal(load_safetensors(path("m.safetensors")).tensors.at("x"), at::zeros({4})));
  // A pid that no process has (above the kernel's pid_max) stands for a killed writer.
  std::ofstream(path("m.safetensors.tmp.99999999.0")) << "partial";
  std::ofstream(path("m.safetensors.tmp.notapid")) << "someone else's";
  save_safetensors(path("m.safetensors"), f);
  auto entries = tmp.entries();
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"link.safetensors", "m.safetensors", "m.safetensors.tmp.notapid"}));
}

TEST_F(SafetensorsTest, RejectsEveryTruncation) {
  SafetensorsFile f;
  f.tensors["a"] = at::arange(0, 10, at::kFloat);
  f.tensors["b"] = at::arange(0, 3, at::kLong);
  f.metadata["k"] = "v";
  save_safetensors(path("full.safetensors"), f);
  const std::string bytes = read_bytes(path("full.safetensors"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::ofstream(path("cut.safetensors"), std::ios::binary | std::ios::trunc) << bytes.substr(0, n);
    EXPECT_THROW(load_safetensors(path("cut.safetensors")), c10::Error) << n << " bytes";
  }
}

TEST_F(SafetensorsTest, RejectsHostileHeaders) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string eight(8, '\0');
  EXPECT_NO_THROW(load_safetensors(raw("ok", ok, eight)));
  test::expect_error([&] { load_safetensors(raw("f", ok, eight, ~uint64_t{0})); }, {"header length", "exceeds"});
  test::expect_error([&] { load_safetensors(raw("f", ok, eight, ok.size() + 9)); }, {"larger than", "truncated"});
  // A file of `header` and `data`, refused with an error naming every one of `parts`.
  auto rejected = [&](const std::string& header, const std::string& data, std::initializer_list<std::string> parts) {
    test::expect_error([&] { load_safetensors(raw("f", header, data)); }, parts);
  };
  rejected("{not json at all", eight, {"not valid JSON"});
  rejected(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      eight, {"the key \"a\" twice"});
  rejected(
      R"({"__metadata__":{"k":"1"},"__metadata__":{"k":"2"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      eight, {"__metadata__", "twice"});
  rejected("[1,2]   ", eight, {"must be a JSON object"});
  rejected(std::string(64, '[') + std::string(64, ']'), "", {"nested deeper"});
  rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight, {"'a'", "past the 8-byte buffer"});
  rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           eight, {"overlaps"});
  rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight, {"bytes 0..4", "belong to no tensor"});
  rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight, {"cover 4 of the 8"});
  rejected(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight, {"unsupported dtype 'F33'"});
  rejected(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", eight, {"needs 16 bytes", "span 8"});
  rejected(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", eight, {"reversed"});
  rejected(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", eight, {"overflows"});
  rejected(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight, {"non-negative integer"});
  // A zero dimension keeps the product 0, but the other would not fit a tensor's int64 size.
  rejected(R"({"a":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]},)"
           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
           eight, {"'a'", "18446744073709551615", "out of range"});
  rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", eight, {"unknown field 'extra'"});
  rejected(R"({"a":{"dtype":"F32","shape":[2]}})", eight, {"data_offsets"});
  rejected(R"({"__metadata__":{"k":1}})", "", {"'k'", "must be a string"});
  test::expect_error([&] { load_safetensors(path("does_not_exist")); }, {"cannot open"});
}

}  // namespace
}  // namespace edkm
