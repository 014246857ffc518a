#pragma once
// edkm: train-time differentiable weight clustering (DKM) for LibTorch, with low memory.
// The headers are grouped by concept, as the sources under src/ are (one CMake target a group:
// edkm::core, edkm::offload, edkm::distributed, edkm::nn, edkm::llama; this header is edkm::edkm).
#include "edkm/version.h"

// edkm::core: DKM and its engines, the Palettizer, files, memory, progress
#include "edkm/dkm/dkm.h"
#include "edkm/dkm/kmeans.h"
#include "edkm/dkm/module.h"
#include "edkm/dkm/palette.h"
#include "edkm/io/checkpoint.h"
#include "edkm/io/file_io.h"
#include "edkm/io/gguf.h"
#include "edkm/io/safetensors.h"
#include "edkm/memory/host_pool.h"
#include "edkm/memory/memory.h"
#include "edkm/palettizer/palettizer.h"
#include "edkm/util/progress.h"

// edkm::offload: saved-tensor hooks and the offloader
#include "edkm/offload/offloader.h"
#include "edkm/offload/saved_tensor_hooks.h"

// edkm::nn: memory-saving modules and the optimizer
#include "edkm/nn/activation_checkpoint.h"
#include "edkm/nn/distill.h"
#include "edkm/nn/glu.h"
#include "edkm/nn/local_attention.h"
#include "edkm/nn/padding.h"
#include "edkm/nn/palettized_linear.h"
#include "edkm/nn/prune.h"
#include "edkm/optim/adamw_bf16.h"

// edkm::llama: the LLaMA family, tokenizers, GPTQ
#include "edkm/models/llama.h"
#include "edkm/models/llama_io.h"
#include "edkm/models/llama_runtime.h"
#include "edkm/models/tokenizer.h"
#include "edkm/quant/gptq.h"

// edkm::distributed (c10d sharding) is not included here: include "edkm/distributed/distributed.h".
