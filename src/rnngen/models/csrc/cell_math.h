// Element-wise helpers shared by rnngen's CPU kernels (row_lstm.cpp, lstm_cell.cpp): the LSTM
// nonlinearities, and element loads and stores that the compiler vectorizes. (The JIT builder's
// ninja tracks this header as a dependency of each kernel, so an edit here rebuilds both.)
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace rnngen {

template <typename A>
inline A sigmoid(A x) {
  x = std::min(std::max(x, A(-80)), A(80));  // no inf under -ffast-math
  return A(1) / (A(1) + std::exp(-x));
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

}  // namespace rnngen
