// jrnn's own cuDNN RNN binding: cuDNN's LSTM and GRU as XLA FFI calls on CUDA,
// with the algorithm chosen by the caller.
//
// jax.experimental.rnn always asks cuDNN for CUDNN_RNN_ALGO_STANDARD (a GEMM
// per step). PyTorch asks for CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H where the
// hidden state is small (LSTM and GRU: H <= 128 forward and backward), cuDNN's
// persistent kernel that keeps the recurrent weights in registers across time
// steps; that is what makes torch.nn.LSTM fast at batch 1. This binding lets
// jrnn ask for it too, or for any other of cuDNN's algorithms
// (jrnn/kernels/cudnn.py picks one). A problem's descriptors are set once per
// handle and kept, so PERSIST_DYNAMIC compiles its kernel once.
//
// Layout: one layer, one direction, linear input, two bias vectors (cuDNN's
// "double bias"), inputs and outputs sequence-major (T, B, features) with every
// sequence of full length, states (1, B, H). The weights are cuDNN's flat
// weight space: W_ih (G*H, I), W_hh (G*H, H), b_ih (G*H), b_hh (G*H), gate
// blocks in PyTorch's order (LSTM i, f, g, o; GRU r, z, n).
//
// Calls:
//   JrnnCudnnRnnForward   x, h0, c0, w, lengths -> y, hy, cy, workspace, reserve
//   JrnnCudnnRnnBackward  x, h0, c0, w, lengths, y, dy, dhy, dcy, reserve, dw0
//                         -> dx, dh0, dc0, dw (aliases dw0: cuDNN adds into it),
//                            workspace, reserve (aliases the input reserve:
//                            cuDNN's backward writes into it)
//   jrnn_cudnn_rnn_sizes  (plain C, for ctypes at trace time) the weight space,
//                         workspace and reserve sizes in bytes.
// For a GRU, c0/cy/dcy/dc0 are passed but not used.

#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Config {
  cudnnRNNMode_t mode;  // CUDNN_LSTM or CUDNN_GRU
  cudnnRNNAlgo_t algo;
  bool tf32;  // CUDNN_DEFAULT_MATH (TF32 allowed on Ampere and later) or CUDNN_FMA_MATH
  int input_size, hidden_size, batch, steps;
};

std::string Message(cudnnStatus_t status, const char* what) {
  return std::string("cuDNN ") + what + ": " + cudnnGetErrorString(status);
}

// One cuDNN handle per CUDA stream, created on first use and kept for the
// life of the process (the map is never destroyed: no exit-order surprises).
cudnnStatus_t HandleFor(cudaStream_t stream, cudnnHandle_t* handle) {
  static std::mutex mutex;
  static auto* handles = new std::unordered_map<cudaStream_t, cudnnHandle_t>();
  std::lock_guard<std::mutex> lock(mutex);
  auto found = handles->find(stream);
  if (found == handles->end()) {
    cudnnHandle_t fresh;
    cudnnStatus_t status = cudnnCreate(&fresh);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    status = cudnnSetStream(fresh, stream);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    found = handles->emplace(stream, fresh).first;
  }
  *handle = found->second;
  return CUDNN_STATUS_SUCCESS;
}

// The descriptors of one problem (see DescriptorsFor).
class Descriptors {
 public:
  cudnnRNNDescriptor_t rnn = nullptr;
  cudnnDropoutDescriptor_t dropout = nullptr;
  cudnnRNNDataDescriptor_t x = nullptr, y = nullptr;
  cudnnTensorDescriptor_t state = nullptr;  // h and c: (1, B, H)

  Descriptors() = default;
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
  ~Descriptors() {
    if (state) cudnnDestroyTensorDescriptor(state);
    if (y) cudnnDestroyRNNDataDescriptor(y);
    if (x) cudnnDestroyRNNDataDescriptor(x);
    if (rnn) cudnnDestroyRNNDescriptor(rnn);
    if (dropout) cudnnDestroyDropoutDescriptor(dropout);
  }

