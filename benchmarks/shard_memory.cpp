// Per-rank memory and step time of sharded DKM, run under torchrun with 1, 2, 4 ranks
// (benchmarks/run_shard.sh):
//  - dense DKM forward+backward of the whole weight on every rank, plain vs under
//    dist::ShardedOffloader (eDKM's sharding of saved tensors): per-rank peak of LibTorch's CPU
//    allocator (MemoryMeter; the "device" role on CPU) and the host pool bytes the offloader keeps
//    (the "host" role; not counted by MemoryMeter), gradients bitwise equal to plain;
//  - the table (bf16) and streaming (fp32) engines on row blocks (dist::dkm_cluster_sharded).
//
//   torchrun --standalone --no-python --nproc-per-node 4 edkm_bench_shard_memory --out results/shard_w4
//   edkm_bench_shard_memory --merge results/shard_w1.json,results/shard_w2.json,... --out results/shard_cpu
#include <ATen/ATen.h>
#include <edkm/distributed/distributed.h>
#include <edkm/edkm.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "bench_util.h"

using edkm::bench::parse_shape;
using edkm::bench::split;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The largest value of `v` over the ranks (the per-rank figure that matters).
double max_over_ranks(double v, edkm::Communicator& comm) {
  auto all = comm.all_gather(at::tensor({v}, at::kDouble));
  return all.max().item<double>();
}

nlohmann::json measure(edkm::Communicator& comm, const std::shared_ptr<edkm::Communicator>& shared,
                       const std::string& dense_shape, const std::string& engine_shape, int64_t bits) {
  nlohmann::json row = {{"world_size", comm.world_size()}, {"bits", bits}};
  {  // dense, every rank the whole weight
    const auto shape = parse_shape(dense_shape);
    const auto opts = edkm::DKMOptions(bits).epsilon(0).engine(edkm::Engine::kDense);  // all iterations: the worst case
    at::manual_seed(0);
    const auto w = at::randn(shape) * 0.02;
    const auto c = edkm::functional::init_centroids(w, opts);
    const auto grad = at::randn(shape);
    at::Tensor reference;
    for (const bool sharded : {false, true}) {
      auto off = std::make_shared<edkm::dist::ShardedOffloader>(shared);
      comm.barrier();
      const auto step = edkm::bench::measured_dkm_step(w, c, opts, grad, sharded ? off : nullptr);
      const auto& wr = step.weight;
      const double secs = step.seconds;
      const auto& rep = step.memory;
      if (!sharded) reference = wr.grad();
      const std::string key = sharded ? "dense_sharded" : "dense_plain";
      row[key] = {{"shape", dense_shape},
                  {"cpu_peak_bytes", max_over_ranks(static_cast<double>(rep.cpu.peak_delta()), comm)},
                  {"step_seconds", max_over_ranks(secs, comm)}};
      if (sharded) {
        const auto s = off->stats();
        row[key]["host_pool_peak_bytes"] =
            max_over_ranks(static_cast<double>(off->host_pool_peak_reserved_bytes()), comm);
        row[key]["block_bytes_peak"] = max_over_ranks(static_cast<double>(s.kept_bytes_peak), comm);
        row[key]["bytes_sharded"] = s.storage_bytes_kept;
        row[key]["gathers"] = s.restores;
        row[key]["grad_bitwise_equal"] = max_over_ranks(at::equal(wr.grad(), reference) ? 0.0 : 1.0, comm) == 0.0;
      }
    }
  }
  for (const auto& [name, engine, dtype] : {std::tuple{"table_bf16", edkm::Engine::kTable, at::kBFloat16},
                                            std::tuple{"streaming_fp32", edkm::Engine::kStreaming, at::kFloat}}) {
    const auto shape = parse_shape(engine_shape);
    const auto opts = edkm::DKMOptions(bits).epsilon(0).engine(engine);
    at::manual_seed(1);
    const auto b = edkm::dist::row_block(shape[0], comm);
    auto block_shape = shape;
    block_shape[0] = b.rows;
    // Every rank draws the same whole weight and takes its rows (what a sharded checkpoint holds).
    const auto w = (at::randn(shape) * 0.02).narrow(0, b.begin, b.rows).to(dtype).contiguous();
    const auto grad = at::randn(block_shape);
    const auto c = edkm::dist::init_centroids_sharded(w, opts, comm);
    comm.barrier();
    auto wr = w.clone().requires_grad_(true);
    edkm::MemoryMeter meter;
    const auto t0 = std::chrono::steady_clock::now();
    auto out = edkm::dist::dkm_cluster_sharded(wr, c, opts, shared);
    (out.weight.to(at::kFloat) * grad).sum().backward();
    const double secs = seconds_since(t0);
    row[name] = {{"shape", engine_shape},
                 {"rows_per_rank", b.rows},
                 {"cpu_peak_bytes", max_over_ranks(static_cast<double>(meter.report().cpu.peak_delta()), comm)},
                 {"step_seconds", max_over_ranks(secs, comm)}};
  }
  return row;
}

