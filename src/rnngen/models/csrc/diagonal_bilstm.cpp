// One Diagonal BiLSTM layer (van den Oord et al. 2016, sec. 3.2) with its residual 1x1 convolution
// (sec. 3.3) on the CPU, forward and backward. The skewed map's columns are the image's
// anti-diagonals t = i + j, so the recurrence runs diagonal by diagonal: per diagonal one batched
// GEMM computes, for both directions at once, the 2x1 state-to-state convolution (the states of
// the pixel above and of the pixel to the left, read from the previous diagonal and laid side by
// side), then one fused sweep adds the hoisted 1x1 input-to-state part, runs the LSTM cell
// (eq. 3) and writes each new state straight into the GEMM input of the two positions that read
// it. The right-to-left direction runs on the mirrored image; its un-mirroring and its shift
// down one row (so that it adds context from the rows above only) are index arithmetic in the
// final sweep that sums the two directions. The backward runs the diagonals in reverse with one
// batched GEMM a diagonal; each sweep reads its states' gradients straight from the following
// diagonal's GEMM output. Every weight gradient and the input's is one GEMM over all positions.
// No skewed (H, 2H - 1) map is ever built: nothing is computed for its padding. The sweeps visit
// the map's rows (the hoisted input part, the output's gradient) in diagonal order, which the
// hardware prefetcher cannot follow, so they prefetch them a few positions ahead: without it
// those loads were two thirds of the forward sweep's time.
//
// Layout (B images, H x W pixels, C channels, h units, gates [i | f | g | o]):
//   m (H, B W, C) row-major; w_is (C, 8h) = [left-to-right 4h | right-to-left 4h]; w_ss (2, 2h, 4h),
//   rows [state above ; state left]. Per direction, the positions are stored diagonal by diagonal:
//   position (i, j) of diagonal t = i + j, image b, is row off[t] + (i - lo[t]) B + b of
//   u (2, P, 2h) the GEMM's input, act (2, P, 4h) the activations (i, f, tanh g, o), cs (2, P, h) the
//   cell states and hs (2, P, h) the outputs, P = H W B; for the right-to-left direction j counts
//   from the right edge. GEMM operands in m's dtype (float, double, or bfloat16 with fp32
//   accumulation); gates and cell states in float (double for double inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kGrain = 16;  // positions per parallel chunk

using rnngen::cell_backward;
using rnngen::cell_forward;
using rnngen::ld;
using rnngen::PartialSums;
using rnngen::st;

// Where each anti-diagonal's positions live: diagonal t holds rows lo..hi (column t - row).
struct Diagonals {
  int64_t height, width, batch;
  std::vector<int64_t> lo, off;  // first row; first storage row (of B per position)

  Diagonals(int64_t h, int64_t w, int64_t b) : height(h), width(w), batch(b) {
    int64_t total = 0;
    for (int64_t t = 0; t < h + w - 1; ++t) {
      lo.push_back(std::max<int64_t>(0, t - w + 1));
      off.push_back(total);
      total += rows(t);
    }
  }
  int64_t count() const { return height + width - 1; }
  int64_t rows(int64_t t) const { return (std::min(height - 1, t) - lo[t] + 1) * batch; }  // positions x B
  int64_t at(int64_t i, int64_t j, int64_t b) const { return off[i + j] + (i - lo[i + j]) * batch + b; }
  int64_t max_rows() const { return std::min(height, width) * batch; }
};

// The row of the map (H, B, W, .) that direction d reads at its position (i, j) of image b.
inline int64_t image_row(const Diagonals& g, int64_t d, int64_t i, int64_t j, int64_t b) {
  return (i * g.batch + b) * g.width + (d == 0 ? j : g.width - 1 - j);
}

// Bring the n bytes at p into the cache ahead of their use (see the top of this file).
template <int kWrite = 0>
inline void prefetch(const void* p, int64_t n) {
  for (int64_t k = 0; k < n; k += 64) __builtin_prefetch(static_cast<const char*>(p) + k, kWrite);
}
constexpr int64_t kAhead = 8;  // positions ahead