  // Sets every descriptor; on failure returns the status and names the step in *what.
  cudnnStatus_t Set(cudnnHandle_t handle, const Config& c, const char** what) {
    cudnnStatus_t s;
#define JRNN_TRY(call)                          \
  if ((s = (call)) != CUDNN_STATUS_SUCCESS) {   \
    *what = #call;                              \
    return s;                                   \
  }
    JRNN_TRY(cudnnCreateDropoutDescriptor(&dropout));
    size_t dropout_state_bytes = 0;
    JRNN_TRY(cudnnDropoutGetStatesSize(handle, &dropout_state_bytes));
    JRNN_TRY(cudnnSetDropoutDescriptor(dropout, handle, 0.0f, nullptr, dropout_state_bytes, 0));
    JRNN_TRY(cudnnCreateRNNDescriptor(&rnn));
    JRNN_TRY(cudnnSetRNNDescriptor_v8(rnn, c.algo, c.mode, CUDNN_RNN_DOUBLE_BIAS, CUDNN_UNIDIRECTIONAL,
                                      CUDNN_LINEAR_INPUT, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT,
                                      c.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH, c.input_size,
                                      c.hidden_size, c.hidden_size, /*numLayers=*/1, dropout,
                                      CUDNN_RNN_PADDED_IO_ENABLED));
    lengths_.assign(c.batch, c.steps);
    float padding = 0.0f;
    JRNN_TRY(cudnnCreateRNNDataDescriptor(&x));
    JRNN_TRY(cudnnSetRNNDataDescriptor(x, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_UNPACKED, c.steps,
                                       c.batch, c.input_size, lengths_.data(), &padding));
    JRNN_TRY(cudnnCreateRNNDataDescriptor(&y));
    JRNN_TRY(cudnnSetRNNDataDescriptor(y, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_UNPACKED, c.steps,
                                       c.batch, c.hidden_size, lengths_.data(), &padding));
    int dims[3] = {1, c.batch, c.hidden_size};
    int strides[3] = {c.batch * c.hidden_size, c.hidden_size, 1};
    JRNN_TRY(cudnnCreateTensorDescriptor(&state));
    JRNN_TRY(cudnnSetTensorNdDescriptor(state, CUDNN_DATA_FLOAT, 3, dims, strides));
    // the dynamic persistent algorithm compiles its kernel for this batch size (NVRTC), once
    if (c.algo == CUDNN_RNN_ALGO_PERSIST_DYNAMIC) JRNN_TRY(cudnnBuildRNNDynamic(handle, rnn, c.batch));
#undef JRNN_TRY
    return CUDNN_STATUS_SUCCESS;
  }

 private:
  std::vector<int32_t> lengths_;
};

