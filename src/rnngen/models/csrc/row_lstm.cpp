// One Row LSTM layer (van den Oord et al. 2016, sec. 3.1) with its residual 1x1 convolution
// (sec. 3.3) on the CPU, forward and backward. Per row one GEMM computes both convolutions (the
// 1xk mask-B input-to-state one over the row's pixels and the 1xk state-to-state one over the
// previous row's states, their taps unfolded side by side), then one fused, vectorized sweep runs
// the LSTM cell (eq. 3) and unfolds the new states for the next row. The backward runs the rows
// in reverse with one GEMM a row back through both convolutions, its output folded onto the
// input's and the previous row's positions in one sweep while still in cache; the weights'
// gradient is one GEMM over all rows. Sums over positions (the biases' gradients) and the
// residual's bias ride along in sweeps that visit every position anyway.
// PyTorch's per-op version of the same loop spends most of its time in a dozen small element-wise
// ops a row and in autograd's copies around them; here a row is its GEMM plus one sweep.
//
// Layout (N = batch x width positions of a row, C channels, h units, gates [i | f | g | o]):
//   m (H, N, C); w_all ((k/2 + 1) C + k h, 4h), tap-major; u (H, N, (k/2 + 1) C + k h) the unfolded
//   taps; act (H, N, 4h) = (i, f, tanh g, o) in m's dtype; cs (H, N, h) the cell states; hs (H, N, h).
//   GEMM operands in m's dtype (float, double, or bfloat16 with fp32 accumulation); gates and
//   cell states in float (double for double inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kGrain = 32;  // positions per parallel chunk

using rnngen::cell_backward;
using rnngen::cell_forward;
using rnngen::ld;
using rnngen::PartialSums;
using rnngen::st;

template <typename T>
void forward_impl(const Tensor& m, const Tensor& w_all, const Tensor& bias, const Tensor& h0, const Tensor& c0,
                  const Tensor& b_up, int64_t batch, int64_t kernel, Tensor& u, Tensor& act, Tensor& cs, Tensor& hs,
                  Tensor& out) {
  using A = acc_of<T>;
  const int64_t height = m.size(0), n = m.size(1), ch = m.size(2), g4 = w_all.size(1), hid = g4 / 4;
  const int64_t width = n / batch, half = kernel / 2, kx = (half + 1) * ch, kk = kx + kernel * hid;
  Tensor pre = at::empty({n, g4}, m.options());
  const Tensor h0c = h0.to(cs.scalar_type()).contiguous(), c0c = c0.to(cs.scalar_type()).contiguous();
  // bias: (4h), or (batch, 4h) with a row per image (a class-conditional gate bias)
  const Tensor bc = bias.to(cs.scalar_type()).contiguous();
  const int64_t bias_step = bias.dim() == 2 ? g4 : 0;
  const A* h0p = h0c.data_ptr<A>();
  const A* c0p = c0c.data_ptr<A>();
  const A* bp = bc.data_ptr<A>();
  const T* mp = m.data_ptr<T>();
  const T* bup = b_up.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  T* up = u.data_ptr<T>();
  T* hsp = hs.data_ptr<T>();
  T* actp = act.data_ptr<T>();
  A* csp = cs.data_ptr<A>();

  // input taps, every row at once: u[i][b, j, t C + c] = m[i][b, j + t - half, c], t <= half (mask B:
  // the pixel and the ones left of it); zeros left of the row (u is not zero-filled: one pass less).
  // The same pass starts the residual output, out = m + b_up (its 1x1 product is added at the end).
  at::parallel_for(0, height * n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t j = (q % n) % width;
      for (int64_t c = 0; c < ch; ++c) st(outp + q * ch, c, static_cast<A>(ld(mp + q * ch, c)) + static_cast<A>(ld(bup, c)));
      T* dst = up + q * kk;
      for (int64_t t = 0; t <= half; ++t) {
        if (j + t - half < 0) {
          std::memset(dst + t * ch, 0, ch * sizeof(T));  // bits 0: 0.0 in every dtype here
          continue;
        }
        std::memcpy(dst + t * ch, mp + (q + t - half) * ch, ch * sizeof(T));
      }
    }
  });
  // state taps of row i: u[i][b, j, kx + t h + k] = h_{i-1}[b, j + t - half, k], zeros beyond the ends
  auto unfold_row = [&](int64_t row, auto state_at) {
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t j = p % width;
        T* dst = up + (row * n + p) * kk + kx;
        for (int64_t t = 0; t < kernel; ++t) {
          const int64_t src = j + t - half;
          if (src < 0 || src >= width) {
            std::memset(dst + t * hid, 0, hid * sizeof(T));
            continue;
          }
          const auto s = state_at(p + t - half);
          for (int64_t k = 0; k < hid; ++k) st(dst, t * hid + k, s[k]);
        }
      }
    });
  };
  unfold_row(0, [&](int64_t) { return h0p; });

  for (int64_t i = 0; i < height; ++i) {
    at::mm_out(pre, u[i], w_all);  // both convolutions of the row in one GEMM
    const T* prep = pre.data_ptr<T>();
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      std::vector<A> scratch(g4);
      for (int64_t p = lo; p < hi; ++p) {
        cell_forward(prep + p * g4, static_cast<const T*>(nullptr), bp + (p / width) * bias_step, scratch.data(),
                     actp + (i * n + p) * g4, i == 0 ? c0p : csp + ((i - 1) * n + p) * hid, csp + (i * n + p) * hid,
                     hsp + (i * n + p) * hid, hid);
      }
    });
    if (i + 1 < height) {
      const T* row_h = hsp + i * n * hid;
      unfold_row(i + 1, [&](int64_t q) { return row_h + q * hid; });
    }
  }
}