template <typename T>
void forward_impl(const Diagonals& g, const Tensor& gx, const Tensor& w_ss, const Tensor& bias, const Tensor& h0,
                  const Tensor& c0, const Tensor& m, const Tensor& b_up, Tensor& u, Tensor& act, Tensor& cs,
                  Tensor& hs, Tensor& s, Tensor& out) {
  using A = acc_of<T>;
  const int64_t hid = cs.size(2), g4 = 4 * hid, P = cs.size(1), B = g.batch;
  const int64_t bias_step = bias.dim() == 3 ? 2 * g4 : 0;  // (2, 4h), or (B, 2, 4h): a row per image
  const Tensor h0c = h0.to(u.scalar_type()).contiguous(), c0c = c0.to(cs.scalar_type()).contiguous();
  const Tensor bc = bias.to(cs.scalar_type()).contiguous();
  Tensor pre = at::empty({2, g.max_rows(), g4}, u.options());
  const T* gxp = gx.data_ptr<T>();
  const T* h0p = h0c.data_ptr<T>();
  const A* c0p = c0c.data_ptr<A>();
  const A* bp = bc.data_ptr<A>();
  T* up = u.data_ptr<T>();
  T* actp = act.data_ptr<T>();
  A* csp = cs.data_ptr<A>();
  T* hsp = hs.data_ptr<T>();
  T* prep = pre.data_ptr<T>();

  // the GEMM's input at (i, j): [h of (i - 1, j) | h of (i, j - 1)], both on the previous diagonal. Each
  // cell writes its h into the two rows that read it; off the edges (row 0 above, column 0 left) h0.
  for (int64_t d = 0; d < 2; ++d) {
    for (int64_t t = 0; t < g.count(); ++t) {
      for (int64_t b = 0; b < B; ++b) {
        if (g.lo[t] == 0) std::memcpy(up + (d * P + g.at(0, t, b)) * 2 * hid, h0p + d * hid, hid * sizeof(T));
        if (t < g.height) std::memcpy(up + (d * P + g.at(t, 0, b)) * 2 * hid + hid, h0p + d * hid, hid * sizeof(T));
      }
    }
  }
  for (int64_t t = 0; t < g.count(); ++t) {
    const int64_t rows = g.rows(t), off = g.off[t];
    Tensor pre_t = pre.narrow(1, 0, rows);
    at::bmm_out(pre_t, u.narrow(1, off, rows), w_ss);  // both directions, one call
    at::parallel_for(0, 2 * rows, kGrain, [&](int64_t lo, int64_t hi) {
      std::vector<A> scratch(g4);
      for (int64_t q = lo; q < hi; ++q) {
        if (q + kAhead < hi) {
          const int64_t qa = q + kAhead, da = qa / rows, ia = g.lo[t] + (qa % rows) / B;
          prefetch(gxp + image_row(g, da, ia, t - ia, qa % B) * 2 * g4 + da * g4, g4 * sizeof(T));
        }
        const int64_t d = q / rows, r = q % rows, i = g.lo[t] + r / B, b = r % B, j = t - i, p = d * P + off + r;
        const A* c_prev = j > 0 ? csp + (d * P + g.at(i, j - 1, b)) * hid : c0p + d * hid;
        T* h = hsp + p * hid;
        cell_forward(prep + (d * g.max_rows() + r) * g4, gxp + image_row(g, d, i, j, b) * 2 * g4 + d * g4,
                     bp + b * bias_step + d * g4, scratch.data(), actp + p * g4, c_prev, csp + p * hid, h, hid);
        if (i + 1 < g.height) std::memcpy(up + (d * P + g.at(i + 1, j, b)) * 2 * hid, h, hid * sizeof(T));
        if (j + 1 < g.width) std::memcpy(up + (d * P + g.at(i, j + 1, b)) * 2 * hid + hid, h, hid * sizeof(T));
      }
    });
  }
  // s = left-to-right h at (i, j) + right-to-left h at (i - 1, j): un-mirrored, shifted down a row.
  // The same pass starts the residual output, out = m + b_up (its 1x1 product is added at the end).
  T* sp = s.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  const T* mp = m.data_ptr<T>();
  const T* bup = b_up.data_ptr<T>();
  const int64_t W = g.width, ch = m.size(-1);
  at::parallel_for(0, g.height * B * W, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      for (int64_t c = 0; c < ch; ++c) st(outp + q * ch, c, static_cast<A>(ld(mp + q * ch, c)) + static_cast<A>(ld(bup, c)));
      const int64_t i = q / (B * W), b = (q / W) % B, j = q % W;
      const T* fwd = hsp + g.at(i, j, b) * hid;
      T* dst = sp + q * hid;
      if (i == 0) {
        std::memcpy(dst, fwd, hid * sizeof(T));
        continue;
      }
      const T* rev = hsp + (P + g.at(i - 1, W - 1 - j, b)) * hid;
      for (int64_t k = 0; k < hid; ++k) st(dst, k, static_cast<A>(ld(fwd, k)) + static_cast<A>(ld(rev, k)));
    }
  });
}

