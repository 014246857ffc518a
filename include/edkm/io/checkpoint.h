#pragma once
// The compressed checkpoint format: palettized weights (LUT + bit-packed indices) and plain
// tensors in one safetensors file, readable by the Python `safetensors` package.
//
// For a clustered weight "<name>" (e.g. "layers.0.mlp.up.weight") the file holds
//   "<name>.lut"      G x K x cluster_dim, the weight's dtype (K = 2^bits, G LUTs)
//   "<name>.indices"  U8 [ceil(G * n * bits / 8)]: the G x n indices (row-major) packed LSB-first,
//                     index i in bits [i*bits, (i+1)*bits) of the byte stream, bit j of the stream
//                     = bit (j % 8) of byte j / 8; padding bits are zero
//   "<name>.scale"    F32 rows x 1, only with a per-channel scale
// and the `__metadata__` entry "edkm.palette.<name>" = JSON
//   {"shape": [..], "dtype": "BF16", "bits": 3, "granularity": "per_tensor" | "per_grouped_channel",
//    "group_size": 0, "cluster_dim": 1, "scale": false}
// plus "edkm.format" = "edkm-palette/1". Every other tensor is stored as it is. A weight is
// rebuilt as Palette::decompress() does: lut[g, index] (times the row's scale), reshaped.
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "edkm/dkm/palette.h"
#include "edkm/export.h"

namespace torch::nn {
class Module;
}

namespace edkm {

/// A model in compressed form: palettes of the clustered weights, other tensors plainly.
///
/// Example:
///   edkm::CompressedCheckpoint ckpt;
///   ckpt.palettes["fc.weight"] = dkm->finalize(fc->weight);
///   ckpt.tensors["fc.bias"] = fc->bias;
///   edkm::save_compressed("model.edkm.safetensors", ckpt);
///   auto weights = edkm::load_compressed("model.edkm.safetensors").decompress();
struct EDKM_API CompressedCheckpoint {
  std::map<std::string, Palette> palettes;      ///< by tensor name
  std::map<std::string, at::Tensor> tensors;    ///< stored plainly
  std::map<std::string, std::string> metadata;  ///< user metadata; keys starting "edkm." are reserved

  /// Every tensor of the model: the palettes decompressed (CPU) and the plain tensors.
  std::map<std::string, at::Tensor> decompress() const;
  /// Bytes the tensors take in the file (packed indices, LUTs, scales, plain tensors).
  int64_t tensor_bytes() const;
};

/// Writes `ckpt` atomically. Throws c10::Error on an inconsistent palette or a name clash.
EDKM_API void save_compressed(const std::string& path, const CompressedCheckpoint& ckpt);

/// Reads a compressed checkpoint (a plain safetensors file loads with no palettes). The whole
/// file is validated before any tensor is read: a bad file throws c10::Error saying why.
EDKM_API CompressedCheckpoint load_compressed(const std::string& path);

/// Rewrites a compressed checkpoint as a plain safetensors file of the rebuilt weights.
EDKM_API void decompress_checkpoint(const std::string& compressed_path, const std::string& plain_path);

/// Copies `tensors` into the parameters and buffers of `module` (by their dotted names, e.g.
/// "layers.0.weight"), converting dtypes. Strict: every parameter and buffer must be present
/// with its shape and no tensor may be left over; throws c10::Error naming the culprit.
EDKM_API void load_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors);

/// load_compressed(path).decompress() into `module` (see load_tensors).
EDKM_API void load_compressed(torch::nn::Module& module, const std::string& path);

}  // namespace edkm
