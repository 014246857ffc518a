#pragma once
// edkm: train-time differentiable weight clustering (DKM) for LibTorch, with low memory.
#include "edkm/checkpoint.h"
#include "edkm/dkm.h"
#include "edkm/dkm_module.h"
#include "edkm/kmeans.h"
#include "edkm/memory.h"
#include "edkm/offload.h"
#include "edkm/palette.h"
#include "edkm/palettizer.h"
#include "edkm/progress.h"
#include "edkm/safetensors.h"
#include "edkm/saved_tensor_hooks.h"
#include "edkm/version.h"