template <typename T>
void backward_impl(const Diagonals& g, const Tensor& d_s, const Tensor& w_ss, const Tensor& act, const Tensor& cs,
                   const Tensor& c0, bool per_image_bias, Tensor& dg, Tensor& dgx, Tensor& dh0, Tensor& dc0,
                   Tensor& d_bias) {
  using A = acc_of<T>;
  const int64_t hid = cs.size(2), g4 = 4 * hid, P = cs.size(1), B = g.batch, W = g.width, H = g.height;
  const Tensor c0c = c0.to(cs.scalar_type()).contiguous();
  const Tensor w_t = w_ss.transpose(1, 2);
  Tensor d_u = at::empty({2, g.max_rows(), 2 * hid}, dg.options());  // the last diagonal's, into its inputs
  // the cell state's gradient runs along each row i, from (i, j + 1) to (i, j): one carry per row
  Tensor carry = at::zeros({2, H, B, hid}, cs.options());
  const std::vector<T> zeros(hid, T(0));
  const A* c0p = c0c.data_ptr<A>();
  const T* dsp = d_s.data_ptr<T>();
  const T* actp = act.data_ptr<T>();
  const A* csp = cs.data_ptr<A>();
  T* dgp = dg.data_ptr<T>();
  T* dxp = dgx.data_ptr<T>();
  T* dup = d_u.data_ptr<T>();
  A* carp = carry.data_ptr<A>();
  A* dh0p = dh0.data_ptr<A>();
  A* dc0p = dc0.data_ptr<A>();
  // the bias's gradient, (2, 4h) or per image (B, 2, 4h): the gates' gradient summed in the sweep
  PartialSums<A> d_bias_sums(per_image_bias ? B * 2 * g4 : 2 * g4);

  for (int64_t t = g.count() - 1; t >= 0; --t) {
    const int64_t rows = g.rows(t), off = g.off[t];
    const int64_t next_off = t + 1 < g.count() ? g.off[t + 1] : 0;
    at::parallel_for(0, 2 * rows, kGrain, [&](int64_t lo, int64_t hi) {
      std::vector<A> dh_next(hid);
      A* sums = d_bias_sums.mine();
      for (int64_t q = lo; q < hi; ++q) {
        if (q + kAhead < hi) {
          const int64_t qa = q + kAhead, da = qa / rows, ia = g.lo[t] + (qa % rows) / B, ba = qa % B;
          if (da == 0 || ia + 1 < H) prefetch(dsp + image_row(g, da, ia + da, t - ia, ba) * hid, hid * sizeof(T));
          prefetch<1>(dxp + image_row(g, da, ia, t - ia, ba) * 2 * g4 + da * g4, g4 * sizeof(T));
        }
        const int64_t d = q / rows, r = q % rows, i = g.lo[t] + r / B, b = r % B, j = t - i, p = d * P + off + r;
        // the output's gradient: s read left-to-right (i, j) at (i, j), right-to-left (i, j) a row below
        const T* dh_out = d == 0 ? dsp + image_row(g, 0, i, j, b) * hid
                          : i + 1 < H ? dsp + image_row(g, 1, i + 1, j, b) * hid : zeros.data();
        // the state's gradient from the two positions of diagonal t + 1 that read it (their GEMM
        // input's gradient, still in d_u): as "above" by (i + 1, j), as "left" by (i, j + 1)
        std::fill(dh_next.begin(), dh_next.end(), A(0));
        if (i + 1 < H) {
          const T* s = dup + (d * g.max_rows() + g.at(i + 1, j, b) - next_off) * 2 * hid;
          for (int64_t k = 0; k < hid; ++k) dh_next[k] += static_cast<A>(ld(s, k));
        }
        if (j + 1 < W) {
          const T* s = dup + (d * g.max_rows() + g.at(i, j + 1, b) - next_off) * 2 * hid + hid;
          for (int64_t k = 0; k < hid; ++k) dh_next[k] += static_cast<A>(ld(s, k));
        }
        const A* c_prev = j > 0 ? csp + (d * P + g.at(i, j - 1, b)) * hid : c0p + d * hid;
        cell_backward(actp + p * g4, csp + p * hid, c_prev, dh_out, dh_next.data(),
                      carp + ((d * H + i) * B + b) * hid, dgp + p * g4, hid,
                      sums + ((per_image_bias ? b * 2 : 0) + d) * g4);
        // the same gradient at the map row this position read, for the input-to-state GEMMs
        std::memcpy(dxp + image_row(g, d, i, j, b) * 2 * g4 + d * g4, dgp + p * g4, g4 * sizeof(T));
      }
    });
    Tensor d_u_t = d_u.narrow(1, 0, rows);
    at::bmm_out(d_u_t, dg.narrow(1, off, rows), w_t);  // into [above | left]
    // off the edges the states read were h0 (row 0 above, column 0 left) and c0 (column 0)
    for (int64_t d = 0; d < 2; ++d) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = g.lo[t] + r / B, b = r % B, j = t - i;
        const T* s = dup + (d * g.max_rows() + r) * 2 * hid;
        const A* dc = carp + ((d * H + i) * B + b) * hid;
        for (int64_t k = 0; k < hid; ++k) {
          if (i == 0) dh0p[d * hid + k] += static_cast<A>(ld(s, k));
          if (j == 0) {
            dh0p[d * hid + k] += static_cast<A>(ld(s, hid + k));
            dc0p[d * hid + k] += dc[k];
          }
        }
      }
    }
  }
  d_bias_sums.add_into(d_bias.data_ptr<A>());
}

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// One Diagonal BiLSTM layer with its residual 1x1 convolution (sec. 3.2, 3.3): maps m (H, B W, C)
// -> m + up(h_ltr + h_rtl shifted) + b_up. Returns the output and what the backward reads.
std::vector<Tensor> layer_forward(const Tensor& m, const Tensor& w_is, const Tensor& bias, const Tensor& w_ss,
                                  const Tensor& h0, const Tensor& c0, const Tensor& w_up, const Tensor& b_up,
                                  int64_t batch) {
  TORCH_CHECK(m.dim() == 3 && m.is_contiguous(), "m: a contiguous (H, B W, C) tensor");
  TORCH_CHECK(w_is.scalar_type() == m.scalar_type() && w_ss.scalar_type() == m.scalar_type() &&
              w_up.scalar_type() == m.scalar_type(), "m, w_is, w_ss and w_up: one dtype");
  const int64_t height = m.size(0), n = m.size(1), ch = m.size(2), hid = w_ss.size(1) / 2, g4 = 4 * hid;
  TORCH_CHECK(n % batch == 0 && w_is.size(0) == ch && w_is.size(1) == 2 * g4, "w_is: (C, 8h)");
  TORCH_CHECK(w_ss.dim() == 3 && w_ss.size(0) == 2 && w_ss.size(2) == g4, "w_ss: (2, 2h, 4h)");
  TORCH_CHECK((bias.dim() == 2 && bias.size(0) == 2 && bias.size(1) == g4) ||
              (bias.dim() == 3 && bias.size(0) == batch && bias.size(1) == 2 && bias.size(2) == g4),
              "bias: (2, 4h) or (batch, 2, 4h)");
  const Diagonals g(height, n / batch, batch);
  const int64_t P = height * n;
  const auto acc = m.options().dtype(acc_type(m.scalar_type()));
  const Tensor m2 = m.view({-1, ch});
  Tensor gx = at::mm(m2, w_is);  // the 1x1 input-to-state part, both directions, every pixel
  Tensor u = at::empty({2, P, 2 * hid}, m.options());
  Tensor act = at::empty({2, P, g4}, m.options());
  Tensor cs = at::empty({2, P, hid}, acc);
  Tensor hs = at::empty({2, P, hid}, m.options());
  Tensor s = at::empty({P, hid}, m.options());
  Tensor out = at::empty_like(m);
  const Tensor wc = w_ss.contiguous(), b_upc = b_up.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, m.scalar_type(), "diagonal_bilstm_layer_forward", [&] {
    forward_impl<scalar_t>(g, gx, wc, bias, h0, c0, m, b_upc, u, act, cs, hs, s, out);
  });
  out.view({-1, ch}).addmm_(s, w_up);  // in place: out already holds m + b_up
  return {out, u, act, cs, s};
}