// The descriptors of a problem on a handle, set on first use and kept for the
// life of the process (cuDNN only reads them in a call; setting them costs tens
// of microseconds, and for the dynamic persistent algorithm a compilation).
// A problem whose descriptors cuDNN refuses is refused again on each call.
cudnnStatus_t DescriptorsFor(cudnnHandle_t handle, const Config& c, const Descriptors** out, const char** what) {
  using Key = std::tuple<cudnnHandle_t, int, int, bool, int, int, int, int>;
  static std::mutex mutex;
  static auto* cache = new std::map<Key, std::unique_ptr<Descriptors>>();
  const Key key{handle, c.mode, c.algo, c.tf32, c.input_size, c.hidden_size, c.batch, c.steps};
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache->find(key);
  if (found == cache->end()) {
    auto fresh = std::make_unique<Descriptors>();
    cudnnStatus_t s = fresh->Set(handle, c, what);
    if (s != CUDNN_STATUS_SUCCESS) return s;
    found = cache->emplace(key, std::move(fresh)).first;
  }
  *out = found->second.get();
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t Sizes(cudnnHandle_t handle, const Config& c, bool training, size_t* weights, size_t* workspace,
                    size_t* reserve, const char** what) {
  const Descriptors* d;
  cudnnStatus_t s = DescriptorsFor(handle, c, &d, what);
  if (s != CUDNN_STATUS_SUCCESS) return s;
  *what = "cudnnGetRNNWeightSpaceSize";
  if ((s = cudnnGetRNNWeightSpaceSize(handle, d->rnn, weights)) != CUDNN_STATUS_SUCCESS) return s;
  *what = "cudnnGetRNNTempSpaceSizes";
  *reserve = 0;  // inference keeps nothing for a backward pass
  return cudnnGetRNNTempSpaceSizes(handle, d->rnn, training ? CUDNN_FWD_MODE_TRAINING : CUDNN_FWD_MODE_INFERENCE,
                                   d->x, workspace, training ? reserve : nullptr);
}

Config MakeConfig(int32_t mode, int32_t algo, bool tf32, int64_t input_size, int64_t hidden_size, int64_t batch,
                  int64_t steps) {
  return Config{static_cast<cudnnRNNMode_t>(mode), static_cast<cudnnRNNAlgo_t>(algo), tf32,
                static_cast<int>(input_size), static_cast<int>(hidden_size), static_cast<int>(batch),
                static_cast<int>(steps)};
}

using F32 = ffi::Buffer<ffi::F32>;
using Bytes = ffi::Buffer<ffi::U8>;
using OutF32 = ffi::ResultBuffer<ffi::F32>;
using OutBytes = ffi::ResultBuffer<ffi::U8>;

ffi::Error Failure(cudnnStatus_t status, const char* what) {
  return ffi::Error(ffi::ErrorCode::kInternal, Message(status, what));
}

// What one call needs: the stream's handle and the problem's descriptors, set
// from the operand shapes (checked against each other) and the attributes.
struct Call {
  cudnnHandle_t handle = nullptr;
  const Descriptors* d = nullptr;
  bool lstm = false;

  ffi::Error Prepare(cudaStream_t stream, const F32& x, const F32& h0, int32_t mode, int32_t algo, bool tf32) {
    auto xd = x.dimensions();
    auto hd = h0.dimensions();
    if (xd.size() != 3 || hd.size() != 3 || hd[0] != 1 || hd[1] != xd[1]) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jrnn cuDNN RNN: expected x (T, B, I) and h0 (1, B, H)");
    }
    Config config = MakeConfig(mode, algo, tf32, xd[2], hd[2], xd[1], xd[0]);
    lstm = config.mode == CUDNN_LSTM;
    cudnnStatus_t s = HandleFor(stream, &handle);
    if (s != CUDNN_STATUS_SUCCESS) return Failure(s, "handle");
    const char* what = "";
    if ((s = DescriptorsFor(handle, config, &d, &what)) != CUDNN_STATUS_SUCCESS) return Failure(s, what);
    return ffi::Error::Success();
  }
};

