// Communicators: the single-process one and the c10d one (TCPStore rendezvous, ProcessGroupGloo
// for CPU tensors, ProcessGroupNCCL for CUDA tensors when edkm is built with NCCL), made from the
// environment torchrun sets. Every c10d failure (a rendezvous or collective that times out, a
// peer whose connection closed) is reported as a c10::Error that names the likely cause.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "edkm/distributed/distributed.h"

#if defined(EDKM_WITH_GLOO)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if defined(EDKM_WITH_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace edkm {
namespace dist {
namespace {

const char* getenv_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int64_t parse_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value, &end, 10);
  TORCH_CHECK(errno == 0 && end != value && *end == '\0', "edkm: environment variable ", name, "='", value,
              "' is not an integer");
  return v;
}

constexpr const char* kLaunchHint =
    " (launch with `torchrun --no-python --nproc-per-node N ./program`, or set RANK, WORLD_SIZE, MASTER_ADDR and "
    "MASTER_PORT)";

// CUDA devices this process sees, without CUDA headers (0 when LibTorch has no CUDA).
int64_t cuda_device_count() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) return 0;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount();
}

class SingleCommunicator final : public Communicator {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce_sum(at::Tensor& t) override {
    TORCH_CHECK(t.defined(), "edkm: all_reduce_sum of an undefined tensor");
  }
  at::Tensor all_gather(const at::Tensor& t) override {
    TORCH_CHECK(t.defined(), "edkm: all_gather of an undefined tensor");
    return t.dim() == 0 ? t.reshape({1}).clone() : t.clone();
  }
  void broadcast(at::Tensor& t, int64_t root) override {
    TORCH_CHECK(root == 0, "edkm: broadcast from rank ", root, " in a world of one");
  }
  void barrier() override {}
};

