// PixelRNN generation on the CPU (van den Oord et al. 2016, sec. 2 and 3): one call draws one row
// of every sequence, pixel by pixel, through both layer kinds (the Row LSTM, sec. 3.1; the
// Diagonal BiLSTM, sec. 3.2), the mask-A input convolution and the output head (sec. 3.4). Each
// pixel is the few small matrix products and cells of every layer at one position: as PyTorch ops
// that is a few dozen dispatches of microsecond-sized work a pixel and layer, here it is the
// arithmetic itself. Sequences are independent within a row, so a row is drawn block by block (a
// few images and their label-free twins under guidance, whose state stays in cache through the
// row), the blocks shared among the threads: one parallel region a row.
// rnngen/models/pixelrnn_sampling.py is the same loop in PyTorch ops, the fallback and the tests'
// oracle; rnngen/models/fast/pixelrnn_sampler.py packs the weights and holds the state between rows.
//
// Layout (n images, N = n or 2n sequences with the twins, C = 2h channels, h units, gates
// [i | f | g | o]): x (N, 1, H, W) the images as drawn; probs (n, 1, H, W); u (n, W) the row's
// uniforms, pixel = u < p; given and hidden (n, 1, H, W) or empty: observed pixels are kept;
// maps (N, H, W, layers, C) or empty: a repair model's conditioning, added to each layer's input.
// Row LSTM state per layer: the row above's h with k/2 zeros at both ends (N, W + k - 1, h) and c
// (N, W, h). Diagonal BiLSTM state per layer: the row above's left-to-right and right-to-left h
// (N, W, h) each. Weights in the model's dtype (float or double), GEMM operands and cells alike.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

