// Text generation from a compressed LLaMA without decompressing it: the palettized Linears, the
// embedding and the tied head stay as LUTs + bit-packed indices (edkm::PalettizedLinear) and a
// KV cache serves the decode (edkm::LlamaRuntime). --check also runs the same checkpoint
// decompressed to fp32 and fails unless both give the same greedy tokens.
//
// The tokenizer is the one edkm_llama_compress wrote beside the checkpoint (tokenizer.json or
// tokenizer.model), unless --tokenizer names another.
//
//   edkm_llama_generate --compressed out/model.edkm.safetensors \
//       --prompt "The best thing about open source software is" --max-new-tokens 48 [--temperature 0.8 --top-p 0.9]
//   edkm_llama_generate --compressed out/model.edkm.safetensors --chat --prompt "What is gravity?" \
//       --repetition-penalty 1.2   # an instruct model's ChatML turn (SmolLM2-Instruct, Qwen, ...)
//   ... --chat --interactive       # then more turns from stdin, one per line
#include <ATen/Parallel.h>
#include <edkm/io/checkpoint.h>
#include <edkm/io/file_io.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_runtime.h>
#include <edkm/models/tokenizer.h>
#include <torch/cuda.h>
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "../common/cli.h"

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Times one generate() call as llama.cpp reports it: the first token arrives after the input's
// prefill (one forward over it, then a sample); each further token costs one forward of one token.
struct TurnTimer {
  Clock::time_point start = Clock::now(), first, last;
  int64_t tokens = 0;
  void token() {
    last = Clock::now();
    if (tokens++ == 0) first = last;
  }
  void report(std::ostream& out, int64_t input_tokens, int64_t cached) const {
    std::ostringstream os;
    os << std::fixed << std::setprecision(3);
    const double prefill = tokens ? seconds(start, first) : seconds_since(start);
    os << "input " << input_tokens << " tokens";
    if (cached) os << " (after " << cached << " cached)";
    os << " in " << prefill << " s (" << static_cast<double>(input_tokens) / prefill << " tok/s, first token)";
    if (tokens > 1)
      os << ", then " << tokens - 1 << " tokens in " << seconds(first, last) << " s ("
         << static_cast<double>(tokens - 1) / seconds(first, last) << " tok/s)";
    os << "; " << tokens << " generated\n";
    out << os.str();
  }
};
}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: generate text from a compressed LLaMA, running its LUTs directly"};
  // An option given twice takes its last value (CLI11 2.x refuses it by default): scripts/demo.sh
  // passes its defaults first and the user's options after them.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string compressed, config_path, tokenizer_spec, prompt = "The best thing about open source software is";
  int64_t max_new = 32, threads = -1;
  double temperature = 0.0, top_p = 1.0, repetition_penalty = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool check = false, chat = false, interactive = false;
  std::string system, kv_cache = "fp32";
  app.add_option("--compressed", compressed, "compressed checkpoint (edkm_llama_compress's model.edkm.safetensors)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--config", config_path, "config.json (default: the one beside --compressed)");
  app.add_option(
      "--tokenizer", tokenizer_spec,
      "bytes | a GGUF file | tokenizer.json | tokenizer.model | a directory holding one (default: the "
      "tokenizer.json or tokenizer.model beside --compressed, which edkm_llama_compress writes, else bytes)");
  app.add_option("--prompt", prompt)->capture_default_str();
  app.add_option("--max-new-tokens", max_new)->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--temperature", temperature, "0: greedy")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--top-p", top_p, "nucleus sampling mass")->check(CLI::Range(1e-9, 1.0))->capture_default_str();
  app.add_option("--top-k", top_k, "sample among the k most likely tokens (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--repetition-penalty", repetition_penalty,
                 "divide (multiply) the positive (negative) logits of tokens already seen by it; 1: none")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--chat", chat,
               "wrap --prompt as one user turn of the ChatML format (<|im_start|>user ... <|im_end|>, then the "
               "assistant's turn, which ends at <|im_end|>); the tokenizer must know those tokens");
  app.add_option("--system", system, "with --chat: a system turn before the user's (default: none)");
  app.add_flag("--interactive", interactive,
               "with --chat: after the answer to --prompt, read further user turns from stdin, one per line, "
               "until an empty line or end of input (the whole conversation is the next turn's prompt)");
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: LibTorch's)")->check(CLI::NonNegativeNumber);
  app.add_option("--kv-cache", kv_cache, "key/value cache dtype: bf16 halves what a long context reads per token")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  std::string device_name = "cpu";
  app.add_option("--device", device_name, "cpu | cuda: where the weights and the cache live")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  std::string step_graphs = "auto";
  app.add_option("--step-graphs", step_graphs,
                 "on | off | auto (on for --device cuda): replay each one-token step as a CUDA graph "
                 "(LlamaRuntime::step_graphs; on the CPU the graph's step runs without a graph, to check it)")
      ->check(CLI::IsMember({"on", "off", "auto"}))
      ->capture_default_str();
  app.add_flag("--check", check,
               "also run the checkpoint decompressed to fp32 and fail unless the greedy tokens agree");
  CLI11_PARSE(app, argc, argv);
  edkm::examples::set_threads(threads);
  TORCH_CHECK(device_name != "cuda" || torch::cuda::is_available(), "--device cuda: no CUDA device is available");
  const c10::Device device(device_name == "cuda" ? c10::kCUDA : c10::kCPU);
  const auto slash = compressed.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string(".") : compressed.substr(0, slash);
  if (config_path.empty()) config_path = dir + "/config.json";
  const auto config = edkm::LlamaConfig::from_json(edkm::read_text_file(config_path));
  if (tokenizer_spec.empty()) {
    const bool json = edkm::is_file(dir + "/tokenizer.json"), model = edkm::is_file(dir + "/tokenizer.model");
    TORCH_CHECK(!(json && model), "both tokenizer.json and tokenizer.model lie beside ", compressed,
                " (left by different runs?): pass --tokenizer to choose");
    tokenizer_spec = json || model ? dir : "bytes";
  }
  const auto tokenizer = edkm::load_tokenizer(tokenizer_spec);
  TORCH_CHECK(tokenizer->vocab_size() <= config.vocab_size(), "the tokenizer (", tokenizer->name(), ") has ",
              tokenizer->vocab_size(), " tokens but the model only ", config.vocab_size(),
              ": pass --tokenizer the model's own");
  std::cout << "tokenizer: " << tokenizer->name() << "\n";
  // Text of ids, refusing by name an id the tokenizer lacks (a model run with another tokenizer
  // than its own, e.g. bytes for SmolLM2, produces them).
  auto text = [&](const std::vector<int64_t>& ids) {
    for (const int64_t id : ids)
      TORCH_CHECK(id >= 0 && id < tokenizer->vocab_size(), "the model produced token id ", id,
                  ", outside the tokenizer's ", tokenizer->vocab_size(), " tokens (", tokenizer->name(),
                  "): pass --tokenizer the model's own (the GGUF file, tokenizer.json or tokenizer.model it was "
                  "compressed with)");
    return tokenizer->decode(ids);
  };
  auto t0 = Clock::now();
  const auto ckpt = edkm::load_compressed(compressed);
  edkm::LlamaRuntime rt(config, ckpt);
  rt.to(device);
  if (step_graphs != "auto") rt.step_graphs(step_graphs == "on");
  std::cout << "loaded " << compressed << " in " << seconds_since(t0) << " s: " << rt.packed_layers()
            << " layers kept packed, " << rt.weight_bytes() / 1048576.0 << " MiB of weights resident on " << rt.device()
            << "\n";
  auto options = edkm::GenerationOptions()
                     .max_new_tokens(max_new)
                     .temperature(temperature)
                     .top_p(top_p)
                     .top_k(top_k)
                     .repetition_penalty(repetition_penalty)
                     .seed(seed)
                     .eos_id(tokenizer->eos_id())
                     .cache_dtype(kv_cache == "bf16" ? at::kBFloat16 : at::kFloat);
  TORCH_CHECK(chat || system.empty(), "--system needs --chat");
  TORCH_CHECK(chat || !interactive, "--interactive needs --chat");
  std::string text_in = prompt;
  if (chat) {
    // ChatML: the tokenizer must hold its two markers as single tokens (special tokens).
    auto special = [&](const std::string& marker) {
      const auto m = tokenizer->encode(marker);
      TORCH_CHECK(m.size() == 1, "--chat needs a ChatML tokenizer, and ", tokenizer->name(), " reads ", marker, " as ",
                  m.size(), " tokens, not one");
      return m[0];
    };
    special("<|im_start|>");
    options.stop_ids({special("<|im_end|>")});
    text_in = (system.empty() ? std::string() : "<|im_start|>system\n" + system + "<|im_end|>\n") +
              "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n";
    std::cout << "user: " << prompt << "\nassistant: ";
  } else {
    std::cout << prompt;
  }
  std::cout << std::flush;
  const auto ids = tokenizer->encode(text_in);
  // One cache for the whole session: with --interactive a turn computes only its own tokens.
  auto cache = rt.new_cache(1, options.cache_dtype());  // generate grows it
  TurnTimer timer;
  const auto out = rt.generate(ids, options, cache, [&](int64_t id) {
    timer.token();
    std::cout << text({id}) << std::flush;
  });
  std::cout << "\n";
  timer.report(std::cout, static_cast<int64_t>(ids.size()), 0);
  const int64_t ctx = config.max_position_embeddings();
  auto note_full_context = [&] {  // generation ends there, whatever --max-new-tokens says
    if (cache.length >= ctx) std::cout << "(the model's " << ctx << "-token context is full)\n";
  };
  note_full_context();
  if (interactive) {
    // The conversation as token ids: each answer as generated (not re-encoded from its text),
    // closed by <|im_end|>, then the next user turn and the assistant's opening. Each turn feeds
    // only what the cache lacks (the cache holds a prefix of the conversation).
    std::vector<int64_t> conversation = ids;
    conversation.insert(conversation.end(), out.begin(), out.end());
    conversation.push_back(options.stop_ids().front());
    std::string line;
    while (std::cout << "user: " << std::flush, std::getline(std::cin, line) && !line.empty()) {
      if (!isatty(STDIN_FILENO)) std::cout << line << "\n";  // piped turns: shown as if typed
      const auto turn = tokenizer->encode("\n<|im_start|>user\n" + line + "<|im_end|>\n<|im_start|>assistant\n");
      conversation.insert(conversation.end(), turn.begin(), turn.end());
      if (static_cast<int64_t>(conversation.size()) >= ctx) {
        std::cout << "the conversation (" << conversation.size() << " tokens) fills the model's " << ctx
                  << "-token context: ending the session\n";
        break;
      }
      std::cout << "assistant: " << std::flush;
      const int64_t cached = cache.length;
      const std::vector<int64_t> input(conversation.begin() + cached, conversation.end());
      TurnTimer turn_timer;
      const auto answer = rt.generate(input, options, cache, [&](int64_t id) {
        turn_timer.token();
        std::cout << text({id}) << std::flush;
      });
      std::cout << "\n";
      turn_timer.report(std::cout, static_cast<int64_t>(input.size()), cached);
      note_full_context();
      conversation.insert(conversation.end(), answer.begin(), answer.end());
      conversation.push_back(options.stop_ids().front());
    }
    std::cout << "\n";
  }
  if (check) {
    edkm::LlamaForCausalLM dense(config);
    edkm::load_tensors(*dense, ckpt.decompress());
    dense->to(at::kFloat);
    dense->eval();
    auto greedy = options;
    greedy.temperature(0);
    const auto want = edkm::LlamaRuntime(dense).generate(ids, greedy);  // on the CPU, whatever --device
    const auto got = temperature == 0 ? out : rt.generate(ids, greedy);
    if (got != want) {
      std::cerr << "FAIL: the packed model's greedy tokens differ from the decompressed model's\n  packed:       "
                << text(got) << "\n  decompressed: " << text(want) << "\n";
      return 1;
    }
    std::cout << "check: the decompressed fp32 model gives the same " << want.size() << " greedy tokens\n";
  }
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "\nedkm_llama_generate: " << e.what_without_backtrace() << "\n";
  return 1;
} catch (const std::exception& e) {
  std::cerr << "\nedkm_llama_generate: " << e.what() << "\n";
  return 1;
}
