// oneDNN 2-D convolution as an XLA FFI custom call for the CPU (see backends/cpu/onednn.py).
//
//   z[n, i, j, o] = sum_{a, b, c} xp[n, i * sh + a * dh, j * sw + b * dw, c] * w[a, b, c, o]
//                   (+ bias[o]) (+ residual[n, i, j, o]),   y = relu(z) if `relu` else z,
//
// x: (N, H, W, C) (NHWC), w: (KH, KW, C, O) (HWIO), y: (N, OH, OW, O) (NHWC): x and w both
// float32; or w bfloat16 and x bfloat16 or float32 (bf16 compute: the products accumulate in
// float32, oneDNN's bf16 convolutions on avx512_bf16 / AMX; a float32 x is rounded to bfloat16
// here, a few images at a time into a cache-sized buffer, instead of in a pass of its own);
// y float32, or bfloat16 (rounded once, after the epilogue);
// xp = x zero-padded by `padding` = (top, bottom, left, right); `strides` = (sh, sw);
// `dilation` = (dh, dw) is the kernel dilation of lax.conv_general_dilated (1 = none).
// The optional operands follow x and w: bias (O,) float32 if `bias`, then residual
// (N, OH, OW, O) float32 if `residual`; bias, residual and ReLU are applied by oneDNN while the output tile is in cache
// (its bias argument, a binary-add post-op and an eltwise post-op). A float32 residual whose
// buffer is the output's (the caller aliases them: bf16 compute with a float32 result) is added
// by a sum post-op instead, onto the output buffer: the same additions, much cheaper in oneDNN's
// bf16 brgemm convolutions than a binary add.
//
// Forward inference with oneDNN's own choice of weight layout (the weights are reordered into it
// on every call: they change from call to call, e.g. from one grid point to the next); the
// activations stay NHWC, which oneDNN's brgemm convolutions read and write directly. Primitives
// are cached per shape; scratchpads are per thread, so concurrent calls (several XLA CPU devices)
// are safe.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kKeySize = 23;
// Images per bf16 chunk of a float32 x: about this many bytes of bfloat16 input (in L2).
constexpr int64_t kChunkBytes = 512 * 1024;

struct Key {
  int64_t v[kKeySize];
  bool operator==(const Key& o) const {
    for (int i = 0; i < kKeySize; ++i) {
      if (v[i] != o.v[i]) return false;
    }
    return true;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = 1469598103934665603ull;
    for (int i = 0; i < kKeySize; ++i) h = (h ^ static_cast<size_t>(k.v[i])) * 1099511628211ull;
    return h;
  }
};

struct Entry {
  dnnl::convolution_forward conv;
  dnnl::memory::desc user_weights;
  dnnl::memory::desc weights;
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;
  dnnl::reorder src_reorder;  // float32 -> bfloat16 images (v[22])
  size_t scratchpad_bytes = 0;
  std::string impl;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// 64-byte aligned, per-thread buffer that only grows.
struct Buffer {
  void* data = nullptr;
  size_t size = 0;
  ~Buffer() { std::free(data); }
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 63) / 64 * 64;
      data = std::aligned_alloc(64, size);
    }
    return data;
  }
};