ffi::Error ForwardImpl(cudaStream_t stream, F32 x, F32 h0, F32 c0, F32 w, ffi::Buffer<ffi::S32> lengths, OutF32 y,
                       OutF32 hy, OutF32 cy, OutBytes workspace, OutBytes reserve, int32_t mode, int32_t algo,
                       bool tf32, bool training) {
  Call call;
  if (ffi::Error error = call.Prepare(stream, x, h0, mode, algo, tf32); error.failure()) return error;
  const Descriptors& d = *call.d;
  const bool lstm = call.lstm;  // a GRU has no cell state
  cudnnStatus_t s = cudnnRNNForward(
      call.handle, d.rnn, training ? CUDNN_FWD_MODE_TRAINING : CUDNN_FWD_MODE_INFERENCE, lengths.typed_data(), d.x,
      x.typed_data(), d.y, y->typed_data(), d.state, h0.typed_data(), hy->typed_data(), lstm ? d.state : nullptr,
      lstm ? c0.typed_data() : nullptr, lstm ? cy->typed_data() : nullptr, w.size_bytes(), w.typed_data(),
      workspace->size_bytes(), workspace->typed_data(), reserve->size_bytes(),
      reserve->size_bytes() ? reserve->typed_data() : nullptr);
  if (s != CUDNN_STATUS_SUCCESS) return Failure(s, "cudnnRNNForward");
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(cudaStream_t stream, F32 x, F32 h0, F32 c0, F32 w, ffi::Buffer<ffi::S32> lengths, F32 y,
                        F32 dy, F32 dhy, F32 dcy, Bytes /*reserve_in*/, F32 /*dw_in*/, OutF32 dx, OutF32 dh0,
                        OutF32 dc0, OutF32 dw, OutBytes workspace, OutBytes reserve, int32_t mode, int32_t algo,
                        bool tf32) {
  Call call;
  if (ffi::Error error = call.Prepare(stream, x, h0, mode, algo, tf32); error.failure()) return error;
  const Descriptors& d = *call.d;
  const bool lstm = call.lstm;
  // the data gradients first: cuDNN's weight gradients read what they leave in the reserve space
  cudnnStatus_t s = cudnnRNNBackwardData_v8(
      call.handle, d.rnn, lengths.typed_data(), d.y, y.typed_data(), dy.typed_data(), d.x, dx->typed_data(),
      d.state, h0.typed_data(), dhy.typed_data(), dh0->typed_data(), lstm ? d.state : nullptr,
      lstm ? c0.typed_data() : nullptr, lstm ? dcy.typed_data() : nullptr, lstm ? dc0->typed_data() : nullptr,
      w.size_bytes(), w.typed_data(), workspace->size_bytes(), workspace->typed_data(), reserve->size_bytes(),
      reserve->typed_data());
  if (s != CUDNN_STATUS_SUCCESS) return Failure(s, "cudnnRNNBackwardData_v8");
  s = cudnnRNNBackwardWeights_v8(call.handle, d.rnn, CUDNN_WGRAD_MODE_ADD, lengths.typed_data(), d.x,
                                 x.typed_data(), d.state, h0.typed_data(), d.y, y.typed_data(), dw->size_bytes(),
                                 dw->typed_data(), workspace->size_bytes(), workspace->typed_data(),
                                 reserve->size_bytes(), reserve->typed_data());
  if (s != CUDNN_STATUS_SUCCESS) return Failure(s, "cudnnRNNBackwardWeights_v8");
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnCudnnRnnForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<F32>()                      // x (T, B, I)
                                  .Arg<F32>()                      // h0 (1, B, H)
                                  .Arg<F32>()                      // c0 (1, B, H)
                                  .Arg<F32>()                      // w, cuDNN's weight space
                                  .Arg<ffi::Buffer<ffi::S32>>()    // lengths (B,), all T
                                  .Ret<F32>()                      // y (T, B, H)
                                  .Ret<F32>()                      // hy
                                  .Ret<F32>()                      // cy
                                  .Ret<ffi::Buffer<ffi::U8>>()     // workspace
                                  .Ret<ffi::Buffer<ffi::U8>>()     // reserve (0 bytes in inference)
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("algo")
                                  .Attr<bool>("tf32")
                                  .Attr<bool>("training"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnCudnnRnnBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<F32>()                      // x
                                  .Arg<F32>()                      // h0
                                  .Arg<F32>()                      // c0
                                  .Arg<F32>()                      // w
                                  .Arg<ffi::Buffer<ffi::S32>>()    // lengths
                                  .Arg<F32>()                      // y
                                  .Arg<F32>()                      // dy
                                  .Arg<F32>()                      // dhy
                                  .Arg<F32>()                      // dcy
                                  .Arg<ffi::Buffer<ffi::U8>>()     // reserve, from the forward
                                  .Arg<F32>()                      // zeros, the size of w
                                  .Ret<F32>()                      // dx
                                  .Ret<F32>()                      // dh0
                                  .Ret<F32>()                      // dc0
                                  .Ret<F32>()                      // dw (aliases the zeros)
                                  .Ret<ffi::Buffer<ffi::U8>>()     // workspace
                                  .Ret<ffi::Buffer<ffi::U8>>()     // reserve (aliases the input)
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("algo")
                                  .Attr<bool>("tf32"));

// For ctypes at trace time: the weight space, workspace and reserve sizes in
// bytes (sizes[0..2]) of a forward (training != 0: one that keeps what the
// backward needs; the backward's workspace is the training forward's).
// Returns 0, or a cuDNN status with its message in *message.
extern "C" int jrnn_cudnn_rnn_sizes(int mode, int algo, int tf32, int input_size, int hidden_size, int batch,
                                    int steps, int training, size_t* sizes, const char** message) {
  static std::string last_error;
  cudnnHandle_t handle;
  cudnnStatus_t s = HandleFor(nullptr, &handle);
  const char* what = "handle";
  if (s == CUDNN_STATUS_SUCCESS) {
    s = Sizes(handle, MakeConfig(mode, algo, tf32 != 0, input_size, hidden_size, batch, steps), training != 0,
              &sizes[0], &sizes[1], &sizes[2], &what);
  }
  if (s != CUDNN_STATUS_SUCCESS) {
    last_error = Message(s, what);
    *message = last_error.c_str();
  }
  return static_cast<int>(s);
}
