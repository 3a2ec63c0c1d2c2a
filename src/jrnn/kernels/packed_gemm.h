// The per-step product of the native loops: C (M, N) (+)= A (M, K) · W (K, N)
// for a few rows M (one thread's block of the batch) against a weight matrix
// W that stays the same for every step of a call.
//
// W is packed once per call into panels of 32 columns, each stored k-major
// (K × 32 floats, zero-padded past N), so a step streams every panel from L1
// or L2 in order and never repacks it. The micro-kernel keeps an 8 × 32
// block of C in registers (16 zmm with AVX-512): per k, two loads of W and
// eight broadcasts of A feed 16 FMAs. Blocks of fewer rows (batch 1) take two
// or four panels at once, so that enough independent FMA chains hide the FMA
// latency. It is portable GCC vector code: the compiler picks the
// instructions for the build machine (-march=native).
//
// Single-thread C++ microbenchmark on the 2-core development VM (GFLOP/s,
// medians of 3 runs of 300 products): M × N × K = 32 × 1280 × 320: 191 against
// 113 for OpenBLAS's sgemm, which repacks W on every call; 1 × 512 × 128
// (batch 1): 75–84 against 38–40.

#ifndef JRNN_KERNELS_PACKED_GEMM_H_
#define JRNN_KERNELS_PACKED_GEMM_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace jrnn {

// 16 floats. GCC lowers arithmetic on it to one AVX-512 register op, two AVX
// ops, or four SSE/NEON ops, whatever the target has.
typedef float Vec __attribute__((vector_size(64)));

class PackedMatrix {
 public:
  static constexpr int64_t kLanes = 16;  // floats per Vec
  static constexpr int64_t kPanel = 2 * kLanes;  // columns per panel
  static constexpr int kRows = 8;                // rows of C per micro-kernel call

  // W[k][n] = w[k * k_stride + n * n_stride] for k < K, n < N; pass
  // k_stride = 1, n_stride = ld to pack the transpose of a row-major matrix.
  PackedMatrix(const float* w, int64_t K, int64_t N, int64_t k_stride, int64_t n_stride)
      : K_(K), N_(N), panels_((N + kPanel - 1) / kPanel),
        data_(static_cast<float*>(std::aligned_alloc(64, Bytes(K, panels_)))) {
    if (!data_) throw std::bad_alloc();
    std::memset(data_.get(), 0, Bytes(K, panels_));
    for (int64_t p = 0; p < panels_; ++p) {
      float* panel = data_.get() + p * K * kPanel;
      const int64_t columns = std::min(kPanel, N - p * kPanel);
      const float* from = w + p * kPanel * n_stride;
      if (n_stride == 1) {  // rows of W are contiguous: copy them
        for (int64_t k = 0; k < K; ++k) {
          std::memcpy(panel + k * kPanel, from + k * k_stride, columns * sizeof(float));
        }
      } else {  // columns of W are contiguous: read each one in order
        for (int64_t j = 0; j < columns; ++j) {
          for (int64_t k = 0; k < K; ++k) panel[k * kPanel + j] = from[j * n_stride + k * k_stride];
        }
      }
    }
  }

  // C = A·W, or C += A·W with accumulate; rows of A and C are lda, ldc apart.
  void Multiply(int64_t M, const float* A, int64_t lda, float* C, int64_t ldc,
                bool accumulate) const {
    const int64_t full_rows = M / kRows * kRows;
    for (int64_t p = 0; p < panels_; ++p) {
      for (int64_t i = 0; i < full_rows; i += kRows) {
        Tile<kRows, 1>(A + i * lda, lda, p, C + i * ldc, ldc, accumulate);
      }
    }
    const float* a = A + full_rows * lda;
    float* c = C + full_rows * ldc;
    switch (M - full_rows) {  // fewer rows get more panels at once, to keep 8+ FMA chains busy
      case 1: return Rest<1, 4>(a, lda, c, ldc, accumulate);
      case 2: return Rest<2, 4>(a, lda, c, ldc, accumulate);
      case 3: return Rest<3, 2>(a, lda, c, ldc, accumulate);
      case 4: return Rest<4, 2>(a, lda, c, ldc, accumulate);
      case 5: return Rest<5, 1>(a, lda, c, ldc, accumulate);
      case 6: return Rest<6, 1>(a, lda, c, ldc, accumulate);
      case 7: return Rest<7, 1>(a, lda, c, ldc, accumulate);
      default: return;
    }
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };

