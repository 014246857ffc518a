#include "edkm/io/checkpoint.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <set>
#include <sstream>

#include "edkm/io/safetensors.h"
#include "io/safetensors_core.h"
#include "io/torch_io.h"

namespace edkm {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// A NaN or infinite LUT entry or scale (which the layout checks cannot see) would silently become
// every weight that indexes it: refused on save and on load. `where` prefixes the message.
void check_finite(const std::string& where, const std::string& name, const Palette& p) {
  for (const auto* t : {&p.lut, &p.scale})
    TORCH_CHECK(!t->defined() || at::isfinite(*t).all().item<bool>(), where, "palette '", name, "' has a ",
                t == &p.lut ? "LUT" : "scale", " entry that is NaN or infinite");
}

io::PaletteEntry describe(const std::string& name, const Palette& p) {
  TORCH_CHECK(p.lut.defined() && p.indices.defined(), "edkm: palette '", name, "' is empty");
  TORCH_CHECK(p.bits >= 1 && p.bits <= 8, "edkm: palette '", name, "' has bits ", p.bits, ", expected 1..8");
  TORCH_CHECK(p.lut.scalar_type() == p.dtype, "edkm: palette '", name, "' has a ", p.lut.scalar_type(), " LUT for a ",
              p.dtype, " weight; the format stores the LUT in the weight's dtype");
  TORCH_CHECK(p.indices.scalar_type() == at::kByte && p.indices.dim() == 2, "edkm: palette '", name,
              "' indices must be G x n uint8, got ", p.indices.scalar_type(), " ", p.indices.sizes());
  io::PaletteEntry e;
  for (auto s : p.shape) {
    TORCH_CHECK(s >= 1, "edkm: palette '", name, "' has shape ", p.shape);
    e.shape.push_back(static_cast<uint64_t>(s));
  }
  TORCH_CHECK(!e.shape.empty(), "edkm: palette '", name, "' has no shape");
  e.dtype = safetensors_dtype(p.dtype);
  e.bits = static_cast<int>(p.bits);
  e.granularity = to_string(p.granularity);
  e.group_size = static_cast<uint64_t>(std::max<int64_t>(p.group_size, 0));
  e.cluster_dim = static_cast<uint64_t>(p.cluster_dim);
  e.scale = p.scale.defined();
  const int64_t rows = p.shape[0], groups = p.lut.size(0);
  TORCH_CHECK(p.lut.dim() == 3 && p.lut.size(1) == (int64_t{1} << p.bits) && p.lut.size(2) == p.cluster_dim &&
                  p.indices.size(0) == groups && groups * p.indices.size(1) * p.cluster_dim == p.numel(),
              "edkm: palette '", name, "' has LUT ", p.lut.sizes(), " and indices ", p.indices.sizes(),
              " inconsistent with shape ", p.shape, ", bits ", p.bits, ", cluster_dim ", p.cluster_dim);
  TORCH_CHECK(p.granularity == Granularity::kPerTensor ? groups == 1 : groups * p.group_size == rows, "edkm: palette '",
              name, "' has ", groups, " LUTs, inconsistent with its granularity");
  if (e.scale) {
    TORCH_CHECK(p.scale.numel() == rows, "edkm: palette '", name, "' scale has ", p.scale.numel(), " entries for ",
                rows, " rows");
  }
  check_finite("edkm: ", name, p);  // what load_compressed refuses is not written
  return e;
}

at::Tensor pack(const std::string& name, const Palette& p) {
  auto idx = p.indices.detach().cpu().contiguous();
  const auto count = static_cast<uint64_t>(idx.numel());
  at::Tensor out = at::empty({static_cast<int64_t>(io::packed_bytes(count, static_cast<int>(p.bits)))}, at::kByte);
  try {
    io::pack_indices(idx.data_ptr<uint8_t>(), count, static_cast<int>(p.bits), out.data_ptr<uint8_t>());
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: palette '", name, "': ", e.what());
  }
  return out;
}

}  // namespace

std::map<std::string, at::Tensor> CompressedCheckpoint::decompress() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : tensors) out[name] = t;
  for (const auto& [name, p] : palettes) {
    TORCH_CHECK(!out.count(name), "edkm: '", name, "' is both a palette and a plain tensor");
    out[name] = p.decompress().cpu();
  }
  return out;
}

int64_t CompressedCheckpoint::tensor_bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : tensors) n += static_cast<int64_t>(t.nbytes());
  for (const auto& [name, p] : palettes) {
    n += static_cast<int64_t>(io::packed_bytes(static_cast<uint64_t>(p.indices.numel()), static_cast<int>(p.bits)));
    n += static_cast<int64_t>(p.lut.nbytes()) + (p.scale.defined() ? p.scale.numel() * 4 : 0);
  }
  return n;
}

