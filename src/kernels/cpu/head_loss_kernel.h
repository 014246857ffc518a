#pragma once
// The element-wise part of edkm::functional::lm_head_loss on CPU (nn/distill.cpp), fused: for each
// row of a chunk of student logits s (and teacher logits t), the cross entropy against the next
// token, the distillation KL at temperature T, and d loss / d s written over s, in three passes
// over the row (maxima; the sums; the gradient) instead of the ~15 passes of the ATen form. AVX-512
// or AVX2 + FMA builds of one source (head_loss_rows.h, with the streaming passes' vec16.h and
// inline exp), chosen at run time; without either the caller keeps its ATen form.
#include <cstdint>
#include <string>

#include "edkm/export.h"

EDKM_INTERNAL_BEGIN
namespace edkm::kernels {

/// One chunk of rows. Row i: s + i * V (fp32, contiguous), t + i * V when kl.
///   ce[i] = logsumexp(s_i) - s_i[target[i]]                                 (when ce; target valid)
///   kl[i] = sum_v p log(p / q), p = softmax(t_i / T), q = softmax(s_i / T)   (when kl)
///   s_i  := ce_coef[i] (softmax(s_i) - onehot(target[i])) + kl_coef[i] (q - p)   (when grad)
/// A class where p is 0 adds 0 to the KL (a -inf teacher logit included). Coefficients of 0 skip
/// their terms (a pad row's gradient is 0).
struct HeadLossRows {
  float* s = nullptr;
  const float* t = nullptr;
  int64_t rows = 0, vocab = 0;
  const int64_t* target = nullptr;  // [rows]
  const float* ce_coef = nullptr;   // [rows]: d loss / d ce_i (0: no target)
  const float* kl_coef = nullptr;   // [rows]: T x d loss / d kl_i (0: not in the KL)
  float temperature = 1.0f;
  bool ce = false, kl = false, grad = false;
  double* ce_out = nullptr;  // [rows] when ce
  double* kl_out = nullptr;  // [rows] when kl
};

enum class HeadLossIsa : int32_t { kNone = 0, kAvx2 = 1, kAvx512 = 2 };
/// The best this CPU and build have, capped by EDKM_HEAD_LOSS_ISA=none|avx2|avx512 in the
/// environment; set_head_loss_isa caps it for this process (tests compare the builds and the ATen
/// form: kNone).
HeadLossIsa head_loss_isa();
void set_head_loss_isa(HeadLossIsa isa);
std::string to_string(HeadLossIsa isa);

/// Runs the rows on the chosen build (threads over rows); false when it is kNone (nothing done).
bool head_loss_rows(const HeadLossRows& p);

#if defined(EDKM_HEAD_LOSS_SIMD)
void head_loss_row_avx2(const HeadLossRows& p, int64_t row);
void head_loss_row_avx512(const HeadLossRows& p, int64_t row);
#endif

}  // namespace edkm::kernels
EDKM_INTERNAL_END
