#pragma once
// The safetensors container and edkm's palette entries, without LibTorch: header parsing and
// validation, header serialisation, atomic file writes, index bit-packing. Plain C++17 +
// nlohmann_json, so the fuzzer (tests/fuzz/) builds it alone with clang and libFuzzer.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON header
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<value>", ...}}
// then the byte buffer; offsets are relative to the buffer, entries tile it exactly.
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>
#include "edkm/export.h"

EDKM_INTERNAL_BEGIN
namespace edkm::io {

/// A malformed or hostile file, or an I/O failure. The message says what is wrong.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Largest header accepted (the reference implementation's limit): 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// Bytes per element of a safetensors dtype name ("F32", "BF16", "U8", ...); 0 when unknown.
size_t dtype_size(const std::string& dtype);

struct TensorEntry {
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  ///< offset of the first byte in the buffer
  uint64_t end = 0;    ///< one past the last byte
  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;
};

struct Header {
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t header_bytes = 0;  ///< N
  uint64_t data_start = 0;    ///< 8 + N: file offset of the buffer
  uint64_t buffer_bytes = 0;  ///< file size - data_start
};

/// Reads the 8-byte length prefix and checks it against the file size; returns N.
uint64_t parse_header_length(const uint8_t* prefix8, uint64_t file_size);

/// Parses and validates the JSON header `json` (N bytes) of a file of `file_size` bytes: known
/// dtypes, shape * dtype size == byte length, offsets inside the buffer, non-overlapping and
/// covering it exactly, string-to-string metadata, no unknown fields. Throws FormatError.
Header parse_header(const char* json, size_t json_bytes, uint64_t file_size);

/// parse_header_length + parse_header over a whole file held in memory.
Header parse_file(const uint8_t* data, size_t size);

/// One tensor to write: bytes in row-major order.
struct TensorBytes {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

/// The JSON header (padded with spaces to a multiple of 8 bytes) for `tensors` laid out in the
/// given order. Checks names (non-empty, unique, not "__metadata__") and sizes.
std::string serialize_header(const std::vector<TensorBytes>& tensors,
                             const std::map<std::string, std::string>& metadata);

/// Writes a safetensors file atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. On failure the destination is untouched and the temporary removed.
void write_file(const std::string& path, const std::vector<TensorBytes>& tensors,
                const std::map<std::string, std::string>& metadata);

/// Writes `nbytes` bytes to `path` atomically, as write_file does.
void write_bytes(const std::string& path, const void* data, uint64_t nbytes);

/// Bytes of `count` indices packed at `bits` bits each: ceil(count * bits / 8).
uint64_t packed_bytes(uint64_t count, int bits);
/// Packs `count` indices (each < 2^bits) LSB-first: index i occupies bits [i*bits, (i+1)*bits)
/// of the stream, stream bit j is bit (j % 8) of byte j / 8. `out` holds packed_bytes(count, bits).
void pack_indices(const uint8_t* indices, uint64_t count, int bits, uint8_t* out);
/// Inverse of pack_indices; `packed_size` must equal packed_bytes(count, bits) and the padding
/// bits of the last byte must be zero.
void unpack_indices(const uint8_t* packed, uint64_t packed_size, uint64_t count, int bits, uint8_t* out);

// --- edkm palettes inside a safetensors file ---------------------------------------------------
// A clustered weight `<name>` is stored as tensors "<name>.lut" (G x K x cluster_dim, the weight's
// dtype), "<name>.indices" (U8, packed_bytes(G * n, bits)) and, with a per-channel scale,
// "<name>.scale" (F32, rows x 1), described by the metadata entry "edkm.palette.<name>": a JSON
// object {"shape", "dtype", "bits", "granularity", "group_size", "cluster_dim", "scale"}.

constexpr const char* kPaletteKeyPrefix = "edkm.palette.";
constexpr const char* kFormatKey = "edkm.format";
constexpr const char* kFormatValue = "edkm-palette/1";

struct PaletteEntry {
  std::vector<uint64_t> shape;
  std::string dtype;  ///< safetensors dtype of the weight and its LUT
  int bits = 0;
  std::string granularity;  ///< "per_tensor" or "per_grouped_channel"
  uint64_t group_size = 0;
  uint64_t cluster_dim = 1;
  bool scale = false;
  // derived
  uint64_t groups = 1;   ///< G
  uint64_t vectors = 0;  ///< n, per group
  uint64_t numel() const;
};

/// The JSON text of the metadata entry of `p` (derived fields are not written).
std::string palette_metadata(const PaletteEntry& p);

/// Every palette described in `h`'s metadata, validated against the tensors of `h`: geometry,
/// LUT shape and dtype, index byte count for `bits`, scale presence. Throws FormatError.
std::map<std::string, PaletteEntry> parse_palettes(const Header& h);

}  // namespace edkm::io
EDKM_INTERNAL_END
