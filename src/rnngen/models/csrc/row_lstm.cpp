// The Row LSTM's row loop (van den Oord et al. 2016, sec. 3.1) on the CPU, forward and backward:
// per row one GEMM (the 1xk state-to-state convolution over the previous row's unfolded states,
// added to the hoisted input-to-state part) and one fused pass for the LSTM cell (eq. 3) that also
// unfolds the new states for the next row. PyTorch's per-op version of the same loop spends most
// of its time in a dozen small element-wise ops a row; here each row is the GEMM plus one sweep.
//
// Layout (N = batch x width positions of a row, h units, gates [i | f | g | o], tap-major states):
//   gates_in (H, N, 4h), w (k h, 4h), unfolded (H, N, k h), act (H, N, 4h) = (i, f, tanh g, o),
//   cs (H, N, h) the cell states. GEMM operands in the input dtype (float, double or bfloat16 with
//   fp32 accumulation); cell states and gates in float (double for double inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

using at::Tensor;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A>
inline A sigmoid(A x) {
  x = std::min(std::max(x, A(-80)), A(80));  // no inf under -ffast-math
  return A(1) / (A(1) + std::exp(-x));
}

template <typename A>
inline A tanh_(A x) {
  return A(2) * sigmoid(A(2) * x) - A(1);
}

constexpr int64_t kGrain = 32;  // positions per parallel chunk

// Element loads and stores that the compiler vectorizes: bfloat16 through its bits (the upper
// half of a float; stores round to nearest even), so no loop holds a c10::BFloat16 struct.
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

// One position's LSTM cell (eq. 3), forward: pre-activations g_in + g_ss (4h) -> act = (i, f, tanh g, o),
// the cell state c and the output h. Free functions with restrict pointers and simple loops, so
// that every loop vectorizes (inside the parallel lambdas gcc gave up on them).
template <typename T, typename A>
void cell_forward(const T* __restrict__ g_in, const T* __restrict__ g_ss, A* __restrict__ a,
                  const A* __restrict__ c_prev, A* __restrict__ c, T* __restrict__ h, int64_t hid) {
  // pre-activation = input-to-state part + state-to-state part, added here rather than by the GEMM
  // (addmm would first copy the input part into its output)
  for (int64_t k = 0; k < 4 * hid; ++k) a[k] = static_cast<A>(ld(g_in, k)) + static_cast<A>(ld(g_ss, k));
  for (int64_t k = 0; k < 2 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 2 * hid; k < 3 * hid; ++k) a[k] = tanh_(a[k]);
  for (int64_t k = 3 * hid; k < 4 * hid; ++k) a[k] = sigmoid(a[k]);
  for (int64_t k = 0; k < hid; ++k) c[k] = a[hid + k] * c_prev[k] + a[k] * a[2 * hid + k];  // f c' + i g
  for (int64_t k = 0; k < hid; ++k) st(h, k, a[3 * hid + k] * tanh_(c[k]));                // o tanh(c)
}

// Backward of cell_forward: dh = the output's gradient + dh_next (from the next row), dc the
// cell state's (updated in place to that of c_prev); writes the pre-activations' gradient dg.
template <typename T, typename A>
void cell_backward(const A* __restrict__ a, const A* __restrict__ c, const A* __restrict__ c_prev,
                   const T* __restrict__ dh_out, const A* __restrict__ dh_next, A* __restrict__ dc,
                   T* __restrict__ dg, int64_t hid) {
  for (int64_t k = 0; k < hid; ++k) {
    const A gi = a[k], gf = a[hid + k], gg = a[2 * hid + k], go = a[3 * hid + k];
    const A tc = tanh_(c[k]);
    const A dh = static_cast<A>(ld(dh_out, k)) + dh_next[k];
    const A dcell = dc[k] + dh * go * (A(1) - tc * tc);
    st(dg, k, dcell * gg * gi * (A(1) - gi));
    st(dg, hid + k, dcell * c_prev[k] * gf * (A(1) - gf));
    st(dg, 2 * hid + k, dcell * gi * (A(1) - gg * gg));
    st(dg, 3 * hid + k, dh * tc * go * (A(1) - go));
    dc[k] = dcell * gf;
  }
}