// The row loop in reverse. Per row one GEMM takes the gates' gradient back through both
// convolutions at once (into the row's input taps and the previous row's state taps), and one
// sweep folds the taps back onto their positions while that output is still in cache: the state
// taps into dh_next for the next (upper) row's cells, the input taps, plus the residual path's
// d_out, into d_m. Bias gradients are summed in the same sweeps (PartialSums).
template <typename T>
void backward_impl(const Tensor& d_out, const Tensor& d_hs, const Tensor& w_all, const Tensor& act, const Tensor& cs,
                   const Tensor& c0, int64_t batch, int64_t kernel, bool per_image_bias, Tensor& d_gates,
                   Tensor& dh_next, Tensor& dc, Tensor& d_bias, Tensor& d_m, Tensor& d_b_up) {
  using A = acc_of<T>;
  const int64_t height = act.size(0), n = act.size(1), g4 = act.size(2), hid = g4 / 4, ch = d_out.size(2);
  const int64_t width = n / batch, half = kernel / 2, kx = (half + 1) * ch, kk = w_all.size(0);
  const Tensor w_t = w_all.t().contiguous();
  const Tensor c0c = c0.to(cs.scalar_type()).contiguous();
  const A* c0p = c0c.data_ptr<A>();
  const T* dop = d_out.data_ptr<T>();
  const T* dhsp = d_hs.data_ptr<T>();
  const T* actp = act.data_ptr<T>();
  const A* csp = cs.data_ptr<A>();
  T* dgp = d_gates.data_ptr<T>();
  T* dmp = d_m.data_ptr<T>();
  A* dhn = dh_next.data_ptr<A>();
  A* dcp = dc.data_ptr<A>();
  Tensor d_taps = at::empty({n, kk}, d_hs.options());  // [input taps (half + 1) C | state taps k h]
  const T* dt = d_taps.data_ptr<T>();
  // the bias's gradient, (4h) or per image (batch, 4h); the residual's, d_out summed
  PartialSums<A> d_bias_sums(per_image_bias ? batch * g4 : g4), d_b_up_sums(ch);
  const int64_t bias_step = per_image_bias ? g4 : 0;

  for (int64_t i = height - 1; i >= 0; --i) {
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      A* sums = d_bias_sums.mine();
      for (int64_t p = lo; p < hi; ++p) {
        cell_backward(actp + (i * n + p) * g4, csp + (i * n + p) * hid,
                      i == 0 ? c0p : csp + ((i - 1) * n + p) * hid, dhsp + (i * n + p) * hid, dhn + p * hid,
                      dcp + p * hid, dgp + (i * n + p) * g4, hid, sums + (p / width) * bias_step);
      }
    });
    at::mm_out(d_taps, d_gates[i], w_t);
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      std::vector<A> acc(ch);
      A* sums = d_b_up_sums.mine();
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t j = p % width, q = i * n + p;
        A* dst = dhn + p * hid;
        for (int64_t k = 0; k < hid; ++k) dst[k] = A(0);
        for (int64_t t = 0; t < kernel; ++t) {  // position j - t + half read state j at tap t
          if (j - t + half < 0 || j - t + half >= width) continue;
          const T* s = dt + (p - t + half) * kk + kx + t * hid;
          for (int64_t k = 0; k < hid; ++k) dst[k] += static_cast<A>(ld(s, k));
        }
        for (int64_t c = 0; c < ch; ++c) acc[c] = static_cast<A>(ld(dop + q * ch, c));
        for (int64_t c = 0; c < ch; ++c) sums[c] += acc[c];
        for (int64_t t = 0; t <= half; ++t) {  // pixel j is input tap t of position j - t + half
          if (j - t + half >= width) continue;
          const T* s = dt + (p - t + half) * kk + t * ch;
          for (int64_t c = 0; c < ch; ++c) acc[c] += static_cast<A>(ld(s, c));
        }
        for (int64_t c = 0; c < ch; ++c) st(dmp + q * ch, c, acc[c]);
      }
    });
  }
  d_bias_sums.add_into(d_bias.data_ptr<A>());
  d_b_up_sums.add_into(d_b_up.data_ptr<A>());
}

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// One Row LSTM layer with its residual 1x1 convolution (sec. 3.1, 3.3): maps m (H, N, C) ->
// m + up(h) + b_up. w_all = [input-to-state taps (half + 1) C ; state-to-state taps k h] x 4h.
std::vector<Tensor> layer_forward(const Tensor& m, const Tensor& w_all, const Tensor& bias, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_up, const Tensor& b_up, int64_t batch,
                                  int64_t kernel) {
  TORCH_CHECK(m.dim() == 3 && m.is_contiguous(), "m: a contiguous (H, N, C) tensor");
  TORCH_CHECK(w_all.scalar_type() == m.scalar_type() && w_up.scalar_type() == m.scalar_type(),
              "m, w_all and w_up: one dtype");
  const int64_t height = m.size(0), n = m.size(1), ch = m.size(2), g4 = w_all.size(1), hid = g4 / 4;
  TORCH_CHECK(w_all.size(0) == (kernel / 2 + 1) * ch + kernel * hid, "w_all: ((k/2 + 1) C + k h, 4h)");
  TORCH_CHECK((bias.dim() == 1 && bias.size(0) == g4) || (bias.dim() == 2 && bias.size(0) == batch &&
              bias.size(1) == g4), "bias: (4h) or (batch, 4h)");
  const auto acc = m.options().dtype(acc_type(m.scalar_type()));
  Tensor u = at::empty({height, n, w_all.size(0)}, m.options());  // the taps beyond the ends zeroed below
  Tensor act = at::empty({height, n, g4}, m.options());
  Tensor cs = at::empty({height, n, hid}, acc);
  Tensor hs = at::empty({height, n, hid}, m.options());
  Tensor out = at::empty_like(m);
  const Tensor wc = w_all.contiguous(), b_upc = b_up.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, m.scalar_type(), "row_lstm_layer_forward", [&] {
    forward_impl<scalar_t>(m, wc, bias, h0, c0, b_upc, batch, kernel, u, act, cs, hs, out);
  });
  out.view({-1, ch}).addmm_(hs.view({-1, hid}), w_up);  // in place: out already holds m + b_up
  return {out, u, act, cs, hs};
}

