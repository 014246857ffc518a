// Tokenizers: byte round trip, SentencePiece trained here on a real text then loaded back
// (round trip, special ids), and bad files rejected.
#include <ATen/ops/empty.h>
#include <c10/util/Logging.h>
#include <edkm/models/llama_io.h>
#include <edkm/models/tokenizer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <thread>

#include "temp_dir.h"
#include "test_util.h"

namespace {

TEST(Tokenizer, BytesRoundTripAnyString) {
  edkm::ByteTokenizer tok;
  std::string text = "Hello, w\xc3\xb6rld!\n";
  text.push_back('\0');
  text += "\xff\x01";
  const auto ids = tok.encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.decode({tok.bos_id(), 72, 105, tok.eos_id()}), "Hi");
  edkm::test::expect_error([&] { tok.decode({258}); }, {"258", "outside"});
  EXPECT_EQ(edkm::load_tokenizer("bytes")->vocab_size(), 258);
}

TEST(Tokenizer, SentencePieceTrainedAndLoaded) {
  if (!edkm::has_sentencepiece_trainer()) GTEST_SKIP() << "built without the SentencePiece trainer";
  edkm::test::TempDir dir;
  // A few hundred lines of English: the licence texts every Debian system has.
  std::string text;
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"}) {
    text += edkm::read_text_file(f);
  }
  edkm::write_text_file(dir.path("train.txt"), text);
  edkm::train_sentencepiece(dir.path("train.txt"), dir.path("sp"), 500);
  auto tok = edkm::load_tokenizer(dir.path("sp.model"));
  EXPECT_EQ(tok->vocab_size(), 500);
  EXPECT_GE(tok->bos_id(), 0);
  EXPECT_GE(tok->eos_id(), 0);
  const std::string sample = "This program is free software: you can redistribute it.";
  const auto ids = tok->encode(sample);
  EXPECT_LT(ids.size(), sample.size() / 2);  // merges, not characters
  EXPECT_EQ(tok->decode(ids), sample);
  // Byte fallback: text outside the training alphabet still round trips.
  EXPECT_EQ(tok->decode(tok->encode("\xe6\x97\xa5\xe6\x9c\xac")), "\xe6\x97\xa5\xe6\x9c\xac");
  // A directory holding tokenizer.model loads too (the layout of Hugging Face checkpoints).
  ::mkdir(dir.path("ckpt").c_str(), 0755);
  edkm::write_text_file(dir.path("ckpt/tokenizer.model"), edkm::read_text_file(dir.path("sp.model")));
  EXPECT_EQ(edkm::load_tokenizer(dir.path("ckpt"))->encode(sample), ids);
  edkm::test::expect_error([&] { tok->decode({500}); }, {"500", "outside"});
}

bool sentencepiece_mapped() {
  std::ifstream maps("/proc/self/maps");
  const std::string text((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
  return text.find("libsentencepiece") != std::string::npos;
}

// Debian's libsentencepiece exports a 32-byte FLAGS_minloglevel that libc10's 4-byte one used to
// stand in for: sentencepiece's constructor wrote over c10's statics, turning a failed allocation
// into an abort (FLAGS_caffe2_use_fatal_for_enforce). Now it loads, in its own module, only when a
// SentencePiece model is used, and c10 is left as it was.
TEST(Tokenizer, SentencePieceLeavesLibTorchsStateAlone) {
  if (!edkm::has_sentencepiece_trainer()) GTEST_SKIP() << "built without the SentencePiece trainer";
  edkm::test::TempDir dir;
  edkm::write_text_file(dir.path("train.txt"), edkm::read_text_file("/usr/share/common-licenses/GPL-3"));
  edkm::train_sentencepiece(dir.path("train.txt"), dir.path("sp"), 500);
  const auto tok = edkm::load_tokenizer(dir.path("sp.model"));
  EXPECT_EQ(tok->decode(tok->encode("free software")), "free software");
  EXPECT_TRUE(sentencepiece_mapped());
  EXPECT_FALSE(FLAGS_caffe2_use_fatal_for_enforce);
  EXPECT_NE(edkm::sentencepiece_status().find("libedkm_sentencepiece"), std::string::npos);
  // The module's C and C++ runtimes are its own: calls from the program's threads still agree.
  const std::string text = edkm::read_text_file("/usr/share/common-licenses/GPL-3").substr(0, 4000);
  const auto expected = tok->encode(text);
  const std::string decoded = tok->decode(expected);  // normalised: runs of spaces and newlines become one
  std::vector<std::thread> threads;
  std::atomic<int> same{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) same += tok->encode(text) == expected && tok->decode(expected) == decoded;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(same.load(), 80);
  // A petabyte cannot be allocated: that is a c10::Error to catch, not the end of the process.
  EXPECT_THROW(at::empty({int64_t(1) << 50}, at::kByte), c10::Error);
}

TEST(Tokenizer, RejectsBadModels) {
  edkm::test::TempDir dir;
  edkm::test::expect_error([&] { edkm::load_tokenizer(dir.path("none.model")); }, {"none.model", "does not exist"});
  if (!edkm::has_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
  edkm::write_text_file(dir.path("bad.model"), "this is not a protobuf");
  edkm::test::expect_error([&] { edkm::load_tokenizer(dir.path("bad.model")); }, {"bad.model"});
  edkm::test::expect_error([&] { edkm::load_tokenizer(dir.path("")); }, {"tokenizer.model", "\"bytes\""});
}

}  // namespace