std::shared_ptr<Entry> MakeEntry(const Key& k) {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const int64_t* v = k.v;
  // v: n, ih, iw, ic, kh, kw, oc, oh, ow, sh, sw, dh, dw, pt, pb, pl, pr, bias, residual, relu,
  //    src/weights bf16, dst bf16, src given in float32 (rounded to bf16 by src_reorder)
  dnnl::memory::dims src{v[0], v[3], v[1], v[2]};
  dnnl::memory::dims wts{v[6], v[3], v[4], v[5]};
  dnnl::memory::dims dst{v[0], v[6], v[7], v[8]};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dt sdt = v[20] ? dt::bf16 : dt::f32;
  const dt ddt = v[21] ? dt::bf16 : dt::f32;
  dnnl::post_ops post;
  auto dst_md = dnnl::memory::desc(dst, ddt, tag::nhwc);
  // v[18]: 1 the residual as a binary-add post-op, 2 as a sum post-op (the residual is the
  // output buffer itself: XLA aliases them; oneDNN adds the product onto it)
  if (v[18] == 1) post.append_binary(dnnl::algorithm::binary_add,
                                     dnnl::memory::desc(dst, dt::f32, tag::nhwc));
  if (v[18] == 2) post.append_sum(1.f);
  if (v[19]) post.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  attr.set_post_ops(post);
  auto src_md = dnnl::memory::desc(src, sdt, tag::nhwc);
  auto wts_md = dnnl::memory::desc(wts, sdt, tag::any);
  dnnl::memory::dims strides{v[9], v[10]}, dilates{v[11] - 1, v[12] - 1};
  dnnl::memory::dims pad_l{v[13], v[15]}, pad_r{v[14], v[16]};
  auto fwd = dnnl::prop_kind::forward_inference;
  auto algo = dnnl::algorithm::convolution_direct;
  auto pd = v[17] ? dnnl::convolution_forward::primitive_desc(
                        Engine(), fwd, algo, src_md, wts_md,
                        dnnl::memory::desc({v[6]}, dt::f32, tag::a), dst_md, strides, dilates,
                        pad_l, pad_r, attr)
                  : dnnl::convolution_forward::primitive_desc(
                        Engine(), fwd, algo, src_md, wts_md, dst_md, strides, dilates, pad_l,
                        pad_r, attr);
  auto e = std::make_shared<Entry>();
  e->conv = dnnl::convolution_forward(pd);
  e->user_weights = dnnl::memory::desc(wts, sdt, tag::hwio);
  e->weights = pd.weights_desc();
  e->scratchpad_bytes = pd.scratchpad_desc().get_size();
  e->impl = pd.impl_info_str();
  if (e->weights != e->user_weights) {
    e->reorder_weights = true;
    e->weights_reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(Engine(), e->user_weights, Engine(), e->weights));
  }
  if (v[22]) {
    e->src_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), dnnl::memory::desc(src, dt::f32, tag::nhwc), Engine(), src_md));
  }
  return e;
}

std::shared_ptr<Entry> Lookup(const Key& k) {
  static std::mutex mu;
  static std::unordered_map<Key, std::shared_ptr<Entry>, KeyHash> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  auto e = MakeEntry(k);
  cache.emplace(k, e);
  return e;
}