#if defined(EDKM_WITH_GLOO)
class C10dCommunicator final : public Communicator {
 public:
  C10dCommunicator(const LaunchEnv& env, const DistOptions& o)
      : env_(env), timeout_s_(o.timeout_s()), device_(bind_local_device(env)), blocking_wait_(o.nccl_blocking_wait()) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(std::llround(o.timeout_s() * 1000)));
    // Under torchrun the agent already serves a TCPStore at MASTER_ADDR:MASTER_PORT; rank 0 is a client then.
    const char* agent = getenv_or_null("TORCHELASTIC_USE_AGENT_STORE");
    const bool agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "1");
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = env.rank == 0 && !agent_store;
    so.numWorkers = static_cast<size_t>(env.world_size);
    so.waitWorkers = false;  // the process group rendezvous waits, with the error below
    so.timeout = timeout;
    const char* restart = getenv_or_null("TORCHELASTIC_RESTART_COUNT");
    guarded("rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port), [&] {
      auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
      store_ = c10::make_intrusive<c10d::PrefixStore>(std::string("edkm/attempt_") + (restart ? restart : "0"), tcp);
      auto go = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = getenv_or_null("GLOO_SOCKET_IFNAME");
      go->devices.push_back(ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
      gloo_ =
          c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store_),
                                                      static_cast<int>(env.rank), static_cast<int>(env.world_size), go);
    });
  }

  ~C10dCommunicator() override {
#if defined(EDKM_WITH_NCCL)
    // Shut the NCCL group down here rather than leave it to process exit (where its watchdog
    // thread may outlive CUDA's teardown).
    if (nccl_) {
      try {
        nccl_->shutdown();
      } catch (const std::exception& e) {
        TORCH_WARN("edkm: shutting down the NCCL process group failed: ", e.what());
      }
    }
#endif
  }

  int64_t rank() const override { return env_.rank; }
  int64_t world_size() const override { return env_.world_size; }
  std::string backend() const override {
#if defined(EDKM_WITH_NCCL)
    return "gloo+nccl";
#else
    return "gloo";
#endif
  }

  void all_reduce_sum(at::Tensor& t) override {
    check_tensor(t, "all_reduce_sum");
    std::vector<at::Tensor> ts{t};
    c10d::AllreduceOptions ao;
    ao.reduceOp = c10d::ReduceOp::SUM;
    guarded("all_reduce_sum", [&] { backend_for(t)->allreduce(ts, ao)->wait(); });
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    TORCH_CHECK(tensor.defined(), "edkm: all_gather of an undefined tensor");
    const auto t = (tensor.dim() == 0 ? tensor.reshape({1}) : tensor).contiguous();
    auto sizes = t.sizes().vec();
    sizes[0] *= env_.world_size;
    auto out = at::empty(sizes, t.options());
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int64_t r = 0; r < env_.world_size; ++r) outs[0].push_back(out.narrow(0, r * t.size(0), t.size(0)));
    std::vector<at::Tensor> ins{t};
    guarded("all_gather", [&] { backend_for(t)->allgather(outs, ins)->wait(); });
    return out;
  }

  void broadcast(at::Tensor& t, int64_t root) override {
    check_tensor(t, "broadcast");
    TORCH_CHECK(root >= 0 && root < env_.world_size, "edkm: broadcast from rank ", root, " in a world of ",
                env_.world_size);
    std::vector<at::Tensor> ts{t};
    c10d::BroadcastOptions bo;
    bo.rootRank = root;
    guarded("broadcast", [&] { backend_for(t)->broadcast(ts, bo)->wait(); });
  }

  void barrier() override {
    guarded("barrier", [&] { gloo_->barrier()->wait(); });
  }

 private:
  static void check_tensor(const at::Tensor& t, const char* op) {
    TORCH_CHECK(t.defined(), "edkm: ", op, " of an undefined tensor");
    TORCH_CHECK(t.is_contiguous(), "edkm: ", op, " needs a contiguous tensor");
  }

  // Runs a rendezvous / collective; a c10d failure becomes an error naming the timeout and the
  // likely cause (a timeout, or a peer that closed its connection, both mean a rank is gone).
  template <class F>
  void guarded(const std::string& what, F&& f) const {
    try {
      f();
    } catch (const std::exception& e) {
      std::ostringstream os;
      os << "edkm: " << what << " failed on rank " << env_.rank << " of " << env_.world_size << ": timed out after "
         << timeout_s_ << " s waiting for ranks, or lost a peer (a rank died or never joined). c10d: " << e.what();
      TORCH_CHECK(false, os.str());
    }
  }

  c10::intrusive_ptr<c10d::Backend> backend_for(const at::Tensor& t) {
    if (!t.is_cuda()) return gloo_;
#if defined(EDKM_WITH_NCCL)
    std::lock_guard<std::mutex> lock(mutex_);
    if (!nccl_) {
      if (blocking_wait_) setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
      if (!device_.is_cuda()) local_device(env_, cuda_device_count());  // throws, naming LOCAL_RANK
      TORCH_CHECK(t.device() == device_, "edkm: rank ", env_.rank, " (LOCAL_RANK ", env_.local_rank, ") runs NCCL on ",
                  device_, ", got a tensor on ", t.device(), ": put each rank's tensors on edkm::dist::local_device()");
      guarded("NCCL process group creation", [&] {
        auto no = c10d::ProcessGroupNCCL::Options::create();
        no->timeout = std::chrono::milliseconds(static_cast<int64_t>(std::llround(timeout_s_ * 1000)));
        nccl_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", store_),
                                                            static_cast<int>(env_.rank),
                                                            static_cast<int>(env_.world_size), no);
        nccl_->setBoundDeviceId(device_);
      });
    }
    return nccl_;
#else
    TORCH_CHECK(false,
                "edkm: a collective on a CUDA tensor needs NCCL, and this build of edkm has no NCCL support (built "
                "without CUDA or without nccl.h); move the tensor to the CPU (Gloo) or rebuild with NCCL");
#endif
  }

  // local_device(env), made the current CUDA device; the CPU when the process sees no CUDA
  // device for its LOCAL_RANK (CPU-only ranks may outnumber GPUs; NCCL use then names the problem).
  static at::Device bind_local_device(const LaunchEnv& env) {
    const int64_t count = cuda_device_count();
    if (env.local_rank >= count) return at::Device(at::kCPU);
    const at::Device device = local_device(env, count);
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
    return device;
  }

  LaunchEnv env_;
  double timeout_s_;
  at::Device device_;
  bool blocking_wait_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> gloo_;
