// Small CLI over edkm's GGUF reader for the Python checks (tests/python/check_gguf_*.py):
//   edkm_gguf_cli dequant MODEL.gguf OUT.safetensors [bf16]
//       every tensor of MODEL dequantized (fp32, or bf16), under its GGUF name
//   edkm_gguf_cli logits MODEL.gguf TOKENS.safetensors OUT.safetensors
//       load_gguf_llama(MODEL), logits [B, T, V] fp32 of TOKENS' "tokens" (I64 [B, T]), and "loss"
//       (mean next-token cross entropy, fp64 scalar)
//   edkm_gguf_cli export-hf MODEL.gguf DIR
//       export_gguf_to_hf(MODEL, DIR): config.json + model.safetensors (fp32), and tokenizer.json +
//       tokenizer_config.json when MODEL has a byte-level BPE tokenizer
//   edkm_gguf_cli bench MODEL.gguf TOKENS.safetensors OUT.json [REPEATS]
//       seconds to load MODEL (GGUF -> ready fp32 model), resident memory before and peak after loading, and
//       the forward pass over TOKENS ("tokens" I64 [B, T]) timed REPEATS times (default 3)
// Errors: the c10::Error message on stderr, exit 1.
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <edkm/io/file_io.h>
#include <edkm/io/gguf.h>
#include <edkm/io/safetensors.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_io.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {

// A "Vm...:" line of /proc/self/status in KiB (0 when absent).
double vm_kib(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.compare(0, field.size(), field) == 0) return std::stod(line.substr(field.size()));
  }
  return 0;
}

int usage() {
  std::cerr << "usage: edkm_gguf_cli dequant MODEL.gguf OUT.safetensors [bf16]\n"
               "       edkm_gguf_cli logits MODEL.gguf TOKENS.safetensors OUT.safetensors\n"
               "       edkm_gguf_cli export-hf MODEL.gguf DIR\n"
               "       edkm_gguf_cli bench MODEL.gguf TOKENS.safetensors OUT.json [REPEATS]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return usage();
  const std::string cmd = argv[1], model = argv[2], arg = argv[3];
  try {
    if (cmd == "dequant") {
      if (argc > 5 || (argc == 5 && std::string(argv[4]) != "bf16")) return usage();
      const at::ScalarType dtype = argc == 5 ? at::kBFloat16 : at::kFloat;
      edkm::GgufFile f(model);
      edkm::SafetensorsFile out;
      for (const auto& t : f.tensors()) out.tensors[t.name] = f.tensor(t.name, dtype);
      edkm::save_safetensors(arg, out);
    } else if (cmd == "logits") {
      if (argc < 5) return usage();
      at::NoGradGuard ng;
      auto llama = edkm::load_gguf_llama(model);
      llama->eval();
      const at::Tensor tokens = edkm::load_safetensors(arg).tensors.at("tokens");
      const at::Tensor logits = llama(tokens);
      edkm::SafetensorsFile out;
      out.tensors["logits"] = logits;
      out.tensors["loss"] = edkm::functional::causal_lm_loss(logits, tokens).to(at::kDouble);
      edkm::save_safetensors(argv[4], out);
    } else if (cmd == "export-hf") {
      const bool with_tokenizer = edkm::export_gguf_to_hf(model, arg);
      std::cout << "wrote " << arg
                << (with_tokenizer ? " (model and tokenizer)" : " (model; no byte-level BPE tokenizer)") << "\n";
    } else if (cmd == "bench") {
      if (argc < 5) return usage();
      using Clock = std::chrono::steady_clock;
      const int repeats = argc > 5 ? std::max(1, std::stoi(argv[5])) : 3;
      const at::Tensor tokens = edkm::load_safetensors(arg).tensors.at("tokens");
      at::NoGradGuard ng;
      const double rss_before_mb = vm_kib("VmRSS:") / 1024.0;
      auto t0 = Clock::now();
      auto llama = edkm::load_gguf_llama(model);
      llama->eval();
      const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
      struct rusage ru {};
      ::getrusage(RUSAGE_SELF, &ru);
      const double load_peak_mb = static_cast<double>(ru.ru_maxrss) / 1024.0;
      std::vector<double> forward_s;
      for (int r = 0; r < repeats; ++r) {
        t0 = Clock::now();
        const at::Tensor logits = llama(tokens);
        forward_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      std::sort(forward_s.begin(), forward_s.end());
      const nlohmann::json out = {{"load_s", load_s},
                                  {"load_peak_rss_mb", load_peak_mb},
                                  {"rss_before_load_mb", rss_before_mb},
                                  {"model_fp32_mb", static_cast<double>(llama->config.num_parameters()) * 4 / 1048576},
                                  {"forward_s", forward_s},
                                  {"forward_median_s", forward_s[forward_s.size() / 2]},
                                  {"tokens", tokens.numel()},
                                  {"threads", at::get_num_threads()}};
      edkm::write_text_file(argv[4], out.dump(2) + "\n");
    } else {
      return usage();
    }
  } catch (const c10::Error& e) {
    std::cerr << e.msg() << "\n";
    return 1;
  }
  return 0;
}
