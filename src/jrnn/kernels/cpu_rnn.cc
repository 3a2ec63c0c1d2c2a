// Native CPU time loops for jrnn's fused path, as XLA FFI custom calls.
//
// One call runs a whole sequence: per step one GEMM for the recurrent product
// (h_in @ W_h forward, dG @ W_hᵀ backward; two for the reset-before GRU)
// against weights packed once per call (packed_gemm.h), and one vectorised
// pass of gate math over each batch row. The weight gradient
// dW_h = Σ_t h_inᵀ dG and everything about the input projection stay in JAX
// (one large GEMM each).
//
// Layouts (row-major, time-major, one flattened batch axis):
//   px (T, B, G·H) input projection without bias; w_h (H, G·H); b (G·H);
//   h, c (B, H); valid (T, B) booleans, or shape (0,) when every step counts;
//   mask (B, H) recurrent-dropout mask, or shape (0,) when there is none;
//   ys and their cotangents (T, B, H), or (B, T, H) with batch_major.
// Gate order is jrnn's: LSTM i, f, g, o; GRU z, r, n. σ(a) = ½·tanh(a/2) + ½.
// Residual layouts equal those of jrnn/kernels/fused.py, so the JAX side can
// run either loop.

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "packed_gemm.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jrnn::PackedMatrix;

// The vector variants of tanhf come from glibc's libmvec.
extern "C" __attribute__((simd("notinbranch"))) float tanhf(float) noexcept;