// C[r, :n] += A[r, :k] B[:k, :n] for the R rows of a block (A's rows lda apart, C's ldc, B k x n
// row-major). Columns in tiles of 16 x R accumulators the compiler keeps in vector registers, so
// each weight row loaded serves R sequences.
template <typename T, int R>
void gemm_block(const T* a, int64_t lda, const T* b, int64_t k, int64_t n, T* c, int64_t ldc) {
  constexpr int64_t kTile = 32 / sizeof(T) * 4;  // 32 floats or 16 doubles: four 256-bit registers a row
  for (int64_t n0 = 0; n0 < n; n0 += kTile) {
    const int64_t nt = std::min(kTile, n - n0);
    T acc[R][kTile];
    for (int r = 0; r < R; ++r) {
      for (int64_t q = 0; q < nt; ++q) acc[r][q] = c[r * ldc + n0 + q];
    }
    if (nt == kTile) {
      for (int64_t p = 0; p < k; ++p) {
        const T* w = b + p * n + n0;
        for (int r = 0; r < R; ++r) {
          const T v = a[r * lda + p];
          for (int64_t q = 0; q < kTile; ++q) acc[r][q] += v * w[q];
        }
      }
    } else {
      for (int64_t p = 0; p < k; ++p) {
        const T* w = b + p * n + n0;
        for (int r = 0; r < R; ++r) {
          const T v = a[r * lda + p];
          for (int64_t q = 0; q < nt; ++q) acc[r][q] += v * w[q];
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int64_t q = 0; q < nt; ++q) c[r * ldc + n0 + q] = acc[r][q];
    }
  }
}

template <typename T>
void gemm(int rows, const T* a, int64_t lda, const T* b, int64_t k, int64_t n, T* c, int64_t ldc) {
  switch (rows) {
    case 6: return gemm_block<T, 6>(a, lda, b, k, n, c, ldc);
    case 5: return gemm_block<T, 5>(a, lda, b, k, n, c, ldc);
    case 4: return gemm_block<T, 4>(a, lda, b, k, n, c, ldc);
    case 3: return gemm_block<T, 3>(a, lda, b, k, n, c, ldc);
    case 2: return gemm_block<T, 2>(a, lda, b, k, n, c, ldc);
    default: return gemm_block<T, 1>(a, lda, b, k, n, c, ldc);
  }
}

// The LSTM cell (eq. 3) on one position's pre-activations g (4h): c = f c_prev + i g, h = o tanh(c);
// c may be c_prev (updated in place).
template <typename T>
void cell(T* g, const T* c_prev, T* c, T* h, int64_t hid) {
  using rnngen::sigmoid;
  using rnngen::tanh_;
  for (int64_t q = 0; q < 2 * hid; ++q) g[q] = sigmoid(g[q]);
  for (int64_t q = 2 * hid; q < 3 * hid; ++q) g[q] = tanh_(g[q]);
  for (int64_t q = 3 * hid; q < 4 * hid; ++q) g[q] = sigmoid(g[q]);
  for (int64_t q = 0; q < hid; ++q) {
    c[q] = g[hid + q] * c_prev[q] + g[q] * g[2 * hid + q];
    h[q] = g[3 * hid + q] * tanh_(c[q]);
  }
}

// One layer's weights, either kind, the gates' products stacked into one matrix w[d] (K, 4h) whose
// operand is gathered side by side. Row LSTM: the mask-B input taps ((k/2 + 1) C rows), then the
// state taps (k h). Diagonal BiLSTM, per direction d: the input (C), the state above and the state
// left (h each: the 2x1 state kernel's two rows); h0[d], c0[d]. Both: bias[d] (4h), up (h, C), b_up.
template <typename T>
struct Layer {
  const T* w[2];
  int64_t k;  // w's rows
  const T* bias[2];
  const T* h0[2];
  const T* c0[2];
  const T* up;
  const T* b_up;
  const T* gate_bias;  // (N, 4h) or (N, 2, 4h), a class's, or null
  T* state[2];         // see the layout above
};

template <typename T>
struct Net {
  bool diagonal;
  int64_t n, seqs, height, width, ch, hid, kernel, half, out_hidden;
  const T* first_w;  // (24, C): the taps mask A keeps, raster order (three rows of 7, then 3)
  const T* first_b;
  const T* maps;  // (seqs, H, W, layers, C): a repair model's maps added to each layer's input, or null
  const T* w1;  // (C, O)
  const T* b1;
  const T* w2;  // (O)
  T b2;
  std::vector<Layer<T>> layers;
};

constexpr int kBlock = 6;  // sequences a product serves: 6 x 4 registers of accumulators (gemm_block)

// A block: images [b0, b0 + rows) and their twins [n + b0, ...), drawn together through a row; a
// thread's scratch, sized for kBlock, reused from block to block.
template <typename T>
struct Block {
  int64_t b0, rows, runs;
  std::vector<T> inputs;  // per layer, sequence: this row's layer inputs (Row LSTM: k/2 zeros first)
  std::vector<T> h_row;   // per layer, sequence: Row LSTM this row's h (W, h); Diagonal the h, c left
  std::vector<T> logits;  // per sequence: the pixel's logit
  int64_t local(int64_t s, int64_t n) const { return s < n ? s - b0 : kBlock + s - n - b0; }
  int64_t count() const { return runs * kBlock; }
};

// m (R, C): the mask-A convolution at (i, j) of sequences s .. s + R - 1, zeros beyond the image.
template <typename T>
void first_layer(const Net<T>& net, const T* x, int64_t s, int rows, int64_t i, int64_t j, T* m) {
  const int64_t c = net.ch, w = net.width;
  for (int r = 0; r < rows; ++r) {
    T* out = m + r * c;
    for (int64_t q = 0; q < c; ++q) out[q] = net.first_b[q];
    const T* img = x + (s + r) * net.height * w;
    for (int64_t tap = 0; tap < 24; ++tap) {
      const int64_t y = i + tap / 7 - 3, xx = j + tap % 7 - 3;
      if (y < 0 || xx < 0 || xx >= w) continue;
      const T v = img[y * w + xx];
      if (v == T(0)) continue;
      const T* wt = net.first_w + tap * c;
      for (int64_t q = 0; q < c; ++q) out[q] += v * wt[q];
    }
  }
}

// m (R, C) += layer l's map at (i, j) of sequences s .. s + R - 1 (a repair model's conditioning)
template <typename T>
void add_map(const Net<T>& net, int64_t s, int rows, int64_t i, int64_t j, int64_t l, T* m) {
  const int64_t c = net.ch, layers = net.layers.size();
  for (int r = 0; r < rows; ++r) {
    const T* add = net.maps + ((((s + r) * net.height + i) * net.width + j) * layers + l) * c;
    for (int64_t q = 0; q < c; ++q) m[r * c + q] += add[q];
  }
}

// a[r] = [p[0] + r lda[0] (size[0]) | p[1] + r lda[1] (size[1]) | p[2] + r lda[2] (size[2])]: the
// operand of a layer's stacked product, for rows r < R
template <typename T>
void gather(T* a, int rows, int64_t k, std::initializer_list<std::tuple<const T*, int64_t, int64_t>> parts) {
  for (int r = 0; r < rows; ++r) {
    T* dst = a + r * k;
    for (const auto& [p, lda, size] : parts) {
      std::memcpy(dst, p + r * lda, size * sizeof(T));
      dst += size;
    }
  }
}

// One layer at pixel (i, j) for sequences s .. s + R - 1: m (R, C) += the layer's output (sec. 3.3).
template <typename T>
void layer_step(const Net<T>& net, const Layer<T>& L, Block<T>& sh, int64_t l, int64_t s, int rows, int64_t i,
                int64_t j, T* m, T* gates, T* h, T* a) {
  const int64_t c = net.ch, hid = net.hid, g4 = 4 * hid, w = net.width, local = sh.local(s, net.n);
  const int64_t in_w = net.diagonal ? w : net.half + w;
  const int64_t per_seq = in_w * c;
  T* in = sh.inputs.data() + (l * sh.count() + local) * per_seq;
  for (int r = 0; r < rows; ++r) std::memcpy(in + r * per_seq + (in_w - w + j) * c, m + r * c, c * sizeof(T));
  for (int r = 0; r < rows; ++r) {
    const T* gb = L.gate_bias ? L.gate_bias + (s + r) * g4 * (net.diagonal ? 2 : 1) : nullptr;
    for (int64_t q = 0; q < g4; ++q) gates[r * g4 + q] = L.bias[0][q] + (gb ? gb[q] : T(0));
  }
  if (!net.diagonal) {  // taps: this row's inputs at j - k/2 .. j, the row above's h at j - k/2 .. j + k/2
    const int64_t above_w = w + 2 * net.half;
    gather<T>(a, rows, L.k, {{in + j * c, per_seq, (net.half + 1) * c},
                             {L.state[0] + s * above_w * hid + j * hid, above_w * hid, net.kernel * hid}});
    gemm<T>(rows, a, L.k, L.w[0], L.k, g4, gates, g4);
    for (int r = 0; r < rows; ++r) {
      T* c_at = L.state[1] + ((s + r) * w + j) * hid;  // read, then overwritten: no later pixel needs it
      cell(gates + r * g4, c_at, c_at, h + r * hid, hid);
      std::memcpy(sh.h_row.data() + ((l * sh.count() + local + r) * w + j) * hid, h + r * hid, hid * sizeof(T));
    }
  } else {  // left-to-right: the input, the state above (i - 1, j) and the state left (i, j - 1)
    T* above_f = L.state[0] + (s * w + j) * hid;
    T* left = sh.h_row.data() + ((l * sh.count() + local) * 2) * hid;  // per sequence: h, c of (i, j - 1)
    if (j == 0) {
      for (int r = 0; r < rows; ++r) {
        std::memcpy(left + r * 2 * hid, L.h0[0], hid * sizeof(T));
        std::memcpy(left + r * 2 * hid + hid, L.c0[0], hid * sizeof(T));
      }
    }
    gather<T>(a, rows, L.k, {{m, c, c}, {above_f, w * hid, hid}, {left, 2 * hid, hid}});
    gemm<T>(rows, a, L.k, L.w[0], L.k, g4, gates, g4);
    for (int r = 0; r < rows; ++r) {
      T* hc = left + r * 2 * hid;
      cell(gates + r * g4, hc + hid, hc + hid, hc, hid);
      std::memcpy(above_f + r * w * hid, hc, hid * sizeof(T));  // read above: now this row's
      // the right-to-left output the row above left behind (shifted down a row; none for row 0)
      const T* rev = L.state[1] + ((s + r) * w + j) * hid;
      for (int64_t q = 0; q < hid; ++q) h[r * hid + q] = hc[q] + (i > 0 ? rev[q] : T(0));
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int64_t q = 0; q < c; ++q) m[r * c + q] += L.b_up[q];
  }
  gemm<T>(rows, h, hid, L.up, hid, c, m, c);  // the residual's 1x1 convolution
}

// Diagonal BiLSTM, row i complete: its right-to-left direction, from the right end, written over
// the row above's (each position read before it is written), for sequences s .. s + R - 1.
template <typename T>
void reverse_row(const Net<T>& net, const Layer<T>& L, Block<T>& sh, int64_t l, int64_t s, int rows, T* gates,
                 T* hc, T* a) {
  const int64_t c = net.ch, hid = net.hid, g4 = 4 * hid, w = net.width, local = sh.local(s, net.n);
  const T* in = sh.inputs.data() + (l * sh.count() + local) * w * c;
  for (int r = 0; r < rows; ++r) {
    std::memcpy(hc + r * 2 * hid, L.h0[1], hid * sizeof(T));
    std::memcpy(hc + r * 2 * hid + hid, L.c0[1], hid * sizeof(T));
  }
  for (int64_t j = w - 1; j >= 0; --j) {
    T* above_r = L.state[1] + (s * w + j) * hid;
    for (int r = 0; r < rows; ++r) {
      const T* gb = L.gate_bias ? L.gate_bias + ((s + r) * 2 + 1) * g4 : nullptr;
      for (int64_t q = 0; q < g4; ++q) gates[r * g4 + q] = L.bias[1][q] + (gb ? gb[q] : T(0));
    }
    gather<T>(a, rows, L.k, {{in + j * c, w * c, c}, {above_r, w * hid, hid}, {hc, 2 * hid, hid}});
    gemm<T>(rows, a, L.k, L.w[1], L.k, g4, gates, g4);
    for (int r = 0; r < rows; ++r) {
      cell(gates + r * g4, hc + r * 2 * hid + hid, hc + r * 2 * hid + hid, hc + r * 2 * hid, hid);
      std::memcpy(above_r + r * w * hid, hc + r * 2 * hid, hid * sizeof(T));
    }
  }
}

// The head (sec. 3.4) on m (R, C): ReLU, 1x1 to O, ReLU, 1x1 to the logit.
template <typename T>
void head(const Net<T>& net, const T* m, int rows, T* relu_m, T* hidden, T* logits) {
  const int64_t c = net.ch, o = net.out_hidden;
  for (int64_t q = 0; q < rows * c; ++q) relu_m[q] = std::max(m[q], T(0));
  for (int r = 0; r < rows; ++r) std::memcpy(hidden + r * o, net.b1, o * sizeof(T));
  gemm<T>(rows, relu_m, c, net.w1, c, o, hidden, o);
  for (int r = 0; r < rows; ++r) {
    T acc = net.b2;
    for (int64_t q = 0; q < o; ++q) acc += std::max(hidden[r * o + q], T(0)) * net.w2[q];
    logits[r] = acc;
  }
}

template <typename T>
struct Draw {
  T* x;
  T* probs;
  const T* u;
  const T* given;
  const bool* hidden;
  T* logits_out;
  T temperature, scale;
};

// Row i of a block's images and their twins.
template <typename T>
void draw_block(const Net<T>& net, const Draw<T>& d, Block<T>& sh, int64_t i) {
  const int64_t c = net.ch, hid = net.hid, w = net.width, n = net.n, layers = net.layers.size();
  const int rows = static_cast<int>(sh.rows);
  std::vector<T> m(kBlock * c), gates(kBlock * 4 * hid), h(kBlock * 2 * hid), relu_m(kBlock * c),
      hidden(kBlock * net.out_hidden), a(kBlock * net.layers[0].k);
  for (int64_t j = 0; j < w; ++j) {
    for (int64_t run = 0; run < sh.runs; ++run) {
      const int64_t s = sh.b0 + run * n;
      first_layer(net, d.x, s, rows, i, j, m.data());
      for (int64_t l = 0; l < layers; ++l) {
        if (net.maps != nullptr) add_map(net, s, rows, i, j, l, m.data());
        layer_step(net, net.layers[l], sh, l, s, rows, i, j, m.data(), gates.data(), h.data(), a.data());
      }
      head(net, m.data(), rows, relu_m.data(), hidden.data(), sh.logits.data() + sh.local(s, n));
    }
    for (int64_t b = sh.b0; b < sh.b0 + rows; ++b) {
      T logit = sh.logits[b - sh.b0];
      if (sh.runs == 2) {  // classifier-free guidance (Ho and Salimans 2022, eq. 6)
        const T free = sh.logits[kBlock + b - sh.b0];
        logit = free + d.scale * (logit - free);
      }
      const T p = T(1) / (T(1) + std::exp(-logit / d.temperature));
      const int64_t at = (b * net.height + i) * w + j;
      T pixel = d.u[b * w + j] < p ? T(1) : T(0);
      if (d.hidden != nullptr && !d.hidden[at]) pixel = d.given[at];
      d.x[at] = pixel;
      if (sh.runs == 2) d.x[((b + n) * net.height + i) * w + j] = pixel;
      d.probs[at] = p;
      d.logits_out[b * w + j] = logit;
    }
  }
  for (int64_t run = 0; run < sh.runs; ++run) {
    const int64_t s = sh.b0 + run * n, local = sh.local(s, n);
    for (int64_t l = 0; l < layers; ++l) {
      const Layer<T>& L = net.layers[l];
      if (net.diagonal) {
        reverse_row(net, L, sh, l, s, rows, gates.data(), h.data(), a.data());
        continue;
      }
      const int64_t above_w = w + 2 * net.half;  // this row's h becomes the row above
      for (int r = 0; r < rows; ++r) {
        std::memcpy(L.state[0] + ((s + r) * above_w + net.half) * hid,
                    sh.h_row.data() + (l * sh.count() + local + r) * w * hid, w * hid * sizeof(T));
      }
    }
  }
}

template <typename T>
const T* ptr(const Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "the sampler's tensors must be contiguous");
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

// weights: [first_w, first_b, w1, b1, w2, b2] then per layer, Row LSTM: [w, bias, up, b_up];
// Diagonal BiLSTM: [w (2, C + 2h, 4h), bias (2, 4h), up, b_up, h0, c0].
template <typename T>
Net<T> unpack(at::TensorList weights, at::TensorList state, at::TensorList gate_biases, const Tensor& maps, bool diagonal, int64_t kernel, int64_t n, const Tensor& x) {
  Net<T> net;
  net.diagonal = diagonal;
  net.n = n;
  net.seqs = x.size(0);
  net.height = x.size(2);
  net.width = x.size(3);
  net.ch = weights[0].size(1);
  net.out_hidden = weights[2].size(1);
  net.kernel = kernel;
  net.half = kernel / 2;
  net.first_w = ptr<T>(weights[0]);
  net.first_b = ptr<T>(weights[1]);
  TORCH_CHECK(maps.numel() == 0 || maps.numel() == x.size(0) * x.size(2) * x.size(3) *
              static_cast<int64_t>(gate_biases.size()) * weights[0].size(1), "maps: (sequences, H, W, layers, C) or empty");
  net.maps = ptr<T>(maps);
  net.w1 = ptr<T>(weights[2]);
  net.b1 = ptr<T>(weights[3]);
  net.w2 = ptr<T>(weights[4]);
  net.b2 = weights[5].item<T>();
  const int64_t per = diagonal ? 6 : 4, layers = gate_biases.size();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 6 + per * layers && static_cast<int64_t>(state.size()) ==
              2 * layers, "the sampler's weights and state: 6 + ", per, " and 2 tensors a layer");
  for (int64_t l = 0; l < layers; ++l) {
    const Tensor* w = weights.data() + 6 + per * l;
    Layer<T> L{};
    L.gate_bias = ptr<T>(gate_biases[l]);
    L.state[0] = state[2 * l].data_ptr<T>();
    L.state[1] = state[2 * l + 1].data_ptr<T>();
    net.hid = w[0].size(-1) / 4;
    L.k = w[0].size(-2);
    L.up = ptr<T>(w[2]);
    L.b_up = ptr<T>(w[3]);
    for (int d = 0; d < (diagonal ? 2 : 1); ++d) {
      L.w[d] = ptr<T>(w[0]) + d * L.k * 4 * net.hid;
      L.bias[d] = ptr<T>(w[1]) + d * 4 * net.hid;
      if (diagonal) {
        L.h0[d] = ptr<T>(w[4]) + d * net.hid;
        L.c0[d] = ptr<T>(w[5]) + d * net.hid;
      }
    }
    net.layers.push_back(L);
  }
  return net;
}

