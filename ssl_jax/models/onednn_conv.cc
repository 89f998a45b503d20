// 2D convolutions on CPU by oneDNN, as XLA FFI handlers (ssl_jax/models/onednn.py).
//
// Why: XLA:CPU runs convolutions through Eigen, and the narrow ones of a
// small ResNet (16-128 channels) at 30-100 GFLOP/s; oneDNN's AVX-512 kernels
// run the same convs 2-6x faster (docs/performance.md). Activations stay
// in JAX's NHWC layout and kernels in HWIO; only the (small) kernel is
// reordered into the blocked layout oneDNN's fast kernels want.
//
// Three handlers, one per pass: forward (x, w -> y), input gradient
// (dy, w -> dx) and weight gradient (x, dy -> dw). Symmetric padding `pad`,
// square stride `stride`, no dilation or groups. Primitives are built once
// per shape and kept: building one JIT-compiles its kernel. Builds against
// oneDNN 2.x (Debian 12's libdnnl-dev) and 3.x (checked with 3.2).
//
// XLA runs independent ops of a step concurrently, from any of its threads.
// oneDNN's default (library-managed) scratchpad is shared by all primitives
// and only safe when a primitive runs in the thread that created it: shared,
// two concurrent weight gradients overwrote each other's partial sums (a
// resumed benchmark sweep then differed from the uninterrupted one in a
// 4th AUROC digit). So every primitive here takes a user scratchpad,
// allocated per call.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

struct Shape {
  int64_t n, h, w, c, kh, kw, o, stride, pad;
  int64_t out_h() const { return (h + 2 * pad - kh) / stride + 1; }
  int64_t out_w() const { return (w + 2 * pad - kw) / stride + 1; }
  auto key() const { return std::tie(n, h, w, c, kh, kw, o, stride, pad); }
  bool operator<(const Shape& other) const { return key() < other.key(); }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A primitive and the scratchpad each execution of it needs.
struct Pass {
  dnnl::primitive primitive;
  memory::desc scratchpad;

  static Pass of(const dnnl::primitive_desc& pd) {
    return Pass{dnnl::primitive(pd), pd.scratchpad_desc()};
  }

  // Runs on `args`, with a scratchpad of its own (see the top of the file).
  void operator()(dnnl::stream& stream, std::unordered_map<int, memory> args) const {
    args[DNNL_ARG_SCRATCHPAD] = memory(scratchpad, stream.get_engine());
    primitive.execute(stream, args);
  }
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

Pass reorder(const memory::desc& from, const memory::desc& to) {
  auto& eng = cpu_engine();
  const dnnl::reorder::primitive_desc pd(eng, from, eng, to, user_scratchpad());
  return Pass{dnnl::reorder(pd), pd.scratchpad_desc()};
}

// The three passes of one conv shape, and the kernel reorders each needs.
struct Conv {
  memory::desc x, y, w_user, w_fwd, w_bwd_data, dw_blocked;
  Pass fwd, bwd_data, bwd_weights, w_to_fwd, w_to_bwd_data, dw_to_user;

  explicit Conv(const Shape& s) {
    auto& eng = cpu_engine();
    const memory::dims xd{s.n, s.c, s.h, s.w}, yd{s.n, s.o, s.out_h(), s.out_w()},
        wd{s.o, s.c, s.kh, s.kw}, strides{s.stride, s.stride}, pads{s.pad, s.pad};
    const auto f32 = memory::data_type::f32;
    x = memory::desc(xd, f32, tag::nhwc);
    y = memory::desc(yd, f32, tag::nhwc);
    w_user = memory::desc(wd, f32, tag::hwio);
    const memory::desc w_any(wd, f32, tag::any);
    const auto direct = dnnl::algorithm::convolution_direct;
    const auto attr = user_scratchpad();
#if DNNL_VERSION_MAJOR >= 3
    // oneDNN 3.x builds primitive descriptors directly (the op descs are gone).
    const dnnl::convolution_forward::primitive_desc fwd_pd(
        eng, dnnl::prop_kind::forward_training, direct, x, w_any, y, strides, pads,
        pads, attr);
    const dnnl::convolution_backward_data::primitive_desc bwd_data_pd(
        eng, direct, x, w_any, y, strides, pads, pads, fwd_pd, attr);
    const dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd(
        eng, direct, x, w_any, y, strides, pads, pads, fwd_pd, attr);
#else
    const dnnl::convolution_forward::primitive_desc fwd_pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, direct,
                                        x, w_any, y, strides, pads, pads),
        attr, eng);
    const dnnl::convolution_backward_data::primitive_desc bwd_data_pd(
        dnnl::convolution_backward_data::desc(direct, x, w_any, y, strides, pads, pads),
        attr, eng, fwd_pd);
    const dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd(
        dnnl::convolution_backward_weights::desc(direct, x, w_any, y, strides, pads, pads),
        attr, eng, fwd_pd);
#endif
    w_fwd = fwd_pd.weights_desc();
    w_bwd_data = bwd_data_pd.weights_desc();
    dw_blocked = bwd_weights_pd.diff_weights_desc();
    fwd = Pass::of(fwd_pd);
    bwd_data = Pass::of(bwd_data_pd);
    bwd_weights = Pass::of(bwd_weights_pd);
    w_to_fwd = reorder(w_user, w_fwd);
    w_to_bwd_data = reorder(w_user, w_bwd_data);
    dw_to_user = reorder(dw_blocked, w_user);
  }
};