namespace {

using Buf = ffi::Buffer<ffi::F32>;  // float32 operand or result, any shape
using In = Buf;
using Out = ffi::ResultBuffer<ffi::F32>;
using Valid = ffi::Buffer<ffi::PRED>;

// Columns n0..n0+N of the row-major (H, G) matrix W_h, packed.
PackedMatrix Columns(const In& w_h, int64_t n0, int64_t N) {
  const int64_t H = w_h.dimensions()[0], G = w_h.dimensions()[1];
  return PackedMatrix(w_h.typed_data() + n0, H, N, /*k_stride=*/G, /*n_stride=*/1);
}

// Rows k0..k0+K of W_hᵀ (G, H), packed from W_h (H, G).
PackedMatrix TransposedRows(const In& w_h, int64_t k0, int64_t K) {
  const int64_t H = w_h.dimensions()[0], G = w_h.dimensions()[1];
  return PackedMatrix(w_h.typed_data() + k0, K, H, /*k_stride=*/1, /*n_stride=*/G);
}

inline float Sigmoid(float a) { return 0.5f * tanhf(0.5f * a) + 0.5f; }

// JRNN_NATIVE_THREADS, else the CPUs this process may run on.
int UsableCpus() {
  if (const char* env = std::getenv("JRNN_NATIVE_THREADS")) {
    if (const int n = std::atoi(env); n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// Rows of the batch never interact, so each thread runs the whole time loop
// for its own block of rows: no synchronisation between steps. Small work
// stays on the calling thread. Every thread flushes denormals, as XLA does.
template <class Body>
void ForRowBlocks(int64_t rows, double flops, Body&& body) {
  static const int cpus = UsableCpus();
  int64_t n = std::min<int64_t>(cpus, rows / 8);
  if (flops < 2e7 || n < 1) n = 1;
  auto run = [&](int64_t i) {
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  // flush-to-zero and denormals-are-zero
    body(rows * i / n, rows * (i + 1) / n);
    _mm_setcsr(csr);
  };
  std::vector<std::thread> threads;
  for (int64_t i = 1; i < n; ++i) threads.emplace_back(run, i);
  run(0);
  for (auto& t : threads) t.join();
}

// What every loop shares: sizes, step order, padding and dropout mask.
struct Loop {
  int64_t T, B, H;
  bool reverse;
  bool batch_major;    // ys and their cotangents are (B, T, H), not (T, B, H)
  const bool* valid;   // nullptr: every step of every row counts
  const float* mask;   // nullptr: no recurrent dropout

  Loop(int64_t T, int64_t B, int64_t H, bool reverse, bool batch_major,
       const Valid& v, const In& m)
      : T(T), B(B), H(H), reverse(reverse), batch_major(batch_major),
        valid(v.element_count() ? v.typed_data() : nullptr),
        mask(m.element_count() ? m.typed_data() : nullptr) {}

  // The time index of the k-th step of the forward loop.
  int64_t Step(int64_t k) const { return reverse ? T - 1 - k : k; }
  bool Ok(int64_t s, int64_t b) const { return !valid || valid[s * B + b]; }
  // Offset of row b of step s in a (T, B, width) array.
  int64_t At(int64_t s, int64_t b, int64_t width) const { return (s * B + b) * width; }
  // Offset of row b of step s in ys or their cotangents. Writing batch-major
  // outputs here saves XLA a transpose that costs more than it should
  // (about 10 ms for the 8 MB outputs at B = 64, T = 100, H = 320).
  int64_t Y(int64_t s, int64_t b) const {
    return batch_major ? (b * T + s) * H : (s * B + b) * H;
  }

  // Rows b0..b1 of h ⊙ mask into scratch, or h itself without dropout.
  const float* Masked(const float* h, int64_t b0, int64_t b1,
                      std::vector<float>& scratch) const {
    if (!mask) return h;
    scratch.resize((b1 - b0) * H);
    for (int64_t i = 0; i < (b1 - b0) * H; ++i) scratch[i] = h[i] * mask[b0 * H + i];
    return scratch.data();
  }

  // Backward: dh[b] (+)= mask[b] ⊙ d_in[b] for the valid rows b0..b1.
  void AddRecurrentGrad(int64_t s, int64_t b0, int64_t b1, const float* d_in,
                        float* dh, bool accumulate) const {
    for (int64_t b = b0; b < b1; ++b) {
      if (!Ok(s, b)) continue;
      const float* __restrict g = d_in + (b - b0) * H;
      const float* __restrict m = mask ? mask + b * H : nullptr;
      float* __restrict d = dh + b * H;
      if (accumulate && m) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d[j] += g[j] * m[j];
      } else if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d[j] += g[j];
      } else if (m) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d[j] = g[j] * m[j];
      } else {
        std::memcpy(d, g, H * sizeof(float));
      }
    }
  }
};

// Rows b0..b1 of step s of a saved (T, B, width) residual, or thread scratch.
struct Residual {
  float* saved;
  int64_t width;
  std::vector<float> scratch;
  Residual(Out& out, bool save, int64_t width, int64_t rows)
      : saved(save ? out->typed_data() : nullptr), width(width),
        scratch(save ? 0 : rows * width) {}
  float* At(const Loop& loop, int64_t s, int64_t b0) {
    return saved ? saved + loop.At(s, b0, width) : scratch.data();
  }
};

void Copy(const In& from, Out& to) {
  std::memcpy(to->typed_data(), from.typed_data(), from.size_bytes());
}

void CopyRows(const float* from, float* to, int64_t count) {
  std::memcpy(to, from, count * sizeof(float));
}

// rows × width block: out[r, j] = x[r, j] + bias[j]; out may be x itself.
void AddBias(const float* x, const float* bias, int64_t rows, int64_t width,
             float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    float* o = out + r * width;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) o[j] = xr[j] + bias[j];
  }
}

// The reverse loop every cell shares. For each step (last first) and each
// valid row, row_grad(s, b, out, gemm_in) writes the row's pre-activation
// gradient into `out` (a row of the (T, B, G) output) and the row that meets
// W_h into `gemm_in` (the same row unless the cell needs another); padded
// rows get zeros and keep their carry gradient. Then dh (+)= mask ⊙ (gemm_in · W_hᵀ).
template <class RowGrad>
void ReverseLoop(const Loop& loop, int64_t G,
                 const In& w_h, float* out, float* dh, bool own_gemm_input,
                 bool accumulate, RowGrad&& row_grad) {
  const int64_t H = loop.H;
  const PackedMatrix w_t = TransposedRows(w_h, 0, G);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * G * H, [&](int64_t b0, int64_t b1) {
    std::vector<float> gemm_scratch(own_gemm_input ? (b1 - b0) * G : 0), dh_prev((b1 - b0) * H);
    for (int64_t k = loop.T - 1; k >= 0; --k) {
      const int64_t s = loop.Step(k);
      float* out_rows = out + loop.At(s, b0, G);
      float* gemm_rows = own_gemm_input ? gemm_scratch.data() : out_rows;
      for (int64_t b = b0; b < b1; ++b) {
        float* o = out_rows + (b - b0) * G;
        float* g = gemm_rows + (b - b0) * G;
        if (loop.Ok(s, b)) {
          row_grad(s, b, o, g);
        } else {
          std::memset(o, 0, G * sizeof(float));
          std::memset(g, 0, G * sizeof(float));
        }
      }
      w_t.Multiply(b1 - b0, gemm_rows, G, dh_prev.data(), H, /*accumulate=*/false);
      loop.AddRecurrentGrad(s, b0, b1, dh_prev.data(), dh, accumulate);
    }
  });
}

