// The smallest complete program: your model, your optimizer, your loop; edkm clusters the Linear
// weights to 3 bits (DKM) during training, then finalizes, exports and reloads the model.
//   edkm_minimal_loop [OUT_DIR]
#include <edkm/edkm.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include <iostream>

struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc1{register_module("fc1", torch::nn::Linear(64, 256))};
  torch::nn::Linear fc2{register_module("fc2", torch::nn::Linear(256, 64))};
  at::Tensor forward(const at::Tensor& x) { return fc2(at::relu(fc1(x))); }
};
TORCH_MODULE(Net);

int main(int argc, char** argv) try {
  const std::string arg = argc > 1 ? argv[1] : "";
  if (argc > 2 || (!arg.empty() && arg[0] == '-')) {
    std::cout << "usage: " << argv[0] << " [OUT_DIR]\n  trains a small MLP with edkm's Palettizer (3-bit DKM), "
              << "then finalizes, exports OUT_DIR/model.edkm.safetensors and reloads it (default OUT_DIR: .)\n";
    return arg == "-h" || arg == "--help" ? 0 : 2;
  }
  const std::string dir = arg.empty() ? "." : arg, out = dir + "/model.edkm.safetensors";
  edkm::make_directories(dir);
  torch::manual_seed(0);
  Net model;
  const at::Tensor A = at::randn({64, 64}) / 8;  // the task: learn x -> tanh(x A)
  torch::optim::Adam optimizer(model->parameters(), 1e-3);
  // Every Linear (and Embedding) with > 2048 weights, 3 bits; clustering starts at step 100.
  edkm::Palettizer palettizer(model, edkm::DKMOptions(3).milestone(100));

  for (int step = 1; step <= 200; ++step) {
    const at::Tensor x = at::randn({32, 64});
    at::Tensor loss;
    {
      auto clustered = palettizer.clustered();  // the forward sees the clustered weights
      loss = (model->forward(x) - at::tanh(x.matmul(A))).square().mean();
    }
    optimizer.zero_grad();
    loss.backward();  // gradients reach the original weights through DKM
    optimizer.step();
    palettizer.step();
    if (step % 50 == 0) std::cout << "step " << step << "  loss " << loss.item<double>() << "\n";
  }

  palettizer.finalize();  // every weight becomes one of its 8 LUT entries
  std::cout << palettizer.report();
  palettizer.save_compressed(out);                               // LUT + 3-bit indices + the biases
  edkm::decompress_checkpoint(out, dir + "/model.safetensors");  // plain, for other tools

  Net reloaded;
  edkm::load_compressed(*reloaded, out);
  const at::Tensor x = at::randn({8, 64});
  const bool same = at::equal(model->forward(x), reloaded->forward(x));
  std::cout << "wrote " << out << "; reloaded model " << (same ? "matches" : "DIFFERS") << "\n";
  return same ? 0 : 1;
} catch (const std::exception& e) {  // c10::Error too: its message without the C++ backtrace
  const auto* c10e = dynamic_cast<const c10::Error*>(&e);
  std::cerr << "edkm_minimal_loop: " << (c10e ? c10e->what_without_backtrace() : e.what()) << "\n";
  return 1;
}
