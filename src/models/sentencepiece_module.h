// The C interface of libedkm_sentencepiece, the module through which edkm uses SentencePiece.
//
// Why a module: Debian's libsentencepiece.so exports an `absl::Flag<int> FLAGS_minloglevel` (32
// bytes) and LibTorch's libc10.so a 4-byte `int FLAGS_minloglevel`. Linked into one process, the
// dynamic linker binds sentencepiece's reference to c10's object (libc10 comes first in the lookup
// order), and sentencepiece's static constructor writes 32 bytes over c10's .bss: among others
// FLAGS_caffe2_use_fatal_for_enforce, which turns every failed CPU allocation into an abort
// (exit 134) instead of a c10::Error. libedkm_llama therefore does not link SentencePiece; it
// dlopens this module, with RTLD_DEEPBIND, the first time a SentencePiece model is used, so the
// module's and sentencepiece's references bind to their own symbols first. GGUF and BPE runs never
// load it. Nothing C++ crosses the boundary: results come back through sink callbacks, errors as
// text in the caller's buffer.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

/// Bumped whenever a signature below changes; the loader refuses a module of another version.
#define EDKM_SPM_ABI_VERSION 1

typedef void (*edkm_spm_ids_sink)(void* ctx, const int* ids, size_t n);
typedef void (*edkm_spm_bytes_sink)(void* ctx, const char* data, size_t n);

typedef int (*edkm_spm_abi_version_fn)(void);
typedef int (*edkm_spm_has_trainer_fn)(void);
/// The functions returning int return 0 on success, otherwise write a NUL-terminated message
/// (truncated to err_size) into err and return nonzero.
typedef int (*edkm_spm_load_fn)(const char* model_file, void** handle, char* err, size_t err_size);
typedef void (*edkm_spm_free_fn)(void* handle);
typedef int (*edkm_spm_info_fn)(const void* handle, int64_t* vocab_size, int64_t* bos_id, int64_t* eos_id);
typedef int (*edkm_spm_encode_fn)(const void* handle, const char* text, size_t size, edkm_spm_ids_sink sink, void* ctx,
                                  char* err, size_t err_size);
typedef int (*edkm_spm_decode_fn)(const void* handle, const int* ids, size_t n, edkm_spm_bytes_sink sink, void* ctx,
                                  char* err, size_t err_size);
/// Trains on text_file (one sentence per line) and hands the serialized model to sink.
typedef int (*edkm_spm_train_fn)(const char* text_file, int64_t vocab_size, const char* model_type,
                                 edkm_spm_bytes_sink sink, void* ctx, char* err, size_t err_size);
}
