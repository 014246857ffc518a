#pragma once
// Small file helpers used across edkm (checkpoints, examples, benchmarks). No LibTorch headers;
// failures throw c10::Error naming the path.
#include <string>

#include "edkm/export.h"

namespace edkm {

/// mkdir -p: creates `dir` and its missing parents; throws c10::Error when it cannot.
EDKM_API void make_directories(const std::string& dir);
/// Writes `content` to `path` atomically (temporary file, fsync, rename): a failed write leaves
/// what was at `path` untouched.
EDKM_API void write_text_file(const std::string& path, const std::string& content);
/// Reads a whole file; throws c10::Error when it cannot be read.
EDKM_API std::string read_text_file(const std::string& path);
/// Whether `path` names a regular file (following links; nothing there, or a directory: false).
EDKM_API bool is_file(const std::string& path);
/// Whether `path` names a directory (following links).
EDKM_API bool is_directory(const std::string& path);

}  // namespace edkm