void save_compressed(const std::string& path, const CompressedCheckpoint& ckpt) {
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : ckpt.metadata) {
    TORCH_CHECK(!starts_with(k, "edkm."), "edkm: metadata key '", k, "' is reserved (prefix \"edkm.\")");
    meta[k] = v;
  }
  meta[io::kFormatKey] = io::kFormatValue;
  std::map<std::string, at::Tensor> all;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    TORCH_CHECK(all.emplace(name, t).second, "edkm: tensor name '", name, "' is used twice in the checkpoint");
  };
  for (const auto& [name, p] : ckpt.palettes) {
    TORCH_CHECK(!ckpt.tensors.count(name), "edkm: '", name, "' is both a palette and a plain tensor");
    const io::PaletteEntry e = describe(name, p);
    meta[io::kPaletteKeyPrefix + name] = io::palette_metadata(e);
    add(name + ".lut", p.lut);
    add(name + ".indices", pack(name, p));
    if (e.scale) add(name + ".scale", p.scale.detach().to(at::kFloat).reshape({p.shape[0], 1}));
  }
  for (const auto& [name, t] : ckpt.tensors) add(name, t);
  std::vector<std::pair<std::string, at::Tensor>> ordered(all.begin(), all.end());
  detail::write_safetensors(path, ordered, meta);
}

CompressedCheckpoint load_compressed(const std::string& path) {
  detail::OpenSafetensors f(path);
  const auto& h = f.header();
  std::map<std::string, io::PaletteEntry> entries;
  try {
    auto it = h.metadata.find(io::kFormatKey);
    if (it != h.metadata.end() && it->second != io::kFormatValue) {
      throw io::FormatError("unsupported format '" + it->second + "' (this edkm reads " + io::kFormatValue + ")");
    }
    entries = io::parse_palettes(h);
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: ", path, " is not a valid compressed checkpoint: ", e.what());
  }
  CompressedCheckpoint ckpt;
  std::set<std::string> owned;
  for (const auto& [name, e] : entries) {
    Palette p;
    p.shape.assign(e.shape.begin(), e.shape.end());
    p.dtype = scalar_type_of(e.dtype);
    p.bits = e.bits;
    p.granularity = e.granularity == "per_tensor" ? Granularity::kPerTensor : Granularity::kPerGroupedChannel;
    p.group_size = static_cast<int64_t>(e.group_size);
    p.cluster_dim = static_cast<int64_t>(e.cluster_dim);
    p.lut = f.read(name + ".lut");
    const at::Tensor packed = f.read(name + ".indices");
    p.indices = at::empty({static_cast<int64_t>(e.groups), static_cast<int64_t>(e.vectors)}, at::kByte);
    try {
      io::unpack_indices(packed.data_ptr<uint8_t>(), static_cast<uint64_t>(packed.numel()),
                         static_cast<uint64_t>(p.indices.numel()), e.bits, p.indices.data_ptr<uint8_t>());
    } catch (const io::FormatError& err) {
      TORCH_CHECK(false, "edkm: ", path, ": palette '", name, "': ", err.what());
    }
    owned.insert({name + ".lut", name + ".indices"});
    if (e.scale) {
      p.scale = f.read(name + ".scale");
      owned.insert(name + ".scale");
    }
    // Corrupt values the layout checks cannot see: a NaN entry would silently become every
    // weight that indexes it (and NaN logits decode as token 0).
    check_finite("edkm: " + path + ": ", name, p);
    ckpt.palettes[name] = std::move(p);
  }
  for (const auto& [name, e] : h.tensors) {
    if (!owned.count(name)) ckpt.tensors[name] = f.read(name);
  }
  for (const auto& [k, v] : h.metadata) {
    if (!starts_with(k, "edkm.")) ckpt.metadata[k] = v;
  }
  return ckpt;
}

void decompress_checkpoint(const std::string& compressed_path, const std::string& plain_path) {
  const auto ckpt = load_compressed(compressed_path);
  SafetensorsFile out;
  out.tensors = ckpt.decompress();
  out.metadata = ckpt.metadata;
  save_safetensors(plain_path, out);
}

void load_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors) {
  std::set<std::string> used;
  auto copy_into = [&](const std::string& name, at::Tensor& dst) {
    auto it = tensors.find(name);
    TORCH_CHECK(it != tensors.end(), "edkm: the checkpoint has no tensor '", name, "' of the module");
    TORCH_CHECK(it->second.sizes() == dst.sizes(), "edkm: tensor '", name, "' has shape ", it->second.sizes(),
                " in the checkpoint but ", dst.sizes(), " in the module");
    dst.copy_(it->second);
    used.insert(name);
  };
  at::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(/*recurse=*/true)) copy_into(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/true)) copy_into(item.key(), item.value());
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(used.count(name), "edkm: the checkpoint's tensor '", name,
                "' is not a parameter or buffer of the module");
  }
}

void load_compressed(torch::nn::Module& module, const std::string& path) {
  load_tensors(module, load_compressed(path).decompress());
}

}  // namespace edkm
