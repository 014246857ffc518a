// The compression demo: fine-tunes a small MLP stack with every Linear weight clustered by DKM,
// then finalizes it to palettes and reports, per layer, the LUT, the error and the memory DKM took.
//
//   edkm_compress                      # tiny preset (default), 3 bits
//   edkm_compress --preset small --bits 4 --granularity grouped --group-size 32
//
// The task is distillation from a dense teacher (the uncompressed model) on random inputs, so it
// needs no data set: the student starts as a copy of the teacher and learns to stay close to it
// while its weights are clustered.
#include <ATen/ATen.h>
#include <edkm/edkm.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>

namespace {

struct Preset {
  int64_t hidden, layers, steps, batch;
};
const std::map<std::string, Preset> kPresets = {
    {"tiny", {64, 2, 60, 32}},
    {"small", {256, 4, 200, 64}},
    {"medium", {1024, 4, 200, 64}},
};

// x -> [Linear(h, 4h) -> SiLU -> Linear(4h, h)] x L, residual.
struct Stack {
  std::vector<torch::nn::Linear> up, down;
  Stack(int64_t h, int64_t layers) {
    for (int64_t i = 0; i < layers; ++i) {
      up.emplace_back(torch::nn::LinearOptions(h, 4 * h));
      down.emplace_back(torch::nn::LinearOptions(4 * h, h));
    }
  }
  std::vector<torch::nn::Linear> linears() const {
    std::vector<torch::nn::Linear> all;
    for (size_t i = 0; i < up.size(); ++i) all.push_back(up[i]), all.push_back(down[i]);
    return all;
  }
  // `weight_of` maps a layer to the weight its forward uses (clustered or plain).
  template <class F>
  at::Tensor forward(at::Tensor x, F&& weight_of) const {
    for (size_t i = 0; i < up.size(); ++i) {
      auto hdn = at::silu(at::linear(x, weight_of(2 * i, up[i]), up[i]->bias));
      x = x + at::linear(hdn, weight_of(2 * i + 1, down[i]), down[i]->bias);
    }
    return x;
  }
};

std::string mib(int64_t b) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << static_cast<double>(b) / (1 << 20);
  return s.str();
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm compression demo: DKM fine-tuning of an MLP stack, then palettization"};
  std::string preset = "tiny", granularity = "tensor", engine = "auto";
  int64_t bits = 3, group_size = 16, steps = -1;
  double lr = 1e-4;
  uint64_t seed = 0;
  app.add_option("--preset", preset, "tiny | small | medium")->check(CLI::IsMember({"tiny", "small", "medium"}));
  app.add_option("--bits", bits, "bits per weight (1..8)")->check(CLI::Range(1, 8));
  app.add_option("--granularity", granularity, "tensor | grouped")->check(CLI::IsMember({"tensor", "grouped"}));
  app.add_option("--group-size", group_size, "output rows per LUT with --granularity grouped");
  app.add_option("--engine", engine, "dense | table | streaming | auto (table needs 16-bit weights)")
      ->check(CLI::IsMember({"dense", "table", "streaming", "auto"}));
  app.add_option("--steps", steps, "fine-tuning steps (default: the preset's)");
  app.add_option("--lr", lr, "Adam learning rate");
  app.add_option("--seed", seed, "random seed");
  CLI11_PARSE(app, argc, argv);

  const Preset p = kPresets.at(preset);
  if (steps < 0) steps = p.steps;
  at::manual_seed(seed);
  Stack teacher(p.hidden, p.layers), student(p.hidden, p.layers);
  auto tl = teacher.linears(), sl = student.linears();
  std::vector<at::Tensor> params;
  for (size_t i = 0; i < tl.size(); ++i) {
    at::NoGradGuard ng;
    tl[i]->weight.normal_(0, 0.02);
    tl[i]->bias.zero_();
    sl[i]->weight.copy_(tl[i]->weight);
    sl[i]->bias.copy_(tl[i]->bias);
    params.push_back(sl[i]->weight);
    params.push_back(sl[i]->bias);
  }

  auto options = edkm::DKMOptions(bits).weight_threshold(0).engine(edkm::engine_from_string(engine));
  if (granularity == "grouped") options.granularity(edkm::Granularity::kPerGroupedChannel).group_size(group_size);
  std::vector<edkm::DKM> dkm;
  for (size_t i = 0; i < sl.size(); ++i) dkm.emplace_back(options);