template <typename T>
void forward_impl(const Tensor& gates_in, const Tensor& w, const Tensor& h0, const Tensor& c0, int64_t batch,
                  int64_t kernel, Tensor& hs, Tensor& unfolded, Tensor& act, Tensor& cs) {
  using A = acc_of<T>;
  const int64_t height = gates_in.size(0), n = gates_in.size(1), g4 = gates_in.size(2), hid = g4 / 4;
  const int64_t width = n / batch, half = kernel / 2, kh = kernel * hid;
  Tensor pre = at::empty({n, g4}, gates_in.options());
  const Tensor h0c = h0.to(act.scalar_type()).contiguous(), c0c = c0.to(act.scalar_type()).contiguous();
  const A* h0p = h0c.data_ptr<A>();
  const A* c0p = c0c.data_ptr<A>();
  T* up = unfolded.data_ptr<T>();
  T* hsp = hs.data_ptr<T>();
  A* actp = act.data_ptr<A>();
  A* csp = cs.data_ptr<A>();

  // unfolded[row][b, j, t] = state of (b, j + t - half) or zero beyond the row's ends
  auto unfold_row = [&](int64_t row, auto state_at) {
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t j = p % width;
        T* dst = up + (row * n + p) * kh;
        for (int64_t t = 0; t < kernel; ++t) {
          const int64_t src = j + t - half;
          if (src < 0 || src >= width) continue;  // stays zero
          const auto s = state_at(p + t - half);
          for (int64_t k = 0; k < hid; ++k) st(dst, t * hid + k, s[k]);
        }
      }
    });
  };
  unfold_row(0, [&](int64_t) { return h0p; });

  for (int64_t i = 0; i < height; ++i) {
    at::mm_out(pre, unfolded[i], w);
    const T* prep = pre.data_ptr<T>();
    const T* inp = gates_in.data_ptr<T>() + i * n * g4;
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        cell_forward(inp + p * g4, prep + p * g4, actp + (i * n + p) * g4, i == 0 ? c0p : csp + ((i - 1) * n + p) * hid,
                     csp + (i * n + p) * hid, hsp + (i * n + p) * hid, hid);
      }
    });
    if (i + 1 < height) {
      const T* row_h = hsp + i * n * hid;
      unfold_row(i + 1, [&](int64_t q) { return row_h + q * hid; });
    }
  }
}