ffi::Error Conv(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::RemainingArgs rest,
                ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation, bool bias,
                bool residual, bool relu) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || strides.size() != 2 ||
      padding.size() != 4 || dilation.size() != 2) {
    return ffi::Error::InvalidArgument("onednn_conv: expects NHWC x, HWIO w, 2 strides, 4 pads.");
  }
  if (wd[2] != xd[3] || yd[3] != wd[3] || yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument("onednn_conv: channel or batch sizes do not match.");
  }
  const auto xt = x.element_type();
  const auto wt = w.element_type();
  const auto yt = y->element_type();
  const bool ok_types = (wt == ffi::DataType::F32 && xt == ffi::DataType::F32) ||
                        (wt == ffi::DataType::BF16 &&
                         (xt == ffi::DataType::BF16 || xt == ffi::DataType::F32));
  if (!ok_types || (yt != ffi::DataType::F32 && yt != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument(
        "onednn_conv: x and w must be float32, or w bfloat16 and x bfloat16 or float32; y float32 "
        "or bfloat16.");
  }
  const bool bf16 = wt == ffi::DataType::BF16;
  const bool convert_src = bf16 && xt == ffi::DataType::F32;
  const bool dst_bf16 = yt == ffi::DataType::BF16;
  if (rest.size() != static_cast<size_t>(bias) + static_cast<size_t>(residual)) {
    return ffi::Error::InvalidArgument("onednn_conv: operands do not match bias / residual.");
  }
  float* bias_data = nullptr;
  float* residual_data = nullptr;
  if (bias) {
    auto b = rest.get<ffi::Buffer<ffi::F32>>(0);
    if (!b.has_value() || b->element_count() != static_cast<size_t>(wd[3])) {
      return ffi::Error::InvalidArgument("onednn_conv: bias must be float32 (O,).");
    }
    bias_data = b->typed_data();
  }
  if (residual) {
    auto r = rest.get<ffi::Buffer<ffi::F32>>(bias ? 1 : 0);
    if (!r.has_value() || r->element_count() != y->element_count()) {
      return ffi::Error::InvalidArgument("onednn_conv: residual must be float32 like the output.");
    }
    residual_data = r->typed_data();
  }
  // a float32 residual that is the output buffer (aliased by XLA): a sum post-op
  const bool sum = residual_data != nullptr && !dst_bf16 &&
                   static_cast<void*>(residual_data) == y->untyped_data();
  Key k{{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], strides[0], strides[1],
         dilation[0], dilation[1], padding[0], padding[1], padding[2], padding[3], bias,
         residual ? (sum ? 2 : 1) : 0, relu, bf16, dst_bf16, convert_src}};
  const int64_t in_image = xd[1] * xd[2] * xd[3];
  const int64_t out_image = yd[1] * yd[2] * yd[3];
  // a float32 x with bf16 compute: converted and convolved `chunk` images at a time
  const int64_t chunk =
      convert_src ? std::max<int64_t>(1, std::min<int64_t>(xd[0], kChunkBytes / (2 * in_image)))
                  : xd[0];
  try {
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    thread_local Buffer scratch, weights, src_chunk;
    dnnl::stream stream(Engine());
    const dt sdt = bf16 ? dt::bf16 : dt::f32;
    const dt ddt = dst_bf16 ? dt::bf16 : dt::f32;
    const size_t dst_size = dst_bf16 ? 2 : 4;
    dnnl::memory wu;
    dnnl::memory wm;
    dnnl::memory::desc wm_desc;
    for (int64_t n0 = 0; n0 < xd[0]; n0 += chunk) {
      const int64_t nb = std::min(chunk, xd[0] - n0);
      Key kc = k;
      kc.v[0] = nb;
      std::shared_ptr<Entry> e = Lookup(kc);
      if (n0 == 0 || e->weights != wm_desc) {  // the weights in the kernel's layout, once
        wu = dnnl::memory(e->user_weights, Engine(), w.untyped_data());
        wm = wu;
        if (e->reorder_weights) {
          wm = dnnl::memory(e->weights, Engine(), weights.Get(e->weights.get_size()));
          e->weights_reorder.execute(stream, wu, wm);
        }
        wm_desc = e->weights;
      }
      dnnl::memory::desc src_desc({nb, xd[3], xd[1], xd[2]}, sdt, tag::nhwc);
      dnnl::memory src;
      if (convert_src) {
        dnnl::memory src_f32(dnnl::memory::desc({nb, xd[3], xd[1], xd[2]}, dt::f32, tag::nhwc),
                             Engine(), static_cast<float*>(x.untyped_data()) + n0 * in_image);
        src = dnnl::memory(src_desc, Engine(), src_chunk.Get(src_desc.get_size()));
        e->src_reorder.execute(stream, src_f32, src);
      } else {
        src = dnnl::memory(src_desc, Engine(),
                           static_cast<char*>(x.untyped_data()) + n0 * in_image * (bf16 ? 2 : 4));
      }
      dnnl::memory dst(dnnl::memory::desc({nb, yd[3], yd[1], yd[2]}, ddt, tag::nhwc), Engine(),
                       static_cast<char*>(y->untyped_data()) + n0 * out_image * dst_size);
      dnnl::memory pad(
          dnnl::memory::desc({static_cast<int64_t>(e->scratchpad_bytes)}, dt::u8, tag::a),
          Engine(), scratch.Get(e->scratchpad_bytes + 64));
      std::unordered_map<int, dnnl::memory> args{
          {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dst},
          {DNNL_ARG_SCRATCHPAD, pad}};
      if (bias_data != nullptr) {
        args.emplace(DNNL_ARG_BIAS, dnnl::memory(dnnl::memory::desc({yd[3]}, dt::f32, tag::a),
                                                 Engine(), bias_data));
      }
      if (residual_data != nullptr && !sum) {
        args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
                     dnnl::memory(dnnl::memory::desc({nb, yd[3], yd[1], yd[2]}, dt::f32,
                                                     tag::nhwc),
                                  Engine(), residual_data + n0 * out_image));
      }
      e->conv.execute(stream, args);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn_conv: oneDNN error: ") + err.what());
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ backward (derivatives)
//
// The two other products of the same bilinear form, for the derivatives (float32):
//   backward data:    dx[n, h, w, c] = sum_{i, j, a, b, o: h = i sh + a dh - pt, w = j sw + b dw - pl}
//                                      dy[n, i, j, o] w[a, b, c, o]     (the adjoint in x),
//   backward weights: dw[a, b, c, o] = sum_{n, i, j} xp[n, i sh + a dh, j sw + b dw, c] dy[n, i, j, o]
//                                                                        (the adjoint in w),
// oneDNN's convolution_backward_data / convolution_backward_weights primitives, NHWC activations
// and HWIO weights (reordered from / to oneDNN's choice of weight layout on each call).

struct BwdEntry {
  dnnl::primitive prim;
  dnnl::memory::desc user_weights;  // HWIO
  dnnl::memory::desc weights;       // the primitive's (diff_)weights layout
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;    // data: HWIO -> weights; weights: weights -> HWIO
  size_t scratchpad_bytes = 0;
  std::string impl;
};

// Implementations known to be wrong, skipped for the next one oneDNN offers: oneDNN 3.2's
// "jit_1x1" backward weights of a strided 1x1 convolution (NHWC). On AVX-512 it writes up to
// ~1.3 KB past the scratchpad it asks for (heap corruption: "malloc(): corrupted top size",
// a worker aborted in tests/test_onednn_autodiff.py; found with guard bytes around every buffer
// of every product for 9 strides x 162 shapes, none past its end once this kernel is skipped);
// on AVX2 it gives weight gradients 92% off for strides (1, 2), 5 -> 7 channels.
bool KnownWrong(const std::string& impl, int kind, int64_t sh, int64_t sw, int64_t kh,
                int64_t kw) {
  return kind == 2 && (sh > 1 || sw > 1) && kh == 1 && kw == 1 && impl.rfind("jit_1x1:", 0) == 0;
}

template <typename PD>
void SkipKnownWrong(PD& pd, int kind, const int64_t* v) {
  while (KnownWrong(pd.impl_info_str(), kind, v[9], v[10], v[4], v[5])) {
    if (!pd.next_impl()) {
      throw dnnl::error(dnnl_unimplemented, "no correct oneDNN implementation for this shape");
    }
  }
}

// k: n, ih, iw, ic, kh, kw, oc, oh, ow, sh, sw, dh, dw, pt, pb, pl, pr, kind (1 data, 2 weights)
std::shared_ptr<BwdEntry> MakeBwdEntry(const Key& k) {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  const int64_t* v = k.v;
  dnnl::memory::dims src{v[0], v[3], v[1], v[2]};
  dnnl::memory::dims wts{v[6], v[3], v[4], v[5]};
  dnnl::memory::dims dst{v[0], v[6], v[7], v[8]};
  dnnl::memory::dims strides{v[9], v[10]}, dilates{v[11] - 1, v[12] - 1};
  dnnl::memory::dims pad_l{v[13], v[15]}, pad_r{v[14], v[16]};
  auto src_md = dnnl::memory::desc(src, dt::f32, tag::nhwc);
  auto dst_md = dnnl::memory::desc(dst, dt::f32, tag::nhwc);
  auto wts_any = dnnl::memory::desc(wts, dt::f32, tag::any);
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto hint = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, algo, src_md, wts_any, dst_md, strides,
      dilates, pad_l, pad_r);
  auto e = std::make_shared<BwdEntry>();
  e->user_weights = dnnl::memory::desc(wts, dt::f32, tag::hwio);
  if (v[17] == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), algo, src_md, wts_any, dst_md, strides, dilates, pad_l, pad_r, hint, attr);
    SkipKnownWrong(pd, 1, v);
    e->prim = dnnl::convolution_backward_data(pd);
    e->weights = pd.weights_desc();
    e->scratchpad_bytes = pd.scratchpad_desc().get_size();
    e->impl = pd.impl_info_str();
    if (e->weights != e->user_weights) {
      e->reorder_weights = true;
      e->weights_reorder = dnnl::reorder(
          dnnl::reorder::primitive_desc(Engine(), e->user_weights, Engine(), e->weights));
    }
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), algo, src_md, wts_any, dst_md, strides, dilates, pad_l, pad_r, hint, attr);
    SkipKnownWrong(pd, 2, v);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->weights = pd.diff_weights_desc();
    e->scratchpad_bytes = pd.scratchpad_desc().get_size();
    e->impl = pd.impl_info_str();
    if (e->weights != e->user_weights) {
      e->reorder_weights = true;
      e->weights_reorder = dnnl::reorder(
          dnnl::reorder::primitive_desc(Engine(), e->weights, Engine(), e->user_weights));
    }
  }
  return e;
}

