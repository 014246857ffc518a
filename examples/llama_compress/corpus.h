#pragma once
// Text corpora of the LLaMA example: documents from a text file, a JSONL file or a directory of
// fortune files, split into training and held-out documents, and encoded to one token stream.
#include <ATen/core/Tensor.h>
#include <edkm/models/tokenizer.h>

#include <string>
#include <vector>

namespace llama_compress {

/// Whether `path` is a directory.
bool is_dir(const std::string& path);

/// Documents of a text: separated by lines holding only "%" (fortune files), else by blank lines.
std::vector<std::string> split_documents(const std::string& text);

/// Documents of a corpus: a JSONL file ({"text": ...} per line), a text file, or a directory of
/// fortune files (read in name order). Throws c10::Error naming the file when it holds fewer than
/// `min_documents` documents or a JSONL line is not an object with a string "text".
std::vector<std::string> read_corpus(const std::string& path, size_t min_documents = 10);

/// The documents as one stream of token ids (int64), each followed by the tokenizer's EOS when
/// it has one.
at::Tensor encode_documents(const edkm::Tokenizer& tokenizer, const std::vector<const std::string*>& docs);

/// A short name for a corpus path: its last component.
std::string corpus_label(const std::string& path);

}  // namespace llama_compress