// ---------------------------------------------------------------- LSTM ----

ffi::Error LstmForwardImpl(In px, In w_h, In bias, In h0, In c0, Valid valid,
                           In mask, Out ys, Out h_out, Out c_out, Out r_h_in,
                           Out r_c, Out r_t, Out r_tc, bool reverse, bool batch_major,
                           bool save) {
  const auto d = px.dimensions();
  const int64_t G = d[2], H = G / 4;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(h0, h_out);
  Copy(c0, c_out);
  float* h = h_out->typed_data();
  float* c = c_out->typed_data();
  const PackedMatrix w = Columns(w_h, 0, G);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * G * H, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    std::vector<float> h_scratch;
    Residual gates(r_t, save, G, rows), cell_tanh(r_tc, save, H, rows);
    for (int64_t k = 0; k < loop.T; ++k) {
      const int64_t s = loop.Step(k);
      const float* h_in = loop.Masked(h + b0 * H, b0, b1, h_scratch);
      if (save) {
        CopyRows(h_in, r_h_in->typed_data() + loop.At(s, b0, H), rows * H);
        CopyRows(c + b0 * H, r_c->typed_data() + loop.At(s, b0, H), rows * H);
      }
      float* g = gates.At(loop, s, b0);
      AddBias(px.typed_data() + loop.At(s, b0, G), bias.typed_data(), rows, G, g);
      w.Multiply(rows, h_in, H, g, G, /*accumulate=*/true);
      for (int64_t b = b0; b < b1; ++b) {
        float* __restrict t = g + (b - b0) * G;  // pre-activations in, gate tanh out
        for (int64_t q = 0; q < 4; ++q) {
          const float scale = q == 2 ? 1.0f : 0.5f;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) t[q * H + j] = tanhf(scale * t[q * H + j]);
        }
        float* __restrict tc = cell_tanh.At(loop, s, b0) + (b - b0) * H;
        float* __restrict y = ys->typed_data() + loop.Y(s, b);
        if (!loop.Ok(s, b)) {
          std::memset(tc, 0, H * sizeof(float));
          std::memset(y, 0, H * sizeof(float));
          continue;
        }
        float* __restrict hb = h + b * H;
        float* __restrict cb = c + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float i = 0.5f * t[j] + 0.5f, f = 0.5f * t[H + j] + 0.5f;
          const float o = 0.5f * t[3 * H + j] + 0.5f;
          const float c_new = f * cb[j] + i * t[2 * H + j];
          const float tc_new = tanhf(c_new);
          cb[j] = c_new;
          tc[j] = tc_new;
          hb[j] = y[j] = o * tc_new;
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(In w_h, Valid valid, In mask, In r_c, In r_t,
                            In r_tc, In d_ys, In dh_last, In dc_last,
                            Out d_pre, Out dh_out, Out dc_out, bool reverse, bool batch_major) {
  const auto d = r_t.dimensions();
  const int64_t G = d[2], H = G / 4;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(dh_last, dh_out);
  Copy(dc_last, dc_out);
  float* dh = dh_out->typed_data();
  float* dc = dc_out->typed_data();
  ReverseLoop(loop, G, w_h, d_pre->typed_data(), dh, /*own_gemm_input=*/false,
              /*accumulate=*/false, [&](int64_t s, int64_t b, float* dp, float*) {
    const float* t = r_t.typed_data() + loop.At(s, b, G);  // dp may overwrite t
    const float* __restrict c_prev = r_c.typed_data() + loop.At(s, b, H);
    const float* __restrict tc = r_tc.typed_data() + loop.At(s, b, H);
    const float* __restrict dy = d_ys.typed_data() + loop.Y(s, b);
    float* __restrict dhb = dh + b * H;
    float* __restrict dcb = dc + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float ti = t[j], tf = t[H + j], tg = t[2 * H + j], to = t[3 * H + j];
      const float i = 0.5f * ti + 0.5f, f = 0.5f * tf + 0.5f;
      const float o = 0.5f * to + 0.5f;
      const float dh_j = dhb[j] + dy[j];
      const float dc_j = dcb[j] + dh_j * o * (1.0f - tc[j] * tc[j]);
      dp[j] = dc_j * tg * 0.25f * (1.0f - ti * ti);
      dp[H + j] = dc_j * c_prev[j] * 0.25f * (1.0f - tf * tf);
      dp[2 * H + j] = dc_j * i * (1.0f - tg * tg);
      dp[3 * H + j] = dh_j * tc[j] * 0.25f * (1.0f - to * to);
      dcb[j] = dc_j * f;
    }
  });
  return ffi::Error::Success();
}

// The GRU state update of one row: h ← (1 − z) ⊙ h + z ⊙ n, also written to y;
// a padded row keeps h and gets y = 0.
inline void GruUpdate(bool ok, int64_t H, const float* __restrict z,
                      const float* __restrict n, float* __restrict h,
                      float* __restrict y) {
  if (!ok) {
    std::memset(y, 0, H * sizeof(float));
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = y[j] = (1.0f - z[j]) * h[j] + z[j] * n[j];
}

// Its reverse, one element: with dh_j = dh + dy, the pre-activation gradients
// da_z = dh_j (n − h) z (1 − z) and da_n = dh_j z (1 − n²) (n = tanh(a_n)),
// and dh ← dh_j (1 − z), the part of dh_{t−1} that bypasses W_h.
struct GruGateGrads {
  float da_z, da_n;
};
inline GruGateGrads GruUpdateGrad(float& dh, float dy, float h, float z, float n) {
  const float dh_j = dh + dy;
  dh = dh_j * (1.0f - z);
  return {dh_j * (n - h) * z * (1.0f - z), dh_j * z * (1.0f - n * n)};
}

// ----------------------------------------------------- GRU, reset after ----

ffi::Error GruForwardImpl(In px, In w_h, In bias, In b_hn, In h0, Valid valid,
                          In mask, Out ys, Out h_out, Out r_h, Out r_h_in,
                          Out r_z, Out r_r, Out r_n, Out r_hn, bool reverse, bool batch_major,
                          bool save) {
  const auto d = px.dimensions();
  const int64_t G = d[2], H = G / 3;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(h0, h_out);
  float* h = h_out->typed_data();
  const float* __restrict bx = bias.typed_data();
  const float* __restrict bn = b_hn.typed_data();
  const PackedMatrix w = Columns(w_h, 0, G);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * G * H, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    std::vector<float> h_scratch, hw(rows * G);
    Residual zs(r_z, save, H, rows), rs(r_r, save, H, rows),
        ns(r_n, save, H, rows), hns(r_hn, save, H, rows);
    for (int64_t k = 0; k < loop.T; ++k) {
      const int64_t s = loop.Step(k);
      const float* h_in = loop.Masked(h + b0 * H, b0, b1, h_scratch);
      if (save) {
        CopyRows(h + b0 * H, r_h->typed_data() + loop.At(s, b0, H), rows * H);
        CopyRows(h_in, r_h_in->typed_data() + loop.At(s, b0, H), rows * H);
      }
      w.Multiply(rows, h_in, H, hw.data(), G, /*accumulate=*/false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H;
        const float* __restrict x = px.typed_data() + loop.At(s, b, G);
        const float* __restrict a = hw.data() + (b - b0) * G;
        float* __restrict z = zs.At(loop, s, b0) + row;
        float* __restrict r = rs.At(loop, s, b0) + row;
        float* __restrict n = ns.At(loop, s, b0) + row;
        float* __restrict hn = hns.At(loop, s, b0) + row;
        float* __restrict hb = h + b * H;
        float* __restrict y = ys->typed_data() + loop.Y(s, b);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          z[j] = Sigmoid(x[j] + bx[j] + a[j]);
          r[j] = Sigmoid(x[H + j] + bx[H + j] + a[H + j]);
          hn[j] = a[2 * H + j] + bn[j];
          n[j] = tanhf(x[2 * H + j] + bx[2 * H + j] + r[j] * hn[j]);
        }
        GruUpdate(loop.Ok(s, b), H, z, n, hb, y);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error GruBackwardImpl(In w_h, Valid valid, In mask, In r_h, In r_z,
                           In r_r, In r_n, In r_hn, In d_ys, In dh_last,
                           Out d_px, Out dh_out, bool reverse, bool batch_major) {
  const auto d = r_h.dimensions();
  const int64_t H = d[2], G = 3 * H;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(dh_last, dh_out);
  float* dh = dh_out->typed_data();
  // The n block of h·W_h sits inside r ⊙ (...), so W_h meets (da_z, da_r, da_n ⊙ r).
  ReverseLoop(loop, G, w_h, d_px->typed_data(), dh, /*own_gemm_input=*/true,
              /*accumulate=*/true, [&](int64_t s, int64_t b, float* __restrict dx, float* __restrict dw) {
    const int64_t o = loop.At(s, b, H);
    const float* __restrict h = r_h.typed_data() + o;
    const float* __restrict z = r_z.typed_data() + o;
    const float* __restrict r = r_r.typed_data() + o;
    const float* __restrict n = r_n.typed_data() + o;
    const float* __restrict hn = r_hn.typed_data() + o;
    const float* __restrict dy = d_ys.typed_data() + loop.Y(s, b);
    float* __restrict dhb = dh + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const auto [da_z, da_n] = GruUpdateGrad(dhb[j], dy[j], h[j], z[j], n[j]);
      const float da_r = da_n * hn[j] * r[j] * (1.0f - r[j]);
      dx[j] = dw[j] = da_z;
      dx[H + j] = dw[H + j] = da_r;
      dx[2 * H + j] = da_n;
      dw[2 * H + j] = da_n * r[j];
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------- GRU, reset before ----
// a_zr = h_in·W_zr; z, r = σ(px_zr + a_zr); n = tanh(px_n + (r ⊙ h_in)·W_n);
// h_t = (1 − z) ⊙ h + z ⊙ n. Two products per step, the second needs r.

ffi::Error GruBeforeForwardImpl(In px, In w_h, In bias, In h0, Valid valid,
                                In mask, Out ys, Out h_out, Out r_h,
                                Out r_h_in, Out r_z, Out r_r, Out r_n,
                                bool reverse, bool batch_major, bool save) {
  const auto d = px.dimensions();
  const int64_t G = d[2], H = G / 3;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(h0, h_out);
  float* h = h_out->typed_data();
  const float* __restrict bx = bias.typed_data();
  const PackedMatrix w_zr = Columns(w_h, 0, 2 * H), w_n = Columns(w_h, 2 * H, H);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * G * H, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    std::vector<float> h_scratch, zr(rows * 2 * H), rh(rows * H), a_n(rows * H);
    Residual zs(r_z, save, H, rows), rs(r_r, save, H, rows), ns(r_n, save, H, rows);
    for (int64_t k = 0; k < loop.T; ++k) {
      const int64_t s = loop.Step(k);
      const float* h_in = loop.Masked(h + b0 * H, b0, b1, h_scratch);
      if (save) {
        CopyRows(h + b0 * H, r_h->typed_data() + loop.At(s, b0, H), rows * H);
        CopyRows(h_in, r_h_in->typed_data() + loop.At(s, b0, H), rows * H);
      }
      w_zr.Multiply(rows, h_in, H, zr.data(), 2 * H, /*accumulate=*/false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H;
        const float* __restrict x = px.typed_data() + loop.At(s, b, G);
        const float* __restrict a = zr.data() + 2 * row;
        const float* __restrict hi = h_in + row;
        float* __restrict z = zs.At(loop, s, b0) + row;
        float* __restrict r = rs.At(loop, s, b0) + row;
        float* __restrict rhb = rh.data() + row;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          z[j] = Sigmoid(x[j] + bx[j] + a[j]);
          r[j] = Sigmoid(x[H + j] + bx[H + j] + a[H + j]);
          rhb[j] = r[j] * hi[j];
        }
      }
      w_n.Multiply(rows, rh.data(), H, a_n.data(), H, /*accumulate=*/false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H;
        const float* __restrict x = px.typed_data() + loop.At(s, b, G) + 2 * H;
        const float* __restrict a = a_n.data() + row;
        const float* __restrict z = zs.At(loop, s, b0) + row;
        float* __restrict n = ns.At(loop, s, b0) + row;
        float* __restrict hb = h + b * H;
        float* __restrict y = ys->typed_data() + loop.Y(s, b);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) n[j] = tanhf(x[j] + bx[2 * H + j] + a[j]);
        GruUpdate(loop.Ok(s, b), H, z, n, hb, y);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error GruBeforeBackwardImpl(In w_h, Valid valid, In mask, In r_h,
                                 In r_h_in, In r_z, In r_r, In r_n, In d_ys,
                                 In dh_last, Out d_px, Out dh_out, bool reverse,
                                 bool batch_major) {
  const auto d = r_h.dimensions();
  const int64_t H = d[2], G = 3 * H;
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(dh_last, dh_out);
  float* dh = dh_out->typed_data();
  // Rows z, r and n of W_hᵀ (3H, H).
  const PackedMatrix w_zr_t = TransposedRows(w_h, 0, 2 * H), w_n_t = TransposedRows(w_h, 2 * H, H);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * G * H, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    std::vector<float> d_zr(rows * 2 * H), d_n(rows * H), d_rh(rows * H), d_h_in(rows * H);
    for (int64_t k = loop.T - 1; k >= 0; --k) {
      const int64_t s = loop.Step(k);
      // 1. da_z, da_n; dh ⊙ (1 − z) kept in dh.
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H, o = loop.At(s, b, H);
        float* __restrict dzr = d_zr.data() + 2 * row;
        float* __restrict dn = d_n.data() + row;
        if (!loop.Ok(s, b)) {
          std::memset(dzr, 0, 2 * H * sizeof(float));
          std::memset(dn, 0, H * sizeof(float));
          continue;
        }
        const float* __restrict h = r_h.typed_data() + o;
        const float* __restrict z = r_z.typed_data() + o;
        const float* __restrict n = r_n.typed_data() + o;
        const float* __restrict dy = d_ys.typed_data() + loop.Y(s, b);
        float* __restrict dhb = dh + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const auto [da_z, da_n] = GruUpdateGrad(dhb[j], dy[j], h[j], z[j], n[j]);
          dzr[j] = da_z;
          dn[j] = da_n;
        }
      }
      // 2. d(r ⊙ h_in) = da_n·W_nᵀ, then da_r.
      w_n_t.Multiply(rows, d_n.data(), H, d_rh.data(), H, /*accumulate=*/false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H, o = loop.At(s, b, H);
        float* __restrict dx = d_px->typed_data() + loop.At(s, b, G);
        if (!loop.Ok(s, b)) {
          std::memset(dx, 0, G * sizeof(float));
          continue;
        }
        const float* __restrict h_in = r_h_in.typed_data() + o;
        const float* __restrict r = r_r.typed_data() + o;
        const float* __restrict drh = d_rh.data() + row;
        float* __restrict dzr = d_zr.data() + 2 * row;
        const float* __restrict dn = d_n.data() + row;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          dzr[H + j] = drh[j] * h_in[j] * r[j] * (1.0f - r[j]);
          dx[j] = dzr[j];
          dx[H + j] = dzr[H + j];
          dx[2 * H + j] = dn[j];
        }
      }
      // 3. dh_{t-1} = dh ⊙ (1 − z) + mask ⊙ (d(r ⊙ h_in) ⊙ r + (da_z, da_r)·W_zrᵀ).
      w_zr_t.Multiply(rows, d_zr.data(), 2 * H, d_h_in.data(), H, /*accumulate=*/false);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = (b - b0) * H;
        const float* __restrict r = r_r.typed_data() + loop.At(s, b, H);
        const float* __restrict drh = d_rh.data() + row;
        float* __restrict g = d_h_in.data() + row;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) g[j] += drh[j] * r[j];
      }
      loop.AddRecurrentGrad(s, b0, b1, d_h_in.data(), dh, /*accumulate=*/true);
    }
  });
  return ffi::Error::Success();
}

// ----------------------------------------------------------- SimpleRNN ----

ffi::Error RnnForwardImpl(In px, In w_h, In bias, In h0, Valid valid, In mask,
                          Out ys, Out h_out, Out r_h_in, Out r_h_new,
                          bool reverse, bool batch_major, bool save, bool relu) {
  const auto d = px.dimensions();
  const int64_t H = d[2];
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(h0, h_out);
  float* h = h_out->typed_data();
  const PackedMatrix w = Columns(w_h, 0, H);
  ForRowBlocks(loop.B, 2.0 * loop.T * loop.B * H * H, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    std::vector<float> h_scratch;
    Residual pre(r_h_new, save, H, rows);  // pre-activation in, new state out
    for (int64_t k = 0; k < loop.T; ++k) {
      const int64_t s = loop.Step(k);
      const float* h_in = loop.Masked(h + b0 * H, b0, b1, h_scratch);
      if (save) CopyRows(h_in, r_h_in->typed_data() + loop.At(s, b0, H), rows * H);
      float* a = pre.At(loop, s, b0);
      AddBias(px.typed_data() + loop.At(s, b0, H), bias.typed_data(), rows, H, a);
      w.Multiply(rows, h_in, H, a, H, /*accumulate=*/true);
      for (int64_t b = b0; b < b1; ++b) {
        float* __restrict ab = a + (b - b0) * H;
        if (relu) {
          for (int64_t j = 0; j < H; ++j) ab[j] = ab[j] < 0.0f ? 0.0f : ab[j];  // NaN stays NaN
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ab[j] = tanhf(ab[j]);
        }
        float* __restrict y = ys->typed_data() + loop.Y(s, b);
        if (!loop.Ok(s, b)) {
          std::memset(y, 0, H * sizeof(float));
          continue;
        }
        float* __restrict hb = h + b * H;
        for (int64_t j = 0; j < H; ++j) hb[j] = y[j] = ab[j];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error RnnBackwardImpl(In w_h, Valid valid, In mask, In r_h_new, In d_ys,
                           In dh_last, Out d_pre, Out dh_out, bool reverse, bool batch_major,
                           bool relu) {
  const auto d = r_h_new.dimensions();
  const int64_t H = d[2];
  const Loop loop(d[0], d[1], H, reverse, batch_major, valid, mask);
  Copy(dh_last, dh_out);
  float* dh = dh_out->typed_data();
  ReverseLoop(loop, H, w_h, d_pre->typed_data(), dh, /*own_gemm_input=*/false,
              /*accumulate=*/false, [&](int64_t s, int64_t b, float* dp, float*) {
    const float* hn = r_h_new.typed_data() + loop.At(s, b, H);  // dp may overwrite hn
    const float* __restrict dy = d_ys.typed_data() + loop.Y(s, b);
    const float* __restrict dhb = dh + b * H;
    if (relu) {
      for (int64_t j = 0; j < H; ++j) dp[j] = hn[j] > 0.0f ? dhb[j] + dy[j] : 0.0f;
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dp[j] = (dhb[j] + dy[j]) * (1.0f - hn[j] * hn[j]);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnLstmForward, LstmForwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<Valid>().Arg<In>()
        .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major").Attr<bool>("save"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnLstmBackward, LstmBackwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<Valid>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
        .Arg<In>().Arg<In>().Arg<In>()
        .Ret<Buf>().Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnGruForward, GruForwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<Valid>().Arg<In>()
        .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major").Attr<bool>("save"));

// Both GRU backward loops take W_h, valid, mask, five residuals, d_ys and dh.
static auto GruBackwardBinding() {
  return ffi::Ffi::Bind()
      .Arg<In>().Arg<Valid>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
      .Arg<In>().Arg<In>().Arg<In>().Arg<In>()
      .Ret<Buf>().Ret<Buf>()
      .Attr<bool>("reverse").Attr<bool>("batch_major");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnGruBackward, GruBackwardImpl, GruBackwardBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnRnnForward, RnnForwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<Valid>().Arg<In>()
        .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major").Attr<bool>("save").Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnRnnBackward, RnnBackwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<Valid>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
        .Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major").Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JrnnGruBeforeForward, GruBeforeForwardImpl,
    ffi::Ffi::Bind()
        .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<Valid>().Arg<In>()
        .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
        .Attr<bool>("reverse").Attr<bool>("batch_major").Attr<bool>("save"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnGruBeforeBackward, GruBeforeBackwardImpl, GruBackwardBinding());