std::shared_ptr<BwdEntry> LookupBwd(const Key& k) {
  static std::mutex mu;
  static std::unordered_map<Key, std::shared_ptr<BwdEntry>, KeyHash> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  auto e = MakeBwdEntry(k);
  cache.emplace(k, e);
  return e;
}

// x: (N, H, W, C) images (or dx), w: (KH, KW, C, O) (or dw), y: (N, OH, OW, O) (or dy).
ffi::Error Backward(int kind, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                    ffi::Buffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                    ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || strides.size() != 2 ||
      padding.size() != 4 || dilation.size() != 2) {
    return ffi::Error::InvalidArgument(
        "onednn_conv backward: expects NHWC images, HWIO weights, 2 strides, 4 pads.");
  }
  if (wd[2] != xd[3] || yd[3] != wd[3] || yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument(
        "onednn_conv backward: channel or batch sizes do not match.");
  }
  Key k{{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], strides[0], strides[1],
         dilation[0], dilation[1], padding[0], padding[1], padding[2], padding[3], kind, 0, 0, 0,
         0, 0}};
  try {
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    thread_local Buffer scratch, weights;
    std::shared_ptr<BwdEntry> e = LookupBwd(k);
    dnnl::stream stream(Engine());
    dnnl::memory src(dnnl::memory::desc({xd[0], xd[3], xd[1], xd[2]}, dt::f32, tag::nhwc),
                     Engine(), x.typed_data());
    dnnl::memory dst(dnnl::memory::desc({yd[0], yd[3], yd[1], yd[2]}, dt::f32, tag::nhwc),
                     Engine(), y.typed_data());
    dnnl::memory wu(e->user_weights, Engine(), w.typed_data());
    dnnl::memory wm = wu;
    if (e->reorder_weights) {
      wm = dnnl::memory(e->weights, Engine(), weights.Get(e->weights.get_size()));
    }
    dnnl::memory pad(
        dnnl::memory::desc({static_cast<int64_t>(e->scratchpad_bytes)}, dt::u8, tag::a),
        Engine(), scratch.Get(e->scratchpad_bytes + 64));
    if (kind == 1) {
      if (e->reorder_weights) e->weights_reorder.execute(stream, wu, wm);
      e->prim.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, wm},
                               {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      e->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                               {DNNL_ARG_DIFF_WEIGHTS, wm}, {DNNL_ARG_SCRATCHPAD, pad}});
      if (e->reorder_weights) e->weights_reorder.execute(stream, wm, wu);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn_conv backward: oneDNN error: ") + err.what());
  }
  return ffi::Error::Success();
}