std::vector<Tensor> layer_backward(const Tensor& d_out_, const Tensor& m, const Tensor& u, const Tensor& act,
                                   const Tensor& cs, const Tensor& s, const Tensor& w_is, const Tensor& w_ss,
                                   const Tensor& c0, const Tensor& w_up, int64_t batch, bool per_image_bias) {
  const int64_t height = m.size(0), n = m.size(1), ch = m.size(2), hid = cs.size(2), g4 = 4 * hid;
  const int64_t P = cs.size(1);
  const Diagonals g(height, n / batch, batch);
  const Tensor d_out = d_out_.to(u.scalar_type()).contiguous().view({-1, ch});
  // the residual 1x1 convolution
  Tensor d_s = at::mm(d_out, w_up.t());
  Tensor d_w_up = at::mm(s.t(), d_out);
  Tensor d_b_up = d_out.sum(0);
  // the diagonal loop
  Tensor dg = at::empty({2, P, g4}, u.options());
  Tensor dgx = at::empty({P, 2 * g4}, u.options());  // dg again, in the map's own layout (H B W, 8h)
  Tensor dh0 = at::zeros({2, hid}, cs.options()), dc0 = at::zeros({2, hid}, cs.options());
  Tensor d_bias = at::zeros(per_image_bias ? at::IntArrayRef{batch, 2, g4} : at::IntArrayRef{2, g4}, cs.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, u.scalar_type(), "diagonal_bilstm_layer_backward", [&] {
    backward_impl<scalar_t>(g, d_s, w_ss.contiguous(), act, cs, c0, per_image_bias, dg, dgx, dh0, dc0, d_bias);
  });
  // the state-to-state weights over every position at once, per direction
  Tensor d_w_ss = at::bmm(u.transpose(1, 2), dg);
  // the input-to-state weights and the input's gradient, in the map's own layout
  Tensor d_w_is = at::mm(m.view({-1, ch}).t(), dgx);
  Tensor d_m = at::addmm(d_out, dgx, w_is.t()).view({height, n, ch});
  return {d_m, d_w_is, d_bias, d_w_ss, dh0, dc0, d_w_up, d_b_up};
}

}  // namespace

TORCH_LIBRARY(rnngen_diagonal_bilstm, m) {
  m.def("layer_forward(Tensor m, Tensor w_is, Tensor bias, Tensor w_ss, Tensor h0, Tensor c0, Tensor w_up, "
        "Tensor b_up, int batch) -> Tensor[]");
  m.def("layer_backward(Tensor d_out, Tensor m, Tensor u, Tensor act, Tensor cs, Tensor s, Tensor w_is, "
        "Tensor w_ss, Tensor c0, Tensor w_up, int batch, bool per_image_bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnngen_diagonal_bilstm, CPU, m) {
  m.impl("layer_forward", &layer_forward);
  m.impl("layer_backward", &layer_backward);
}