  static size_t Bytes(int64_t K, int64_t panels) {
    const size_t bytes = static_cast<size_t>(K * panels * kPanel) * sizeof(float);
    return (bytes + 63) / 64 * 64 + 64;  // aligned_alloc wants a multiple of 64
  }

  // R rows against every panel, P panels at a time where P of them remain.
  template <int R, int P>
  void Rest(const float* A, int64_t lda, float* C, int64_t ldc, bool accumulate) const {
    int64_t p = 0;
    for (; p + P <= panels_; p += P) Tile<R, P>(A, lda, p, C, ldc, accumulate);
    for (; p < panels_; ++p) Tile<R, 1>(A, lda, p, C, ldc, accumulate);
  }

  // C[r][columns of panels p0..p0+P) (+)= A[r]·W[:, those columns] for r < R.
  // The accumulators are two arrays of R·P Vecs (at most 512 bytes each), which
  // GCC keeps in registers; one array of twice that size it kept on the stack.
  template <int R, int P>
  __attribute__((always_inline)) inline void Tile(const float* __restrict A, int64_t lda,
                                                  int64_t p0, float* C, int64_t ldc,
                                                  bool accumulate) const {
    const float* __restrict panel = data_.get() + p0 * K_ * kPanel;
    const int64_t panel_size = K_ * kPanel;
    Vec lo[R * P], hi[R * P];  // columns 0–15 and 16–31 of panel q for row r at r·P + q
#pragma GCC unroll 8
    for (int i = 0; i < R * P; ++i) lo[i] = hi[i] = Vec{};
#pragma GCC unroll 2  // 4 measured 15–20 % slower at 8 rows (GCC 12)
    for (int64_t k = 0; k < K_; ++k) {
      Vec w_lo[P], w_hi[P];
#pragma GCC unroll 4
      for (int q = 0; q < P; ++q) {
        w_lo[q] = *reinterpret_cast<const Vec*>(panel + q * panel_size + k * kPanel);
        w_hi[q] = *reinterpret_cast<const Vec*>(panel + q * panel_size + k * kPanel + kLanes);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float a = A[r * lda + k];
#pragma GCC unroll 4
        for (int q = 0; q < P; ++q) {
          lo[r * P + q] += a * w_lo[q];
          hi[r * P + q] += a * w_hi[q];
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int q = 0; q < P; ++q) {
        const int64_t column = (p0 + q) * kPanel;
        Store(C + r * ldc + column, lo[r * P + q], N_ - column, accumulate);
        Store(C + r * ldc + column + kLanes, hi[r * P + q], N_ - column - kLanes, accumulate);
      }
    }
  }

  // The first `count` (all 16 when count ≥ 16) lanes of v into c, or added to c.
  static void Store(float* c, Vec v, int64_t count, bool accumulate) {
    if (count >= kLanes) {
      if (accumulate) {
        Vec old;
        std::memcpy(&old, c, sizeof(Vec));
        v += old;
      }
      std::memcpy(c, &v, sizeof(Vec));
      return;
    }
    alignas(64) float lanes[kLanes];
    std::memcpy(lanes, &v, sizeof(Vec));
    for (int64_t j = 0; j < count; ++j) c[j] = accumulate ? c[j] + lanes[j] : lanes[j];
  }

  int64_t K_, N_, panels_;
  std::unique_ptr<float, Free> data_;
};

}  // namespace jrnn

#endif  // JRNN_KERNELS_PACKED_GEMM_H_