  std::cout << "edkm " << EDKM_VERSION_STRING << " compression demo: preset " << preset << " (hidden " << p.hidden
            << ", " << p.layers << " blocks, " << sl.size() << " Linear layers), " << bits << "-bit "
            << edkm::to_string(options.granularity()) << ", engine " << edkm::to_string(options.engine()) << "\n";

  auto gen_inputs = [&](int64_t step) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + static_cast<uint64_t>(step));
    return at::randn({p.batch, p.hidden}, g, at::kFloat);
  };
  auto eval_error = [&](auto&& weight_of) {
    at::NoGradGuard ng;
    auto x = gen_inputs(-1);
    auto y = teacher.forward(x, [](size_t, const torch::nn::Linear& l) { return l->weight; });
    auto ys = student.forward(x, weight_of);
    const at::Tensor rel = (ys - y).norm() / y.norm();
    return rel.item<double>();
  };

  // Baseline: hard k-means (post-training palettization, no fine-tuning).
  std::vector<edkm::Palette> ptq;
  for (size_t i = 0; i < sl.size(); ++i) {
    auto c = edkm::functional::init_centroids(sl[i]->weight, options);
    ptq.push_back(edkm::Palette::from_centroids(sl[i]->weight, c, options));
  }
  const double ptq_err = eval_error([&](size_t i, const torch::nn::Linear&) { return ptq[i].decompress(); });

  torch::optim::Adam opt(params, torch::optim::AdamOptions(lr));
  int64_t dkm_peak = 0;
  edkm::ProgressBar bar(steps, "DKM fine-tune");
  double loss_v = 0;
  for (int64_t s = 0; s < steps; ++s) {
    auto x = gen_inputs(s);
    at::Tensor y;
    {
      at::NoGradGuard ng;
      y = teacher.forward(x, [](size_t, const torch::nn::Linear& l) { return l->weight; });
    }
    edkm::MemoryMeter meter;
    opt.zero_grad();
    auto ys = student.forward(x, [&](size_t i, const torch::nn::Linear& l) { return dkm[i](l->weight); });
    auto loss = at::mse_loss(ys, y);
    loss.backward();
    opt.step();
    dkm_peak = std::max(dkm_peak, meter.report().cpu.peak_delta());
    for (auto& d : dkm) d->step();
    loss_v = loss.item<double>();
    std::ostringstream note;
    note << "loss " << std::scientific << std::setprecision(3) << loss_v;
    bar.tick(note.str());
  }
  bar.finish();

  // Finalize: hard assignment to the learned centroids.
  std::vector<edkm::Palette> palettes;
  for (size_t i = 0; i < sl.size(); ++i) palettes.push_back(dkm[i]->finalize(sl[i]->weight));
  const double dkm_err = eval_error([&](size_t i, const torch::nn::Linear&) { return palettes[i].decompress(); });

  std::cout << "\n| layer | shape | LUTs x K | distinct values | weight MSE vs dense | DKM iters |\n"
            << "|---|---|---|---|---|---|\n";
  int64_t dense_bytes = 0, packed_bits = 0;
  for (size_t i = 0; i < sl.size(); ++i) {
    auto w = sl[i]->weight.detach();
    auto hard = palettes[i].decompress();
    dense_bytes += w.numel() * 2;  // vs fp16
    packed_bits += w.numel() * bits + palettes[i].lut.numel() * 16;
    std::cout << "| " << (i % 2 ? "down" : "up") << i / 2 << " | " << w.size(0) << "x" << w.size(1) << " | "
              << palettes[i].lut.size(0) << " x " << palettes[i].lut.size(1) << " | "
              << std::get<0>(at::_unique(hard)).numel() << " | " << std::scientific << std::setprecision(2)
              << (hard - tl[i]->weight).square().mean().item<double>() << std::defaultfloat << " | "
              << dkm[i]->last_iterations() << " |\n";
  }
  std::cout << "\nmodel output error vs the dense teacher (relative L2):\n"
            << "  post-training k-means palettization : " << std::setprecision(4) << ptq_err << "\n"
            << "  DKM fine-tuned, finalized           : " << dkm_err << "\n"
            << "weights: " << mib(dense_bytes) << " MiB fp16 -> " << mib(packed_bits / 8) << " MiB at " << bits
            << " bits + LUTs\n"
            << "peak CPU memory of one training step (forward+backward, engine " << engine << "): " << mib(dkm_peak)
            << " MiB\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "edkm_compress: " << e.what() << "\n";
  return 1;
}