template <typename T>
void backward_impl(const Tensor& d_hs, const Tensor& w, const Tensor& act, const Tensor& cs, const Tensor& c0,
                   int64_t batch, int64_t kernel, Tensor& d_gates, Tensor& dh_next, Tensor& dc) {
  using A = acc_of<T>;
  const int64_t height = act.size(0), n = act.size(1), g4 = act.size(2), hid = g4 / 4;
  const int64_t width = n / batch, half = kernel / 2, kh = kernel * hid;
  const Tensor w_t = w.t();
  const Tensor c0c = c0.to(act.scalar_type()).contiguous();
  const A* c0p = c0c.data_ptr<A>();
  const T* dhsp = d_hs.data_ptr<T>();
  const A* actp = act.data_ptr<A>();
  const A* csp = cs.data_ptr<A>();
  T* dgp = d_gates.data_ptr<T>();
  A* dhn = dh_next.data_ptr<A>();
  A* dcp = dc.data_ptr<A>();
  Tensor d_taps = at::empty({n, kh}, d_hs.options());

  for (int64_t i = height - 1; i >= 0; --i) {
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        cell_backward(actp + (i * n + p) * g4, csp + (i * n + p) * hid,
                      i == 0 ? c0p : csp + ((i - 1) * n + p) * hid, dhsp + (i * n + p) * hid, dhn + p * hid,
                      dcp + p * hid, dgp + (i * n + p) * g4, hid);
      }
    });
    // the gradient into the previous row's states: one GEMM, then fold the k taps back
    at::mm_out(d_taps, d_gates[i], w_t);
    const T* dt = d_taps.data_ptr<T>();
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t j = p % width;
        A* dst = dhn + p * hid;
        for (int64_t k = 0; k < hid; ++k) dst[k] = A(0);
        for (int64_t t = 0; t < kernel; ++t) {  // position j - t + half read state j at tap t
          const int64_t q = j - t + half;
          if (q < 0 || q >= width) continue;
          const T* s = dt + (p - t + half) * kh + t * hid;
          for (int64_t k = 0; k < hid; ++k) dst[k] += static_cast<A>(ld(s, k));
        }
      }
    });
  }
}

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<Tensor> row_lstm_forward(const Tensor& gates_in, const Tensor& w, const Tensor& h0, const Tensor& c0,
                                     int64_t batch, int64_t kernel) {
  TORCH_CHECK(gates_in.dim() == 3 && gates_in.is_contiguous(), "gates_in: a contiguous (H, N, 4h) tensor");
  TORCH_CHECK(w.scalar_type() == gates_in.scalar_type(), "w and gates_in: one dtype");
  const int64_t height = gates_in.size(0), n = gates_in.size(1), hid = gates_in.size(2) / 4;
  const auto acc = gates_in.options().dtype(acc_type(gates_in.scalar_type()));
  Tensor hs = at::empty({height, n, hid}, gates_in.options());
  Tensor unfolded = at::zeros({height, n, kernel * hid}, gates_in.options());
  Tensor act = at::empty({height, n, 4 * hid}, acc);
  Tensor cs = at::empty({height, n, hid}, acc);
  const Tensor wc = w.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates_in.scalar_type(), "row_lstm_forward", [&] {
    forward_impl<scalar_t>(gates_in, wc, h0, c0, batch, kernel, hs, unfolded, act, cs);
  });
  return {hs, unfolded, act, cs};
}

std::vector<Tensor> row_lstm_backward(const Tensor& d_hs, const Tensor& unfolded, const Tensor& w, const Tensor& act,
                                      const Tensor& cs, const Tensor& c0, int64_t batch, int64_t kernel) {
  const int64_t height = act.size(0), n = act.size(1), g4 = act.size(2), hid = g4 / 4;
  const Tensor dhs = d_hs.to(unfolded.scalar_type()).contiguous();
  Tensor d_gates = at::empty({height, n, g4}, unfolded.options());
  Tensor dh_next = at::zeros({n, hid}, act.options());
  Tensor dc = at::zeros({n, hid}, act.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, unfolded.scalar_type(), "row_lstm_backward", [&] {
    backward_impl<scalar_t>(dhs, w.contiguous(), act, cs, c0, batch, kernel, d_gates, dh_next, dc);
  });
  // the state-to-state weight's gradient over all rows at once
  Tensor d_w = at::mm(unfolded.view({-1, kernel * hid}).t(), d_gates.view({-1, g4}));
  return {d_gates, d_w, dh_next.sum(0), dc.sum(0)};
}

}  // namespace

TORCH_LIBRARY(rnngen_row_lstm, m) {
  m.def("forward(Tensor gates_in, Tensor w, Tensor h0, Tensor c0, int batch, int kernel) -> Tensor[]");
  m.def("backward(Tensor d_hs, Tensor unfolded, Tensor w, Tensor act, Tensor cs, Tensor c0, int batch, "
        "int kernel) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnngen_row_lstm, CPU, m) {
  m.impl("forward", &row_lstm_forward);
  m.impl("backward", &row_lstm_backward);
}
