// Links edkm::edkm (every component) through the umbrella header: one public entry of each
// component, so a symbol missing from a shared component library fails this build.
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <edkm/distributed/distributed.h>
#include <edkm/edkm.h>

#include <iostream>
#include <string>

int main() {
  edkm::MemoryMeter meter;  // core
  auto w = at::randn({64, 32}) * 0.02;
  auto opts = edkm::DKMOptions(3).engine(edkm::Engine::kDense);
  auto palette = edkm::Palette::from_centroids(w, edkm::functional::init_centroids(w, opts), opts);
  edkm::PalettizedLinear linear(palette);  // nn
  const auto y = linear->forward(at::ones({2, 32}));
  edkm::Offloader offloader{edkm::OffloadOptions()};     // offload
  edkm::LlamaConfig config = edkm::LlamaConfig::tiny();  // llama
  const at::Device device = edkm::dist::local_device();  // distributed
  std::cout << "consumer (edkm " << EDKM_VERSION_STRING << "): y " << y.sizes() << ", llama dim "
            << config.hidden_size() << ", rank device " << device << "; " << offloader.stats().to_string() << "; "
            << meter.report().to_string() << "\n";
  // An installed edkm loads its SentencePiece module from its own lib directory (not the build tree).
  const std::string sp = edkm::sentencepiece_status();
  std::cout << "consumer: " << sp << "\n";
  if (edkm::has_sentencepiece() && sp.find(EDKM_CONSUMER_LIBDIR) == std::string::npos) return 2;
  return y.size(1) == 64 ? 0 : 1;
}
