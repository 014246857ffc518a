// libedkm_sentencepiece: SentencePiece behind a C interface (why: sentencepiece_module.h).
#include "models/sentencepiece_module.h"

#include <sentencepiece_processor.h>
#if defined(EDKM_WITH_SENTENCEPIECE_TRAINER)
#include <sentencepiece_trainer.h>
#endif

#include <algorithm>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#define EDKM_SPM_EXPORT __attribute__((visibility("default")))

namespace {

int fail(char* err, size_t err_size, const std::string& message) {
  if (err && err_size > 0) {
    const size_t n = std::min(message.size(), err_size - 1);
    std::memcpy(err, message.data(), n);
    err[n] = '\0';
  }
  return 1;
}

// Runs f, turning a C++ exception into an error message: none may cross the C boundary.
template <class F>
int guarded(char* err, size_t err_size, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return fail(err, err_size, e.what());
  } catch (...) {
    return fail(err, err_size, "unknown exception in SentencePiece");
  }
}

}  // namespace

extern "C" {

EDKM_SPM_EXPORT int edkm_spm_abi_version(void) { return EDKM_SPM_ABI_VERSION; }

EDKM_SPM_EXPORT int edkm_spm_has_trainer(void) {
#if defined(EDKM_WITH_SENTENCEPIECE_TRAINER)
  return 1;
#else
  return 0;
#endif
}

EDKM_SPM_EXPORT int edkm_spm_load(const char* model_file, void** handle, char* err, size_t err_size) {
  *handle = nullptr;
  return guarded(err, err_size, [&] {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = sp->Load(model_file);
    if (!status.ok()) return fail(err, err_size, status.ToString());
    *handle = sp.release();
    return 0;
  });
}

EDKM_SPM_EXPORT void edkm_spm_free(void* handle) { delete static_cast<sentencepiece::SentencePieceProcessor*>(handle); }

EDKM_SPM_EXPORT int edkm_spm_info(const void* handle, int64_t* vocab_size, int64_t* bos_id, int64_t* eos_id) {
  const auto& sp = *static_cast<const sentencepiece::SentencePieceProcessor*>(handle);
  *vocab_size = sp.GetPieceSize();
  *bos_id = sp.bos_id();
  *eos_id = sp.eos_id();
  return 0;
}

EDKM_SPM_EXPORT int edkm_spm_encode(const void* handle, const char* text, size_t size, edkm_spm_ids_sink sink,
                                    void* ctx, char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    const auto& sp = *static_cast<const sentencepiece::SentencePieceProcessor*>(handle);
    std::vector<int> ids;
    const auto status = sp.Encode(std::string(text, size), &ids);
    if (!status.ok()) return fail(err, err_size, status.ToString());
    sink(ctx, ids.data(), ids.size());
    return 0;
  });
}

EDKM_SPM_EXPORT int edkm_spm_decode(const void* handle, const int* ids, size_t n, edkm_spm_bytes_sink sink, void* ctx,
                                    char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    const auto& sp = *static_cast<const sentencepiece::SentencePieceProcessor*>(handle);
    std::string out;
    const auto status = sp.Decode(std::vector<int>(ids, ids + n), &out);
    if (!status.ok()) return fail(err, err_size, status.ToString());
    sink(ctx, out.data(), out.size());
    return 0;
  });
}

EDKM_SPM_EXPORT int edkm_spm_train(const char* text_file, int64_t vocab_size, const char* model_type,
                                   edkm_spm_bytes_sink sink, void* ctx, char* err, size_t err_size) {
#if defined(EDKM_WITH_SENTENCEPIECE_TRAINER)
  return guarded(err, err_size, [&] {
    // The trainer's options are one space-separated string: paths go around it (a path with a
    // space broke --input / --model_prefix), the lines through an iterator, the model back as bytes.
    struct Lines : sentencepiece::SentenceIterator {
      std::ifstream in;
      std::string line;
      bool end = false;
      explicit Lines(const char* path) : in(path) { Next(); }
      bool done() const override { return end; }
      void Next() override { end = !std::getline(in, line); }
      const std::string& value() const override { return line; }
      sentencepiece::util::Status status() const override { return {}; }
    } lines(text_file);
    if (!lines.in.is_open()) return fail(err, err_size, std::string("cannot read ") + text_file);
    const std::string args = "--vocab_size=" + std::to_string(vocab_size) + " --model_type=" + model_type +
                             " --character_coverage=1.0 --byte_fallback=true --minloglevel=2 --num_threads=1";
    std::string model;
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
    if (!status.ok()) return fail(err, err_size, status.ToString());
    sink(ctx, model.data(), model.size());
    return 0;
  });
#else
  return fail(err, err_size, "libedkm_sentencepiece was built without libsentencepiece_train");
#endif
}

}  // extern "C"