std::string markdown(const nlohmann::json& rows) {
  auto mib = [](const nlohmann::json& v) { return edkm::bench::mib(v.get<double>()); };
  std::ostringstream md;
  md << std::fixed;
  md << "Dense DKM (every rank the whole weight), plain vs dist::ShardedOffloader, per rank (max over ranks):\n\n"
     << "| ranks | shape | plain CPU peak MiB | sharded CPU peak MiB | sharded host pool peak MiB | kept blocks peak "
        "MiB "
        "| saved MiB (whole) | blocks / saved | plain s | sharded s | grads bitwise equal |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    const auto &p = r["dense_plain"], &s = r["dense_sharded"];
    md << "| " << r["world_size"] << " | " << p["shape"].get<std::string>() << " | " << std::setprecision(1)
       << mib(p["cpu_peak_bytes"]) << " | " << mib(s["cpu_peak_bytes"]) << " | " << mib(s["host_pool_peak_bytes"])
       << " | " << mib(s["block_bytes_peak"]) << " | " << mib(s["bytes_sharded"]) << " | " << std::setprecision(3)
       << s["block_bytes_peak"].get<double>() / s["bytes_sharded"].get<double>() << " | " << std::setprecision(2)
       << p["step_seconds"].get<double>() << " | " << s["step_seconds"].get<double>() << " | "
       << (s["grad_bitwise_equal"].get<bool>() ? "yes" : "NO") << " |\n";
  }
  md << "\nSharded engines (dist::dkm_cluster_sharded, each rank its row block), per rank (max over ranks):\n\n"
     << "| ranks | engine | shape | rows per rank | CPU peak MiB | fwd+bwd s |\n|---|---|---|---|---|---|\n";
  for (const auto& r : rows)
    for (const char* e : {"table_bf16", "streaming_fp32"})
      md << "| " << r["world_size"] << " | " << e << " | " << r[e]["shape"].get<std::string>() << " | "
         << r[e]["rows_per_rank"] << " | " << std::setprecision(1) << mib(r[e]["cpu_peak_bytes"]) << " | "
         << std::setprecision(3) << r[e]["step_seconds"].get<double>() << " |\n";
  return md.str();
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: per-rank memory and time of sharded DKM (run under torchrun)"};
  std::string dense_shape = "1024x4096", engine_shape = "4096x4096", out = "benchmarks/results/shard_w1", merge;
  int64_t bits = 3;
  app.add_option("--dense-shape", dense_shape, "RxC of the dense + ShardedOffloader run");
  app.add_option("--engine-shape", engine_shape, "RxC of the sharded table / streaming runs");
  app.add_option("--bits", bits)->check(CLI::Range(1, 8));
  app.add_option("--out", out, "output path without extension (.json, and .md with --merge)");
  app.add_option("--merge", merge, "comma-separated JSON files of runs to merge into OUT.json / OUT.md");
  CLI11_PARSE(app, argc, argv);
  edkm::bench::make_out_dir(out);

  if (!merge.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& f : split(merge)) {
      std::ifstream in(f);
      if (!in) throw std::runtime_error("cannot read " + f);
      rows.push_back(nlohmann::json::parse(in));
    }
    edkm::write_text_file(out + ".json", rows.dump(2) + "\n");
    const auto md = markdown(rows);
    edkm::write_text_file(out + ".md", md);
    std::cout << md;
    return 0;
  }
  auto comm = edkm::dist::init_from_env(edkm::dist::DistOptions().allow_world_of_one(true).timeout_s(600));
  const auto row = measure(*comm, comm, dense_shape, engine_shape, bits);
  if (comm->rank() == 0) {
    edkm::write_text_file(out + ".json", row.dump(2) + "\n");
    std::cout << row.dump(2) << "\n";
  }
  comm->barrier();
  return 0;
} catch (...) {
  return edkm::bench::error_exit("edkm_bench_shard_memory");
}
