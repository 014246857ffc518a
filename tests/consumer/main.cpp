#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique.h>
#include <ATen/ops/randn.h>
#include <edkm/dkm/dkm.h>
#include <edkm/dkm/palette.h>

#include <iostream>

int main() {
  auto w = at::randn({16, 8}) * 0.02;
  auto opts = edkm::DKMOptions(2).engine(edkm::Engine::kDense);
  auto c = edkm::functional::init_centroids(w, opts);
  auto out = edkm::functional::dkm_cluster(w, c, opts);
  auto p = edkm::Palette::from_centroids(w, out.centroids, opts);
  const auto unique = std::get<0>(at::_unique(p.decompress())).numel();
  std::cout << "consumer: " << unique << " distinct values after 2-bit palettization\n";
  return unique <= 4 ? 0 : 1;
}