#if defined(EDKM_WITH_NCCL)
  std::mutex mutex_;
  c10::intrusive_ptr<c10d::Backend> nccl_;
#endif
};
#endif  // EDKM_WITH_GLOO

}  // namespace

LaunchEnv LaunchEnv::from_environment() {
  LaunchEnv env;
  const char* rank = getenv_or_null("RANK");
  const char* world = getenv_or_null("WORLD_SIZE");
  TORCH_CHECK(rank != nullptr, "edkm: environment variable RANK is not set", kLaunchHint);
  TORCH_CHECK(world != nullptr, "edkm: environment variable WORLD_SIZE is not set", kLaunchHint);
  env.rank = parse_int("RANK", rank);
  env.world_size = parse_int("WORLD_SIZE", world);
  TORCH_CHECK(env.world_size >= 1 && env.world_size <= (int64_t{1} << 24), "edkm: WORLD_SIZE must be in 1..2^24, got ",
              env.world_size);
  TORCH_CHECK(env.rank >= 0 && env.rank < env.world_size, "edkm: RANK must be in [0, WORLD_SIZE = ", env.world_size,
              "), got ", env.rank);
  const char* local = getenv_or_null("LOCAL_RANK");
  env.local_rank = local ? parse_int("LOCAL_RANK", local) : env.rank;
  TORCH_CHECK(env.local_rank >= 0, "edkm: LOCAL_RANK must be >= 0, got ", env.local_rank);
  if (env.world_size == 1) return env;
  const char* addr = getenv_or_null("MASTER_ADDR");
  const char* port = getenv_or_null("MASTER_PORT");
  TORCH_CHECK(addr != nullptr, "edkm: environment variable MASTER_ADDR is not set (WORLD_SIZE = ", env.world_size, ")",
              kLaunchHint);
  TORCH_CHECK(port != nullptr, "edkm: environment variable MASTER_PORT is not set (WORLD_SIZE = ", env.world_size, ")",
              kLaunchHint);
  env.master_addr = addr;
  env.master_port = parse_int("MASTER_PORT", port);
  TORCH_CHECK(env.master_port >= 1 && env.master_port <= 65535, "edkm: MASTER_PORT must be in 1..65535, got ",
              env.master_port);
  return env;
}

at::Device local_device(const LaunchEnv& env, int64_t cuda_devices) {
  if (cuda_devices <= 0) return at::Device(at::kCPU);
  TORCH_CHECK(env.local_rank < cuda_devices, "edkm: LOCAL_RANK = ", env.local_rank, " but this process sees ",
              cuda_devices,
              " CUDA device(s): launch at most that many processes per node (torchrun "
              "--nproc-per-node), or check CUDA_VISIBLE_DEVICES");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
}

at::Device local_device() {
  LaunchEnv env;
  if (getenv_or_null("RANK") != nullptr || getenv_or_null("WORLD_SIZE") != nullptr) env = LaunchEnv::from_environment();
  return local_device(env, cuda_device_count());
}

void DistOptions::validate() const {
  TORCH_CHECK(std::isfinite(timeout_s_) && timeout_s_ > 0, "edkm: DistOptions::timeout_s must be > 0, got ",
              timeout_s_);
}

std::shared_ptr<Communicator> world_of_one() { return std::make_shared<SingleCommunicator>(); }

std::shared_ptr<Communicator> init_from_env(const DistOptions& options) {
  options.validate();
  if (options.allow_world_of_one() && getenv_or_null("RANK") == nullptr && getenv_or_null("WORLD_SIZE") == nullptr)
    return world_of_one();
  const auto env = LaunchEnv::from_environment();
  if (env.world_size == 1) return world_of_one();
#if defined(EDKM_WITH_GLOO)
  return std::make_shared<C10dCommunicator>(env, options);
#else
  TORCH_CHECK(false, "edkm: WORLD_SIZE = ", env.world_size,
              " needs c10d's Gloo backend, and this build of edkm has none (the gloo headers were not found at "
              "configure time: install libgloo-dev and reconfigure)");
#endif
}

}  // namespace dist
}  // namespace edkm