const Conv& conv_for(const Shape& s) {
  static std::mutex mutex;
  static std::map<Shape, std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[s];
  if (!entry) entry = std::make_unique<Conv>(s);
  return *entry;
}

// A memory over a buffer XLA owns (oneDNN only reads or writes it).
memory wrap(const memory::desc& desc, const void* data) {
  return memory(desc, cpu_engine(), const_cast<void*>(data));
}

// x: [N, H, W, C], w: [KH, KW, C, O], y: [N, H', W', O].
Shape shape_of(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
               int64_t stride, int64_t pad) {
  return Shape{x[0], x[1], x[2], x[3], w[0], w[1], w[3], stride, pad};
}

ffi::Error check(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w) {
  if (x.size() != 4 || w.size() != 4 || x[3] != w[2])
    return ffi::Error::InvalidArgument(
        "onednn conv: expected x [N, H, W, C] and kernel [KH, KW, C, O]");
  return ffi::Error::Success();
}

// Runs a pass that reads the kernel: HWIO `w` reordered into the blocked
// layout `blocked` the pass wants, then the pass on `args` + it.
void run_with_kernel(const Conv& conv, const Pass& pass, const Pass& to_blocked,
                     const memory::desc& blocked, const float* w,
                     std::unordered_map<int, memory> args) {
  dnnl::stream stream(cpu_engine());
  memory w_blocked(blocked, cpu_engine());
  to_blocked(stream, {{DNNL_ARG_FROM, wrap(conv.w_user, w)}, {DNNL_ARG_TO, w_blocked}});
  args[DNNL_ARG_WEIGHTS] = w_blocked;
  pass(stream, args);
  stream.wait();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad) {
  if (auto err = check(x.dimensions(), w.dimensions()); err.failure()) return err;
  const Conv& conv = conv_for(shape_of(x.dimensions(), w.dimensions(), stride, pad));
  run_with_kernel(conv, conv.fwd, conv.w_to_fwd, conv.w_fwd, w.typed_data(),
                  {{DNNL_ARG_SRC, wrap(conv.x, x.typed_data())},
                   {DNNL_ARG_DST, wrap(conv.y, y->typed_data())}});
  return ffi::Error::Success();
}

// dx of a conv whose input had dx's shape (the result's dimensions say it).
ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad) {
  if (auto err = check(dx->dimensions(), w.dimensions()); err.failure()) return err;
  const Conv& conv = conv_for(shape_of(dx->dimensions(), w.dimensions(), stride, pad));
  run_with_kernel(conv, conv.bwd_data, conv.w_to_bwd_data, conv.w_bwd_data,
                  w.typed_data(),
                  {{DNNL_ARG_DIFF_DST, wrap(conv.y, dy.typed_data())},
                   {DNNL_ARG_DIFF_SRC, wrap(conv.x, dx->typed_data())}});
  return ffi::Error::Success();
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t stride, int64_t pad) {
  if (auto err = check(x.dimensions(), dw->dimensions()); err.failure()) return err;
  const Conv& conv = conv_for(shape_of(x.dimensions(), dw->dimensions(), stride, pad));
  dnnl::stream stream(cpu_engine());
  memory dw_blocked(conv.dw_blocked, cpu_engine());
  conv.bwd_weights(stream, {{DNNL_ARG_SRC, wrap(conv.x, x.typed_data())},
                            {DNNL_ARG_DIFF_DST, wrap(conv.y, dy.typed_data())},
                            {DNNL_ARG_DIFF_WEIGHTS, dw_blocked}});
  conv.dw_to_user(stream, {{DNNL_ARG_FROM, dw_blocked},
                           {DNNL_ARG_TO, wrap(conv.w_user, dw->typed_data())}});
  stream.wait();
  return ffi::Error::Success();
}

}  // namespace

#define SSL_JAX_CONV_HANDLER(symbol, impl)                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                       \
                                ffi::Ffi::Bind()                    \
                                    .Arg<ffi::Buffer<ffi::F32>>()   \
                                    .Arg<ffi::Buffer<ffi::F32>>()   \
                                    .Ret<ffi::Buffer<ffi::F32>>()   \
                                    .Attr<int64_t>("stride")        \
                                    .Attr<int64_t>("pad"));

SSL_JAX_CONV_HANDLER(ssl_jax_onednn_conv_forward, Forward)
SSL_JAX_CONV_HANDLER(ssl_jax_onednn_conv_input_grad, InputGrad)
SSL_JAX_CONV_HANDLER(ssl_jax_onednn_conv_weight_grad, WeightGrad)