std::vector<Tensor> layer_backward(const Tensor& d_out_, const Tensor& u, const Tensor& w_all, const Tensor& act,
                                   const Tensor& cs, const Tensor& hs, const Tensor& c0, const Tensor& w_up,
                                   int64_t batch, int64_t kernel, bool per_image_bias) {
  const int64_t height = act.size(0), n = act.size(1), g4 = act.size(2), hid = g4 / 4;
  const int64_t ch = w_up.size(1), kx = (kernel / 2 + 1) * ch, kh = kernel * hid;
  const Tensor d_out = d_out_.to(u.scalar_type()).contiguous();
  const Tensor d_out2 = d_out.view({-1, ch}), hs2 = hs.view({-1, hid});
  // the residual 1x1 convolution
  Tensor d_hs = at::mm(d_out2, w_up.t());
  Tensor d_w_up = at::mm(hs2.t(), d_out2);
  // the row loop
  Tensor d_gates = at::empty({height, n, g4}, u.options());
  Tensor dh_next = at::zeros({n, hid}, cs.options());
  Tensor dc = at::zeros({n, hid}, cs.options());
  Tensor d_bias = at::zeros(per_image_bias ? at::IntArrayRef{batch, g4} : at::IntArrayRef{g4}, cs.options());
  Tensor d_m = at::empty_like(d_out);
  Tensor d_b_up = at::zeros({ch}, cs.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, u.scalar_type(), "row_lstm_layer_backward", [&] {
    backward_impl<scalar_t>(d_out, d_hs.view({height, n, hid}), w_all, act, cs, c0, batch, kernel, per_image_bias,
                            d_gates, dh_next, dc, d_bias, d_m, d_b_up);
  });
  // both convolutions' weights over all rows at once
  Tensor d_w_all = at::mm(u.view({-1, kx + kh}).t(), d_gates.view({-1, g4}));
  return {d_m, d_w_all, d_bias, dh_next.sum(0), dc.sum(0), d_w_up, d_b_up.to(u.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(rnngen_row_lstm, m) {
  m.def("layer_forward(Tensor m, Tensor w_all, Tensor bias, Tensor h0, Tensor c0, Tensor w_up, Tensor b_up, "
        "int batch, int kernel) -> Tensor[]");
  m.def("layer_backward(Tensor d_out, Tensor u, Tensor w_all, Tensor act, Tensor cs, Tensor hs, Tensor c0, "
        "Tensor w_up, int batch, int kernel, bool per_image_bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnngen_row_lstm, CPU, m) {
  m.impl("layer_forward", &layer_forward);
  m.impl("layer_backward", &layer_backward);
}