// dx = backward data(dy, w): the result is the images' buffer.
ffi::Error BwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                   ffi::Result<ffi::Buffer<ffi::F32>> dx, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  return Backward(1, *dx, w, dy, strides, padding, dilation);
}

// dw = backward weights(x, dy): the result is the weights' buffer.
ffi::Error BwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::Result<ffi::Buffer<ffi::F32>> dw, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  return Backward(2, x, *dw, dy, strides, padding, dilation);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LandscapeJaxOnednnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<bool>("bias")
                                  .Attr<bool>("residual")
                                  .Attr<bool>("relu"));

// The oneDNN implementation chosen for a shape (e.g. "brgconv:avx512_core"), for diagnostics.
// Returns an empty string when oneDNN has none. Same argument order as the cache key.
extern "C" const char* LandscapeJaxOnednnConvImpl(const int64_t* key) {
  thread_local std::string name;
  Key k;
  for (int i = 0; i < kKeySize; ++i) k.v[i] = key[i];
  try {
    name = Lookup(k)->impl;
  } catch (const dnnl::error&) {
    name.clear();
  }
  return name.c_str();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LandscapeJaxOnednnConvBwdData, BwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LandscapeJaxOnednnConvBwdWeights, BwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation"));

// The oneDNN implementation of a backward convolution (key as in Backward: kind 1 data,
// 2 weights), for diagnostics; empty when oneDNN has none.
extern "C" const char* LandscapeJaxOnednnConvBwdImpl(const int64_t* key) {
  thread_local std::string name;
  Key k;
  for (int i = 0; i < kKeySize; ++i) k.v[i] = key[i];
  try {
    name = LookupBwd(k)->impl;
  } catch (const dnnl::error&) {
    name.clear();
  }
  return name.c_str();
}
