// One LSTM cell update (Hochreiter & Schmidhuber 1997, in PyTorch's (i, f, g, o) gate order),
// forward and backward, each one vectorized sweep over the batch. DRAW's hand-written recurrence
// (eqs. 5 and 7 of Gregor et al. 2015) runs two cells a step, forward and backward; as PyTorch ops
// a cell is about ten element-wise passes each way, each with its own dispatch and trip through
// memory, which at DRAW's shapes (64 x 1024 gates) cost as much as the step's GEMMs.
//
// Layout: gates (B, 4H) pre-activations, rows strided, columns contiguous; overwritten with the
// activations (i, f, tanh g, o), which the backward reads. c_prev, c, tanh_c (B, H) contiguous.
// Gates and cell state in float or double; h in their dtype or bfloat16 (it is only ever a GEMM
// operand, and rounding it here saves the cast).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

namespace {

using at::Tensor;

using rnngen::sigmoid;
using rnngen::st;
using rnngen::tanh_;

constexpr int64_t kGrain = 8;  // batch rows per parallel chunk

template <typename A, typename T>
void row_forward(A* __restrict__ a, const A* __restrict__ c_prev, A* __restrict__ c, A* __restrict__ tanh_c,
                 T* __restrict__ h, int64_t hid) {
  for (int64_t k = 0; k < 2 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 2 * hid; k < 3 * hid; ++k) a[k] = tanh_(a[k]);
  for (int64_t k = 3 * hid; k < 4 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 0; k < hid; ++k) c[k] = a[hid + k] * c_prev[k] + a[k] * a[2 * hid + k];  // f c' + i g
  for (int64_t k = 0; k < hid; ++k) tanh_c[k] = tanh_(c[k]);
  for (int64_t k = 0; k < hid; ++k) st(h, k, a[3 * hid + k] * tanh_c[k]);  // h = o tanh(c)
}

template <typename A>
void row_backward(const A* __restrict__ dh, const A* __restrict__ dc, const A* __restrict__ a,
                  const A* __restrict__ c_prev, const A* __restrict__ tanh_c, A* __restrict__ out,
                  A* __restrict__ dc_prev, int64_t hid) {
  for (int64_t k = 0; k < hid; ++k) {
    const A i = a[k], f = a[hid + k], g = a[2 * hid + k], o = a[3 * hid + k], t = tanh_c[k];
    const A d_c = dc[k] + dh[k] * o * (A(1) - t * t);  // dL/dc, through h = o tanh(c) too
    out[k] = d_c * g * i * (A(1) - i);
    out[hid + k] = d_c * c_prev[k] * f * (A(1) - f);
    out[2 * hid + k] = d_c * i * (A(1) - g * g);
    out[3 * hid + k] = dh[k] * t * o * (A(1) - o);
    dc_prev[k] = d_c * f;
  }
}

void check(const Tensor& gates, const Tensor& c, const char* what) {
  TORCH_CHECK(gates.dim() == 2 && gates.stride(1) == 1, what, ": gates must be (B, 4H) with contiguous columns");
  TORCH_CHECK(c.dim() == 2 && c.is_contiguous() && c.size(0) == gates.size(0) && 4 * c.size(1) == gates.size(1),
              what, ": the cell state must be a contiguous (B, H)");
  TORCH_CHECK(gates.scalar_type() == c.scalar_type(), what, ": gates and cell state in one dtype");
}

std::tuple<Tensor, Tensor, Tensor> cell_forward(const Tensor& gates, const Tensor& c_prev, at::ScalarType h_dtype) {
  check(gates, c_prev, "cell_forward");
  const int64_t batch = gates.size(0), hid = c_prev.size(1), gs = gates.stride(0);
  Tensor c = at::empty_like(c_prev), tanh_c = at::empty_like(c_prev);
  Tensor h = at::empty({batch, hid}, c_prev.options().dtype(h_dtype));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "cell_forward", [&] {
    using A = scalar_t;
    A* a = gates.data_ptr<A>();
    const A* cp = c_prev.data_ptr<A>();
    A *cc = c.data_ptr<A>(), *tc = tanh_c.data_ptr<A>();
    auto run = [&](auto* out) {
      at::parallel_for(0, batch, kGrain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          row_forward(a + b * gs, cp + b * hid, cc + b * hid, tc + b * hid, out + b * hid, hid);
      });
    };
    if (h_dtype == at::kBFloat16) {
      if constexpr (std::is_same_v<A, float>) {
        run(h.data_ptr<c10::BFloat16>());
      } else {
        TORCH_CHECK(false, "cell_forward: a bfloat16 h needs float gates");
      }
    } else {
      TORCH_CHECK(h_dtype == gates.scalar_type(), "cell_forward: h in the gates' dtype or bfloat16");
      run(h.data_ptr<A>());
    }
  });
  return {h, c, tanh_c};
}

// Writes dL/d(pre-activations) into ``out`` (B, 4H) and returns dL/dc_prev.
Tensor cell_backward(const Tensor& dh, const Tensor& dc, const Tensor& act, const Tensor& c_prev,
                     const Tensor& tanh_c, const Tensor& out) {
  check(act, c_prev, "cell_backward");
  check(out, tanh_c, "cell_backward");
  TORCH_CHECK(dh.is_contiguous() && dc.is_contiguous() && dh.sizes() == c_prev.sizes() &&
                  dc.sizes() == c_prev.sizes() && dh.scalar_type() == c_prev.scalar_type() &&
                  dc.scalar_type() == c_prev.scalar_type(),
              "cell_backward: dh and dc must be contiguous (B, H) in the cell state's dtype");
  const int64_t batch = act.size(0), hid = c_prev.size(1), as = act.stride(0), os = out.stride(0);
  Tensor dc_prev = at::empty_like(c_prev);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "cell_backward", [&] {
    using A = scalar_t;
    const A *pdh = dh.data_ptr<A>(), *pdc = dc.data_ptr<A>(), *pa = act.data_ptr<A>();
    const A *pcp = c_prev.data_ptr<A>(), *ptc = tanh_c.data_ptr<A>();
    A *po = out.data_ptr<A>(), *pdp = dc_prev.data_ptr<A>();
    at::parallel_for(0, batch, kGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        row_backward(pdh + b * hid, pdc + b * hid, pa + b * as, pcp + b * hid, ptc + b * hid, po + b * os,
                     pdp + b * hid, hid);
    });
  });
  return dc_prev;
}

}  // namespace

TORCH_LIBRARY(rnngen_lstm_cell, m) {
  m.def("cell_forward(Tensor(a!) gates, Tensor c_prev, ScalarType h_dtype) -> (Tensor, Tensor, Tensor)");
  m.def("cell_backward(Tensor dh, Tensor dc, Tensor act, Tensor c_prev, Tensor tanh_c, Tensor(a!) out) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnngen_lstm_cell, CPU, m) {
  m.impl("cell_forward", cell_forward);
  m.impl("cell_backward", cell_backward);
}