// Row i of every sequence: draws its pixels into x (and the twins'), their probabilities into
// probs; returns each image's logit at every pixel of the row, (n, W) (guided where guided).
Tensor draw_row(at::TensorList weights, at::TensorList state, at::TensorList gate_biases, const Tensor& maps, Tensor x, Tensor probs, const Tensor& u, const Tensor& given, const Tensor& hidden, int64_t i,
                double temperature, double scale, bool diagonal, int64_t kernel) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 1 && x.is_contiguous(), "x: contiguous (N, 1, H, W)");
  const int64_t n = probs.size(0), runs = x.size(0) / n;
  TORCH_CHECK(runs == 1 || runs == 2, "x: n images, or n and their n label-free twins");
  TORCH_CHECK(!hidden.defined() || hidden.numel() == 0 || hidden.scalar_type() == at::kBool, "hidden: bool");
  Tensor logits = at::empty({n, x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pixelrnn_draw_row", [&] {
    const Net<scalar_t> net = unpack<scalar_t>(weights, state, gate_biases, maps, diagonal, kernel, n, x);
    const Draw<scalar_t> d{x.data_ptr<scalar_t>(), probs.data_ptr<scalar_t>(), ptr<scalar_t>(u),
                           hidden.numel() ? ptr<scalar_t>(given) : nullptr,
                           hidden.numel() ? hidden.data_ptr<bool>() : nullptr, logits.data_ptr<scalar_t>(),
                           static_cast<scalar_t>(temperature), static_cast<scalar_t>(scale)};
    // an equal share of the images per thread, drawn in blocks of up to kBlock
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
    at::parallel_for(0, n, (n + threads - 1) / threads, [&](int64_t lo, int64_t hi) {
      Block<scalar_t> sh{0, 0, runs, {}, {}, {}};
      const int64_t layers = net.layers.size(), in_w = diagonal ? net.width : net.half + net.width;
      sh.inputs.assign(layers * sh.count() * in_w * net.ch, scalar_t(0));  // the zeros left of a row stay
      sh.h_row.assign(layers * sh.count() * (diagonal ? 2 : net.width) * net.hid, scalar_t(0));
      sh.logits.assign(sh.count(), scalar_t(0));
      for (sh.b0 = lo; sh.b0 < hi; sh.b0 += kBlock) {
        sh.rows = std::min<int64_t>(kBlock, hi - sh.b0);
        draw_block(net, d, sh, i);
      }
    });
  });
  return logits;
}

}  // namespace

TORCH_LIBRARY(rnngen_pixelrnn_sampler, m) {
  m.def("draw_row(Tensor[] weights, Tensor[] state, Tensor[] gate_biases, Tensor maps, Tensor x, Tensor probs, Tensor u, "
        "Tensor given, Tensor hidden, int i, float temperature, float scale, bool diagonal, int kernel) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnngen_pixelrnn_sampler, CPU, m) {
  m.impl("draw_row", &draw_row);
}
