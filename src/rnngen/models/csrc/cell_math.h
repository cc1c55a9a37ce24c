// Element-wise helpers shared by rnngen's CPU kernels (row_lstm.cpp, diagonal_bilstm.cpp,
// lstm_cell.cpp): the LSTM nonlinearities, element loads and stores that the compiler vectorizes,
// and the PixelRNN layers' per-position cell. (The JIT builder's
// ninja tracks this header as a dependency of each kernel, so an edit here rebuilds both.)
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnngen {

// Sums over positions taken inside a parallel sweep that already visits them: each thread adds
// into its own row, and the rows are added at the end. No atomics, and no second pass over the
// (memory-bound, cache-cold) summed tensor: such a pass cost as much as a GEMM here.
template <typename A>
class PartialSums {
 public:
  explicit PartialSums(int64_t size) : size_(size), rows_(at::get_num_threads() * size, A(0)) {}
  A* mine() { return rows_.data() + at::get_thread_num() * size_; }  // call inside the sweep
  void add_into(A* out) const {
    for (std::size_t r = 0; r < rows_.size(); r += size_) {
      for (int64_t k = 0; k < size_; ++k) out[k] += rows_[r + k];
    }
  }

 private:
  int64_t size_;
  std::vector<A> rows_;
};

// e^x in float, inline so that every loop that calls it vectorizes without a libm call:
// x = n ln 2 + r with |r| <= ln 2 / 2 (Cody and Waite's two-part ln 2), e^r by its Taylor series to
// r^6 (truncation below 2e-7 relative on that interval), 2^n put into the exponent bits.
inline float exp_(float x) {
  x = std::min(std::max(x, -87.0f), 87.0f);  // 2^n stays a normal float; no inf under -ffast-math
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}
inline double exp_(double x) {
  return std::exp(std::min(std::max(x, -700.0), 700.0));  // no inf under -ffast-math
}

template <typename A>
inline A sigmoid(A x) {
  return A(1) / (A(1) + exp_(-x));
}

template <typename A>
inline A tanh_(A x) {
  return A(2) * sigmoid(A(2) * x) - A(1);
}

// bfloat16 through its bits (the upper half of a float; stores round to nearest even), so no
// loop holds a c10::BFloat16 struct.
inline float ld(const c10::BFloat16* p, int64_t k) {
  const uint32_t bits = uint32_t(reinterpret_cast<const uint16_t*>(p)[k]) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
inline void st(c10::BFloat16* p, int64_t k, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  reinterpret_cast<uint16_t*>(p)[k] = uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
template <typename T>
inline T ld(const T* p, int64_t k) {
  return p[k];
}
template <typename T, typename A>
inline void st(T* p, int64_t k, A v) {
  p[k] = static_cast<T>(v);
}

// One position's LSTM cell (PixelRNN eq. 3), forward: pre-activations g (+ g2 where not null) + bias
// (4h) -> the gates (i, f, tanh g, o) in the float scratch a (saved in the GEMM dtype: bfloat16
// halves the memory traffic of the largest saved tensor; the cell state stays float), the cell
// state c and the output h. Free functions with restrict pointers and simple loops, so that every
// loop vectorizes (inside the parallel lambdas gcc gave up on them).
template <typename T, typename A>
void cell_forward(const T* __restrict__ g, const T* __restrict__ g2, const A* __restrict__ bias, A* __restrict__ a,
                  T* __restrict__ saved, const A* __restrict__ c_prev, A* __restrict__ c, T* __restrict__ h,
                  int64_t hid) {
  // the bias added here rather than by the GEMM (addmm would first copy it into its output)
  for (int64_t k = 0; k < 4 * hid; ++k) a[k] = static_cast<A>(ld(g, k)) + bias[k];
  if (g2 != nullptr) {
    for (int64_t k = 0; k < 4 * hid; ++k) a[k] += static_cast<A>(ld(g2, k));
  }
  for (int64_t k = 0; k < 2 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 2 * hid; k < 3 * hid; ++k) a[k] = tanh_(a[k]);
  for (int64_t k = 3 * hid; k < 4 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 0; k < hid; ++k) c[k] = a[hid + k] * c_prev[k] + a[k] * a[2 * hid + k];  // f c' + i g
  for (int64_t k = 0; k < hid; ++k) st(h, k, a[3 * hid + k] * tanh_(c[k]));                // o tanh(c)
  for (int64_t k = 0; k < 4 * hid; ++k) st(saved, k, a[k]);  // for the backward, in the GEMM dtype
}

// Backward of cell_forward: dh = the output's gradient + dh_next (from the states that read this
// one), dc the cell state's (updated in place to that of c_prev); writes the pre-activations'
// gradient dg and, where d_bias is not null, adds dg to it (the bias's gradient, summed here while
// dg is in L1 rather than in a pass of its own).
template <typename T, typename A>
void cell_backward(const T* __restrict__ a, const A* __restrict__ c, const A* __restrict__ c_prev,
                   const T* __restrict__ dh_out, const A* __restrict__ dh_next, A* __restrict__ dc,
                   T* __restrict__ dg, int64_t hid, A* __restrict__ d_bias = nullptr) {
  for (int64_t k = 0; k < hid; ++k) {
    const A gi = ld(a, k), gf = ld(a, hid + k), gg = ld(a, 2 * hid + k), go = ld(a, 3 * hid + k);
    const A tc = tanh_(c[k]);
    const A dh = static_cast<A>(ld(dh_out, k)) + dh_next[k];
    const A dcell = dc[k] + dh * go * (A(1) - tc * tc);
    st(dg, k, dcell * gg * gi * (A(1) - gi));
    st(dg, hid + k, dcell * c_prev[k] * gf * (A(1) - gf));
    st(dg, 2 * hid + k, dcell * gi * (A(1) - gg * gg));
    st(dg, 3 * hid + k, dh * tc * go * (A(1) - go));
    dc[k] = dcell * gf;
  }
  if (d_bias != nullptr) {  // a loop of its own: inside the one above, gcc no longer vectorizes it
    for (int64_t k = 0; k < 4 * hid; ++k) d_bias[k] += static_cast<A>(ld(dg, k));
  }
}

}  // namespace rnngen
