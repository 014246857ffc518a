#include "corpus.h"

#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>
#include <dirent.h>
#include <edkm/io/file_io.h>
#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

namespace llama_compress {

std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  const bool fortune = text.find("\n%\n") != std::string::npos;
  const std::string sep = fortune ? "\n%\n" : "\n\n";
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(sep, at);
    if (end == std::string::npos) end = text.size();
    std::string doc = text.substr(at, end - at);
    if (fortune && doc.size() >= 2 && doc.compare(0, 2, "%\n") == 0) doc.erase(0, 2);
    if (doc.find_first_not_of(" \t\n%") != std::string::npos) docs.push_back(doc);
    at = end + sep.size();
  }
  return docs;
}

std::vector<std::string> read_corpus(const std::string& path, size_t min_documents) {
  std::vector<std::string> docs;
  if (edkm::is_directory(path)) {  // fortune files: the plain ones (not the .dat indices, not the .u8 links, no links)
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n[0] != '.' && n.find('.') == std::string::npos) names.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());  // a fixed order: reproducible splits
    for (const auto& n : names) {
      struct stat st {};
      // Symbolic links (GPL -> GPL-3 in /usr/share/common-licenses) would repeat a file.
      if (::lstat((path + "/" + n).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      auto part = split_documents(edkm::read_text_file(path + "/" + n));
      docs.insert(docs.end(), part.begin(), part.end());
    }
  } else if (path.size() > 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0) {
    std::istringstream in(edkm::read_text_file(path));
    std::string line;
    for (int64_t no = 1; std::getline(in, line); ++no) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        TORCH_CHECK(false, path, ":", no, ": not JSON: ", e.what());
      }
      TORCH_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), path, ":", no,
                  ": expected an object with a string \"text\"");
      docs.push_back(j["text"].get<std::string>());
    }
  } else {
    docs = split_documents(edkm::read_text_file(path));
  }
  TORCH_CHECK(docs.size() >= min_documents, "corpus ", path, " has ", docs.size(), " documents; need at least ",
              min_documents);
  return docs;
}

at::Tensor encode_documents(const edkm::Tokenizer& tokenizer, const std::vector<const std::string*>& docs) {
  std::vector<int64_t> ids;
  for (auto* d : docs) {
    auto t = tokenizer.encode(*d);
    ids.insert(ids.end(), t.begin(), t.end());
    if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
  }
  return at::tensor(ids, at::kLong);
}

std::string corpus_label(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

}  // namespace llama_compress
