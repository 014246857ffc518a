#pragma once
// What the saved-tensor hooks that keep storages elsewhere share (the Offloader, keeping them on
// the host, and dist::ShardedOffloader, keeping 1/world of them): a saved tensor is a view of a
// storage; every view of one storage shares one kept copy (de-dup by storage, checked by version,
// size and device), rebuilt on the restored bytes with its sizes / strides / offset; and backward
// restores a storage once per round: the restored bytes are held from the first unpack of a round
// until every live view of the storage has been unpacked in that round (or freed).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace edkm::detail {

/// Whether a saved tensor can be kept as bytes of its storage (strided, plain values, non-empty).
inline bool storage_backed(const at::Tensor& t) {
  return t.defined() && t.layout() == at::kStrided && !t.is_quantized() && !t.is_nested() && !t.is_conj() &&
         !t.is_neg() && t.has_storage() && !t.unsafeGetTensorImpl()->is_wrapped_number() && t.numel() > 0;
}

/// A uint8 tensor over the whole of `storage` on `device` (keeps it alive).
inline at::Tensor storage_bytes(const c10::Storage& storage, const at::Device& device) {
  auto t = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(device));
  t.set_(storage, 0, {static_cast<int64_t>(storage.nbytes())}, {1});
  return t;
}

/// Base of a kept storage: what it was, and the restore round bookkeeping (under `mu`).
struct KeptStorage {
  int64_t nbytes = 0, version = 0;
  at::Device device{at::kCPU};
  std::mutex mu;    // guards what follows (and the derived class's restore state)
  at::Tensor keep;  // the bytes restored in this round, while views of it are still to come
  int64_t round = 0, live_views = 0, seen_in_round = 0;

  /// Whether `t`, whose storage has `storage_nbytes` bytes, still is this storage as kept.
  bool unchanged(const at::Tensor& t, int64_t storage_nbytes) const {
    return version == t._version() && nbytes == storage_nbytes && device == t.device();
  }
  /// A view unpacked from the bytes restored in this round (caller holds mu).
  void seen(int64_t& round_seen) {
    if (round_seen != round) {
      round_seen = round;
      ++seen_in_round;
    }
    settle();
  }
  /// A view whose unpack restored `bytes`: a new round (caller holds mu).
  void start_round(int64_t& round_seen, at::Tensor bytes) {
    ++round;
    round_seen = round;
    seen_in_round = 1;
    keep = std::move(bytes);
    settle();
  }
  void settle() {  // caller holds mu
    if (seen_in_round >= live_views) keep.reset();
  }
};

/// What pack returns: the kept storage `S` (a KeptStorage) and where the view sits in it, or the
/// tensor itself (`kept`) when it is not kept elsewhere.
template <class S>
struct SavedView {
  at::Tensor kept;
  std::shared_ptr<S> storage;
  std::vector<int64_t> sizes, strides;
  int64_t offset = 0;
  at::ScalarType dtype = at::kFloat;
  int64_t round_seen = -1;  // the storage's restore round in which this view was last unpacked
  // The saved tensor's version counter (held without its storage) and its version when saved.
  c10::VariableVersion version{c10::VariableVersion::DISABLED};
  uint32_t saved_version = 0;

  SavedView() = default;
  SavedView(const SavedView&) = delete;
  SavedView& operator=(const SavedView&) = delete;
  /// Records where `t` sits in its storage.
  void describe(const at::Tensor& t) {
    sizes = t.sizes().vec();
    strides = t.strides().vec();
    offset = t.storage_offset();
    dtype = t.scalar_type();
  }
  /// Records t's version counter: check_version compares it at unpack.
  void record_version(const at::Tensor& t) {
    version = t.unsafeGetTensorImpl()->version_counter();
    if (version.enabled()) saved_version = version.current_version();
  }
  /// LibTorch checks that a saved tensor was not written in place before backward reads it, but
  /// not when saved-tensor hooks are installed: a kept tensor written since would give silently
  /// wrong gradients, a copied one the values from before the write where autograd raises. This is
  /// that check, with autograd's message.
  void check_version(const char* who) const {
    if (!version.enabled()) return;
    const uint32_t now = version.current_version();
    if (now == saved_version) return;
    const bool whole = kept.defined();
    TORCH_CHECK(false,
                "one of the variables needed for gradient computation has been modified by an inplace operation: [",
                whole ? kept.scalar_type() : dtype, " ", whole ? kept.sizes() : at::IntArrayRef(sizes),
                "] is at version ", now, "; expected version ", saved_version, " instead (checked by edkm::", who,
                ": LibTorch skips this check under saved-tensor hooks)");
  }
  void attach(std::shared_ptr<S> s) {
    std::lock_guard<std::mutex> lock(s->mu);
    ++s->live_views;
    storage = std::move(s);
  }
  /// The view rebuilt on the restored storage bytes.
  at::Tensor view_on(const at::Tensor& bytes) const {
    auto out = at::empty({0}, at::TensorOptions().dtype(dtype).device(bytes.device()));
    out.set_(bytes.storage(), offset, sizes, strides);
    return out;
  }
  ~SavedView() {
    if (!storage) return;
    std::lock_guard<std::mutex> lock(storage->mu);
    --storage->live_views;
    if (round_seen == storage->round) --storage->seen_in_round;
    storage->settle();
  }
};

/// Kept storages by their source storage, for de-dup. The source is held weakly (its address, the
/// key, is not reused while the entry lives: no ABA), and so is the kept copy. Not thread-safe.
template <class S>
class StorageRegistry {
 public:
  /// The kept copy of `t`'s storage (of `nbytes` bytes) when it is alive and unchanged, else null.
  std::shared_ptr<S> find(const at::Tensor& t, int64_t nbytes) {
    purge();
    auto it = map_.find(t.storage().unsafeGetStorageImpl());
    if (it == map_.end()) return nullptr;
    auto kept = it->second.kept.lock();
    return kept && kept->unchanged(t, nbytes) ? kept : nullptr;
  }
  /// Records `kept` as the copy of `storage` (replacing a stale entry: written in place since).
  void add(const c10::Storage& storage, const std::shared_ptr<S>& kept) {
    const c10::StorageImpl* key = storage.unsafeGetStorageImpl();
    map_.erase(key);
    map_.emplace(key, Entry{storage.getWeakStorageImpl(), kept});
  }
  /// Drops the entries whose source storage or kept copy is gone.
  void purge() {
    for (auto it = map_.begin(); it != map_.end();)
      it = it->second.source.expired() || it->second.kept.expired() ? map_.erase(it) : std::next(it);
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> source;
    std::weak_ptr<S> kept;
  };
  std::unordered_map<const c10::StorageImpl*, Entry> map_;
};

}  // namespace edkm::detail
