#include "report.h"

#include <edkm/io/file_io.h>
#include <fmt/format.h>

#include <iomanip>
#include <iostream>
#include <sstream>

namespace llama_compress {

using json = nlohmann::json;

std::string fixed(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }

std::string mib(int64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

namespace {

std::string comparison_table(const Report& r) {
  std::ostringstream md;
  md << "| method | bits / weight, decoder Linear layers | bits / weight, all clustered layers |";
  for (const auto& e : r.eval_sets) md << " perplexity, " << e.label << " |";
  md << "\n|---|---|---|";
  for (size_t i = 0; i < r.eval_sets.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& row : r.rows) {
    md << "| " << row.method << " | " << fixed(row.linear_bits, 3) << " | " << fixed(row.bits_per_weight, 3) << " |";
    for (const auto& e : row.evals) md << " " << fixed(e.perplexity, 3) << " |";
    md << "\n";
  }
  return md.str();
}

std::string facts(const Report& r) {
  std::ostringstream f;
  f << "- clustered: " << r.clustered_layers << " layers, " << r.clustered_numel << " weights (Linear at " << r.bits
    << " bits, embedding/head at "
    << (r.embedding_bits ? std::to_string(r.embedding_bits) + " bits" +
                               (r.embedding_dkm ? " by DKM" : " by k-means (one LUT per tensor) in every row")
                         : "dense")
    << "); bits per weight include the LUT entries (16 bits each) or per-group scale and zero point (16 bits "
       "each)\n";
  if (r.compressed) {
    f << "- compressed file: " << r.file_bytes << " bytes for " << r.parameters
      << " parameters = " << fixed(8.0 * static_cast<double>(r.file_bytes) / static_cast<double>(r.parameters), 3)
      << " bits per parameter overall (LUTs in the model dtype, norms stored plainly); reloaded model "
      << (r.reloaded_matches ? "matches" : "DIFFERS") << "\n";
  }
  const PackedRun& p = r.packed_run;
  if (p.ran)
    f << "- the file run packed (edkm::LlamaRuntime, CPU): " << fixed(p.weight_mib, 1) << " MiB of resident weights, "
      << p.packed_layers << " projections packed, " << fixed(p.tokens_per_s, 1) << " tok/s generating " << r.generate
      << " tokens; greedy tokens " << (p.same_tokens ? "equal" : "DIFFER from") << " the compressed model's\n";
  f << "- peak host memory (LibTorch CPU allocations): whole run " << mib(r.peak_host_bytes)
    << ", during DKM fine-tuning " << mib(r.peak_host_bytes_step)
    << (r.cuda ? ", peak device memory of a step " + mib(r.peak_device_bytes_step) : "") << "\n";
  if (r.peak_rss_bytes > 0) f << "- peak resident set of the process (getrusage): " << mib(r.peak_rss_bytes) << "\n";
  if (!r.host_cache.empty()) {
    f << "- CPU caching allocator (--host-cache " << r.host_cache << "): ";
    if (r.host_cache_hits + r.host_cache_misses == 0) {
      f << "no CPU allocation reached its 1 MiB minimum\n";
    } else {
      f << "held at most " << mib(r.host_cache_peak_bytes) << " for at most " << mib(r.host_cache_peak_in_use_bytes)
        << " in use; " << r.host_cache_hits << " hits, " << r.host_cache_misses << " misses\n";
    }
  }
  f << "- throughput: pre-training " << fixed(r.pretrain_tokens_per_s, 0) << " tok/s, DKM fine-tuning "
    << fixed(r.finetune_tokens_per_s, 0) << " tok/s (last step " << fixed(r.last_step_seconds, 3) << " s), evaluation "
    << (r.rows.empty() ? std::string("-") : fixed(r.rows.back().evals[0].tokens_per_s, 0)) << " tok/s\n"
    << "- optimizer " << r.optimizer << ": " << r.optimizer_state_bytes_per_param
    << " bytes of state per parameter; loss " << r.loss_kind
    << (r.teacher_dtype.empty() ? std::string() : " (teacher in " + r.teacher_dtype + ")")
    << (r.autocast == "bf16" ? "; model forward and backward under bf16 autocast" : "") << "\n"
    << r.gptq_facts << "- total time " << fixed(r.total_seconds, 1) << " s\n";
  if (!r.offload_facts.empty()) f << "- offload: " << r.offload_facts << "\n";
  return f.str();
}

json results_json(const Report& r) {
  json j = {{"command", r.command},
            {"model", r.source},
            {"parameters", r.parameters},
            {"layers", r.layers},
            {"dtype", r.dtype},
            {"device", r.cuda ? "cuda" : "cpu"},
            {"corpus", r.corpus},
            {"tokenizer", r.tokenizer},
            {"train_tokens", r.train_tokens},
            {"eval_seq_len", r.eval_seq_len},
            {"seq_len", r.seq_len},
            {"batch", r.batch},
            {"steps", r.steps},
            {"tokens_seen", r.steps * r.batch * r.seq_len},
            {"pretrain_steps", r.pretrain_steps},
            {"bits", r.bits},
            {"group_size", r.group_size},
            {"init", r.init},
            {"tau", r.tau},
            {"lr", r.lr},
            {"embedding_bits", r.embedding_bits},
            {"engine", r.engine},
            {"offload", r.offload},
            {"checkpoint_activations", r.checkpoint_activations},
            {"loss", r.loss_kind},
            {"distill", r.distill},
            {"teacher_dtype", r.teacher_dtype},
            {"autocast", r.autocast},
            {"embedding_dkm", r.embedding_dkm},
            {"optimizer", r.optimizer},
            {"optimizer_state_bytes_per_param", r.optimizer_state_bytes_per_param},
            {"compressed_file_bytes", r.file_bytes},
            {"reloaded_matches", r.reloaded_matches},
            {"peak_host_bytes", r.peak_host_bytes},
            {"peak_host_bytes_step", r.peak_host_bytes_step},
            {"peak_device_bytes_step", r.peak_device_bytes_step},
            {"peak_rss_bytes", r.peak_rss_bytes},
            {"host_cache", r.host_cache.empty() ? json(nullptr)
                                                : json{{"setting", r.host_cache},
                                                       {"peak_reserved_bytes", r.host_cache_peak_bytes},
                                                       {"peak_in_use_bytes", r.host_cache_peak_in_use_bytes},
                                                       {"hits", r.host_cache_hits},
                                                       {"misses", r.host_cache_misses}}},
            {"pretrain_tokens_per_s", r.pretrain_tokens_per_s},
            {"finetune_tokens_per_s", r.finetune_tokens_per_s},
            {"last_step_seconds", r.last_step_seconds},
            {"total_seconds", r.total_seconds},
            {"curve", r.curve}};
  if (r.generate > 0)
    j["generation"] = {{"prompt", r.prompt}, {"uncompressed", r.sample_before}, {"compressed", r.sample_after}};
  const PackedRun& p = r.packed_run;
  if (p.ran)
    j["generation"]["packed_runtime"] = {{"text", r.sample_packed},
                                         {"tokens_per_s", p.tokens_per_s},
                                         {"resident_weight_mib", p.weight_mib},
                                         {"packed_projections", p.packed_layers},
                                         {"greedy_tokens_equal_compressed_model", p.same_tokens}};
  for (const auto& e : r.eval_sets) j["eval_sets"].push_back({{"label", e.label}, {"tokens", e.ids.numel()}});
  if (!r.profile.is_null()) j["profile"] = r.profile;
  for (const auto& row : r.rows) {
    json jr = {{"method", row.method},
               {"bits", row.bits},
               {"bits_per_weight", row.bits_per_weight},
               {"bits_per_weight_decoder_linear", row.linear_bits},
               {"perplexity", row.evals[0].perplexity},
               {"eval_tokens_per_s", row.evals[0].tokens_per_s}};
    for (size_t i = 0; i < row.evals.size(); ++i) jr["perplexities"][r.eval_sets[i].label] = row.evals[i].perplexity;
    if (!row.note.empty()) jr["note"] = row.note;
    j["results"].push_back(jr);
  }
  return j;
}

}  // namespace

void write_report(const Report& r) {
  const std::string table = comparison_table(r), fact_list = facts(r);
  std::cout << "\n" << r.layer_table << "\n" << table << "\n" << fact_list;
  if (!r.profile_markdown.empty()) std::cout << "\nwhere a fine-tuning step's time goes:\n" << r.profile_markdown;
  if (r.generate > 0) {
    std::cout << "\ngreedy continuation of \"" << r.prompt << "\"\n  uncompressed: " << r.sample_before << "\n";
    if (r.compressed) std::cout << "  compressed:   " << r.sample_after << "\n";
    if (r.packed_run.ran)
      std::cout << "  packed (" << fixed(r.packed_run.tokens_per_s, 1) << " tok/s, "
                << fixed(r.packed_run.weight_mib, 1) << " MiB): " << r.sample_packed << "\n";
  }
  std::ostringstream md;
  md << "# LLaMA compression: " << r.source << "\n\nCommand: `" << r.command << "`\n\nCorpus: " << r.corpus << " ("
     << r.train_documents << " training documents, " << r.eval_documents << " held out; tokenizer " << r.tokenizer
     << "); evaluation windows of " << r.eval_seq_len << " tokens.\n\n"
     << table << "\n"
     << fact_list;
  if (!r.profile_markdown.empty()) md << "\nWhere a fine-tuning step's time goes:\n\n" << r.profile_markdown;
  edkm::write_text_file(r.out_dir + "/results.md", md.str());
  edkm::write_text_file(r.out_dir + "/results.json", results_json(r).dump(2) + "\n");
  std::cout << "wrote " << (r.compressed_path.empty() ? "" : r.compressed_path + ", ") << r.out_dir
            << "/results.md and results.json\n";
}

}  // namespace llama_compress
