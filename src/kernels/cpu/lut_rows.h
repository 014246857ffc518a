#pragma once
// The LUT matmul rows of one SIMD instruction set, written once: included by lut_kernel_avx2.cpp
// and lut_rows_avx512.h after they define `Isa`, a traits struct of that set:
//   static constexpr int kLanes;                       // floats per vector
//   using F;                                           // float vector
//   static F zero(); static F load(const float*); static void store(float*, F);
//   static F fma(F a, F b, F c); static F mul(F, F); static F set1(float); static float sum(F);
//   template <int WIDTH> struct Decoder { explicit Decoder(int32_t bits); void row(uint64_t row_bit);
//                                         I operator()(const uint8_t* packed, uint64_t bit) const; };
//   template <int MODE> struct Table { void load(const float* lut, int64_t k); F operator()(I) const; };
//   template <class Body> static void dispatch(int32_t bits, Body&& body);   // body.template run<MODE, WIDTH>()
// Rows walk their indices kLanes at a time (two vectors per step), the tail one by one.
#include <cstdint>

#include "kernels/lut_math.h"

namespace edkm::kernels::lut_rows {

// The LUT of row r; `table` reloaded when the row starts another group.
template <class Table>
const float* row_lut(const LutParams& p, int64_t r, Table& table, int64_t& current) {
  const int64_t g = r / p.rows_per_lut;
  const float* lut = p.lut + g * p.lut_stride;
  if (g != current) {
    table.load(lut, p.lut_stride);
    current = g;
  }
  return lut;
}

template <class Isa, int M, int MODE, int WIDTH>
void gemv_rows(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  using F = typename Isa::F;
  constexpr int L = Isa::kLanes;
  typename Isa::template Decoder<WIDTH> dec(p.bits);
  typename Isa::template Table<MODE> table;
  int64_t current = -1;
  const uint64_t b = static_cast<uint64_t>(p.bits);
  const int64_t in = p.in;
  for (int64_t r = r0; r < r1; ++r) {
    const float* lut = row_lut(p, r, table, current);
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(in) * b;
    dec.row(bit);
    F acc[M], acc2[M];
    for (int j = 0; j < M; ++j) acc[j] = acc2[j] = Isa::zero();
    int64_t c = 0;
    for (; c + 2 * L <= in; c += 2 * L, bit += 2 * L * b) {
      const F w0 = table(dec(p.packed, bit));
      const F w1 = table(dec(p.packed, bit + L * b));
      for (int j = 0; j < M; ++j) {
        acc[j] = Isa::fma(w0, Isa::load(x + j * in + c), acc[j]);
        acc2[j] = Isa::fma(w1, Isa::load(x + j * in + c + L), acc2[j]);
      }
    }
    for (; c + L <= in; c += L, bit += L * b) {
      const F w0 = table(dec(p.packed, bit));
      for (int j = 0; j < M; ++j) acc[j] = Isa::fma(w0, Isa::load(x + j * in + c), acc[j]);
    }
    float tail[M] = {};
    for (; c < in; ++c, bit += b) {
      const float w = lut[lut_index_at(p.packed, bit, p.bits)];
      for (int j = 0; j < M; ++j) tail[j] += w * x[j * in + c];
    }
    for (int j = 0; j < M; ++j) y[j * p.out + r] = lut_finish(p, r, Isa::sum(acc[j]) + Isa::sum(acc2[j]) + tail[j]);
  }
}

template <class Isa, int MODE, int WIDTH>
void decode_rows(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  constexpr int L = Isa::kLanes;
  typename Isa::template Decoder<WIDTH> dec(p.bits);
  typename Isa::template Table<MODE> table;
  int64_t current = -1;
  const uint64_t b = static_cast<uint64_t>(p.bits);
  for (int64_t r = r0; r < r1; ++r) {
    const float* lut = row_lut(p, r, table, current);
    const float s = p.scale ? p.scale[r] : 1.0f;
    const auto vs = Isa::set1(s);
    float* o = out + (r - r0) * p.in;
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(p.in) * b;
    dec.row(bit);
    int64_t c = 0;
    for (; c + L <= p.in; c += L, bit += L * b) Isa::store(o + c, Isa::mul(table(dec(p.packed, bit)), vs));
    for (; c < p.in; ++c, bit += b) o[c] = lut[lut_index_at(p.packed, bit, p.bits)] * s;
  }
}

template <class Isa>
struct GemvBody {
  const LutParams& p;
  const float* x;
  int64_t m;
  float* y;
  int64_t r0, r1;
  template <int MODE, int WIDTH>
  void run() const {
    switch (m) {
      case 1:
        return gemv_rows<Isa, 1, MODE, WIDTH>(p, x, y, r0, r1);
      case 2:
        return gemv_rows<Isa, 2, MODE, WIDTH>(p, x, y, r0, r1);
      case 3:
        return gemv_rows<Isa, 3, MODE, WIDTH>(p, x, y, r0, r1);
      default:
        return gemv_rows<Isa, 4, MODE, WIDTH>(p, x, y, r0, r1);
    }
  }
};

template <class Isa>
struct DecodeBody {
  const LutParams& p;
  int64_t r0, r1;
  float* out;
  template <int MODE, int WIDTH>
  void run() const {
    decode_rows<Isa, MODE, WIDTH>(p, r0, r1, out);
  }
};

template <class Isa>
void gemv(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  Isa::dispatch(p.bits, GemvBody<Isa>{p, x, m, y, r0, r1});
}

template <class Isa>
void decode(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  Isa::dispatch(p.bits, DecodeBody<Isa>{p, r0, r1, out});
}

}  // namespace edkm::kernels::lut_rows
