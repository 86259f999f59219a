// resnest_conv3x3: a 3x3 convolution (stride 1, padding 1, no dilation, no bias, any number of
// groups) run with oneDNN's Winograd F(4x4, 3x3) kernels, as one MXNet operator (MXNet's
// extension API, include/mxnet/lib_api.h of the installed wheel).
//
// MXNet 1.9 asks oneDNN for direct convolutions only. On CPUs with AVX-512, oneDNN's Winograd
// kernels compute the same convolution with about a quarter of the multiplications and ran
// the 3x3 convolutions of split attention about twice as fast, forward and both backward
// passes (docs/benchmarks.md). They have no grouped variant, so each group is one dense
// convolution over a channel slice of the plain NCHW tensors: reorders copy the slice into the
// kernel's blocked layout and the result back, inside one pass over the group.
//
// Inputs must already be in MXNet's plain layout (the Python side reshapes x first; the
// extension API would otherwise convert it into an unplanned temporary array on every call).
// With the attribute blocked_output=1, y (and so dy in the backward pass) is instead in the
// "group-blocked" layout that the kernels write, which the compiled BatchNorm after the
// convolution reads (batchnorm_relu.cc): per group g of Cg output channels and image n, the
// kernel's aBcd16b array of that image and group, so y[n, g * Cg + 16 * b + l, s] lies at
// ((g * N + n) * Cg + 16 * b) * S + 16 * s + l (S = H * W). No copy back to the plain layout,
// which took about 8% of the operator's time in inference (ResNeSt-50, batch 16).
//
// float32 only. The oneDNN used here is the one of the `onednn-cpu-gomp` wheel (not MXNet's
// own copy, whose symbols libmxnet.so does not export).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "mxnet/lib_api.h"
#include "op_common.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using resnest::Attributes;
using dnnl::memory;

namespace {

const char* kName = "resnest_conv3x3";

// The most temporary space the Winograd weight-gradient kernel may take (weight_gradient_kernel).
constexpr size_t kWeightScratchBytes = size_t(32) << 20;

int64_t groups_of(const Attributes& attrs) { return resnest::integer_attr(attrs, "groups"); }

bool blocked_output(const Attributes& attrs) {
  return resnest::integer_attr(attrs, "blocked_output") != 0;
}

constexpr int64_t kBlock = 16;   // the channel block of the group-blocked layout

// One group's convolution: batch, input and output channels of the group, image size; and
// the whole tensors' channel counts (the group's slice strides over them).
struct Geometry {
  int64_t batch, in_channels, out_channels, height, width, groups;
  int64_t group_in() const { return in_channels / groups; }
  int64_t group_out() const { return out_channels / groups; }
  auto key() const {
    return std::make_tuple(batch, in_channels, out_channels, height, width, groups);
  }
};

Geometry geometry_of(const MXTensor& x, const MXTensor& weight, int64_t groups) {
  return {x.shape[0], x.shape[1], weight.shape[0], x.shape[2], x.shape[3], groups};
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A group's channel slice of a plain (N, C_total, H, W) tensor.
memory::desc plain_slice(const Geometry& g, int64_t channels, int64_t total_channels) {
  return memory::desc({g.batch, channels, g.height, g.width}, memory::data_type::f32,
                      memory::dims{total_channels * g.height * g.width, g.height * g.width,
                                   g.width, 1});
}

memory::desc any_layout(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
}

memory::desc group_weights(const Geometry& g) {
  return memory::desc({g.group_out(), g.group_in(), 3, 3}, memory::data_type::f32,
                      memory::format_tag::oihw);
}

// The primitives of one geometry, created on first use and kept (creating a Winograd
// primitive costs far more than running a small one). Their scratchpads are the caller's
// (MXNet's reused temporary space): oneDNN's own were allocated afresh, and first touched,
// on many calls.
struct Kernels {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc backward_data_pd;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights backward_weights;
};

// The weight-gradient kernel: Winograd's, unless its scratchpad (transformed weights, one copy
// per thread) would exceed kWeightScratchBytes, where the direct kernel runs instead. With
// Winograd's everywhere, ResNeSt-50's last stage asked for 66 MB of temporary space (2
// threads) and training took more of MXNet's memory than with MXNet's own kernels (518 vs
// 498 MB in tests/test_memory.py; 480 with the direct kernel there, at 0-3% of the step time).
dnnl::convolution_backward_weights::primitive_desc weight_gradient_kernel(
    const memory::dims& src, const memory::dims& weights, const memory::dims& dst,
    const dnnl::primitive_attr& attr, const dnnl::convolution_forward::primitive_desc& forward) {
  const memory::dims strides = {1, 1}, padding = {1, 1};
  dnnl::engine& engine = cpu_engine();
  auto kernel = [&](dnnl::algorithm algorithm,
                    const dnnl::convolution_forward::primitive_desc& hint) {
    return dnnl::convolution_backward_weights::primitive_desc(
        {algorithm, any_layout(src), any_layout(weights), any_layout(dst), strides, padding,
         padding},
        attr, engine, hint);
  };
  auto winograd = kernel(dnnl::algorithm::convolution_winograd, forward);
  if (winograd.scratchpad_desc().get_size() <= kWeightScratchBytes) return winograd;
  const dnnl::convolution_forward::primitive_desc direct_hint(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
       any_layout(src), any_layout(weights), any_layout(dst), strides, padding, padding},
      attr, engine);
  return kernel(dnnl::algorithm::convolution_direct, direct_hint);
}

Kernels make_kernels(const Geometry& g) {
  const memory::dims src = {g.batch, g.group_in(), g.height, g.width};
  const memory::dims dst = {g.batch, g.group_out(), g.height, g.width};
  const memory::dims weights = {g.group_out(), g.group_in(), 3, 3};
  const memory::dims strides = {1, 1}, padding = {1, 1};
  const auto algorithm = dnnl::algorithm::convolution_winograd;
  dnnl::engine& engine = cpu_engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward(
      {dnnl::prop_kind::forward_training, algorithm, any_layout(src), any_layout(weights),
       any_layout(dst), strides, padding, padding},
      attr, engine);
  dnnl::convolution_backward_data::primitive_desc backward_data(
      {algorithm, any_layout(src), any_layout(weights), any_layout(dst), strides, padding,
       padding},
      attr, engine, forward);
  dnnl::convolution_backward_weights::primitive_desc backward_weights =
      weight_gradient_kernel(src, weights, dst, attr, forward);
  return {forward,
          backward_data,
          backward_weights,
          dnnl::convolution_forward(forward),
          dnnl::convolution_backward_data(backward_data),
          dnnl::convolution_backward_weights(backward_weights)};
}

const Kernels& kernels_for(const Geometry& g) {
  static std::mutex lock;
  static std::map<decltype(g.key()), std::unique_ptr<Kernels>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& slot = cache[g.key()];
  if (!slot) slot.reset(new Kernels(make_kernels(g)));
  return *slot;
}

// Scratch arrays carved out of one allocation of MXNet's temporary space (the API hands out
// one buffer per call: a second alloc_cpu would return the same memory). MXNet reuses it
// across operators; a buffer of the library's own added its size to the peak instead.
class Scratch {
 public:
  Scratch(const OpResource& resource, const std::vector<memory::desc>& descs) {
    size_t total = 0;
    for (const auto& desc : descs) total += aligned(desc.get_size());
    char* base = static_cast<char*>(resource.alloc_cpu(static_cast<int>(total)));
    for (const auto& desc : descs) {
      arrays_.emplace_back(desc, cpu_engine(), base);
      base += aligned(desc.get_size());
    }
  }
  memory& operator[](size_t i) { return arrays_[i]; }

 private:
  static size_t aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }
  std::vector<memory> arrays_;
};

void copy(dnnl::stream& stream, memory& from, memory& to) {
  dnnl::reorder(from, to).execute(stream, from, to);
}

memory view(const memory::desc& desc, const float* data) {
  return memory(desc, cpu_engine(), const_cast<float*>(data));
}

MXReturnValue parse_attrs(const Attributes& attrs, int* num_inputs, int* num_outputs) {
  return resnest::two_inputs_positive_attr(kName, "groups", attrs, num_inputs, num_outputs);
}

MXReturnValue infer_type(const Attributes& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return resnest::float32_only(kName, "", in_types, out_types);
}

MXReturnValue infer_shape(const Attributes& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const int64_t groups = groups_of(attrs);
  const std::vector<unsigned int>& x = in_shapes->at(0);
  const std::vector<unsigned int>& weight = in_shapes->at(1);
  if (x.size() != 4 || weight.size() != 4 || weight[2] != 3 || weight[3] != 3 ||
      x[1] % groups != 0 || weight[0] % groups != 0 || weight[1] * groups != x[1]) {
    MX_ERROR_MSG << kName << ": x must be (N, C, H, W) and the weight (O, C / groups, 3, 3) "
                 << "with C and O divisible by groups";
    return mxnet::ext::MX_FAIL;
  }
  if (blocked_output(attrs) && (weight[0] / groups) % kBlock != 0) {
    MX_ERROR_MSG << kName << ": blocked_output=1 needs groups of a multiple of " << kBlock
                 << " output channels";
    return mxnet::ext::MX_FAIL;
  }
  out_shapes->at(0) = {x[0], weight[0], x[2], x[3]};
  return mxnet::ext::MX_SUCCESS;
}

// The batch runs in chunks of images whose Winograd buffers (the transformed tiles in the
// scratchpad, the blocked copies) stay near kChunkBytes: with the whole batch at once they
// took over 100 MB for ResNeSt-50's first stages at batch 16, and inference memory grew by
// as much (8 MB: no slower than 16 MB, 13 MB less at the peak; 4 MB was slower). Chunks of
// one size or one less (two geometries, two sets of primitives).
constexpr int64_t kChunkBytes = int64_t(8) << 20;

struct Chunks {
  int64_t count, size, total;   // chunks, images in the larger ones, images in all
  int64_t full() const { return total - count * (size - 1); }   // chunks of `size` images
  int64_t begin(int64_t i) const { return i * size - std::max<int64_t>(0, i - full()); }
  int64_t length(int64_t i) const { return i < full() ? size : size - 1; }
};

Chunks chunks_of(const Geometry& g) {
  // transformed 6x6 tiles per 4x4 outputs (36/16) and the blocked copy: about 3.25 floats
  // per input and output value of the group
  const int64_t per_image = (g.group_in() + g.group_out()) * g.height * g.width * 13;
  const int64_t fit = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, per_image));
  const int64_t count = (g.batch + fit - 1) / fit;
  return {count, (g.batch + count - 1) / count, g.batch};
}

Geometry with_batch(Geometry g, int64_t batch) {
  g.batch = batch;
  return g;
}

// dst += src (a reorder with a sum post-op): the weight gradients of later chunks.
void accumulate(dnnl::stream& stream, memory& from, memory& to) {
  dnnl::post_ops sum;
  sum.append_sum(1.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(sum);
  dnnl::reorder(dnnl::reorder::primitive_desc(from, to, attr)).execute(stream, from, to);
}

// Views of group `group`'s channel slice of images [first, first + part.batch) in a plain
// (N, C, H, W) array: an input-side one (C = in_channels) and an output-side one.
memory slice_of(const Geometry& g, const Geometry& part, int64_t first, int64_t group,
                int64_t group_channels, int64_t channels, const float* data) {
  const int64_t offset = (first * channels + group * group_channels) * g.height * g.width;
  return view(plain_slice(part, group_channels, channels), data + offset);
}

memory input_slice(const Geometry& g, const Geometry& part, int64_t first, int64_t group,
                   const float* data) {
  return slice_of(g, part, first, group, g.group_in(), g.in_channels, data);
}

// The output side's view: a slice of the plain array, or with `blocked` the chunk's part of
// the group-blocked array (contiguous, in the kernels' aBcd16b layout).
memory output_slice(const Geometry& g, const Geometry& part, int64_t first, int64_t group,
                    const float* data, bool blocked) {
  if (!blocked) return slice_of(g, part, first, group, g.group_out(), g.out_channels, data);
  const int64_t offset = (group * g.batch + first) * g.group_out() * g.height * g.width;
  return view(memory::desc({part.batch, g.group_out(), g.height, g.width},
                           memory::data_type::f32, memory::format_tag::aBcd16b),
              data + offset);
}

// An array of desc's layout over memory already allocated for a larger chunk.
memory within(const memory::desc& desc, const memory& allocated) {
  if (desc.get_size() > allocated.get_desc().get_size())
    throw std::runtime_error("a chunk's array outgrew the scratch space");
  return memory(desc, cpu_engine(), allocated.get_data_handle());
}

// `wanted`, where `slice` already has its layout (the group-blocked output), else an array of
// that layout over `space`.
memory in_place_or(const memory::desc& wanted, const memory& slice, const memory& space) {
  return slice.get_desc() == wanted ? slice : within(wanted, space);
}

// The larger of two descriptors (by size: arrays of either are laid over the space).
memory::desc larger(const memory::desc& a, const memory::desc& b) {
  return a.get_size() >= b.get_size() ? a : b;
}

// A chunk plan's kernels: those of its larger chunks and of its smaller ones (the same where
// all chunks are equal). Their layouts, scratchpads and even algorithm (the weight-gradient
// fallback) may differ, so the scratch space fits both and every array is laid out per chunk.
struct PlanKernels {
  const Kernels& big;
  const Kernels& small;
  // The larger of `part`'s descriptors in the two kernels.
  template <typename Part>
  memory::desc fit(Part part) const { return larger(part(big), part(small)); }
};

PlanKernels plan_kernels(const Geometry& g, const Chunks& chunks) {
  return {kernels_for(with_batch(g, chunks.size)),
          kernels_for(with_batch(g, chunks.length(chunks.count - 1)))};
}

// Whether chunk `chunk` runs other kernels than the one before it (the weights, in their
// kernel's layout, are copied again then).
bool new_kernels(const Chunks& chunks, int64_t chunk) {
  return chunk == 0 || chunks.length(chunk) != chunks.length(chunk - 1);
}

using Forward = dnnl::convolution_forward::primitive_desc;
using BackwardData = dnnl::convolution_backward_data::primitive_desc;
using BackwardWeights = dnnl::convolution_backward_weights::primitive_desc;

// inputs: x, weight; outputs: y
MXReturnValue run_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Geometry g = geometry_of(inputs->at(0), inputs->at(1), groups_of(attrs));
  const Chunks chunks = chunks_of(g);
  const PlanKernels plan = plan_kernels(g, chunks);
  dnnl::stream stream(cpu_engine());
  Scratch scratch(resource, {plan.fit([](const Kernels& k) { return k.forward_pd.src_desc(); }),
                             plan.fit([](const Kernels& k) { return k.forward_pd.weights_desc(); }),
                             plan.fit([](const Kernels& k) { return k.forward_pd.dst_desc(); }),
                             plan.fit([](const Kernels& k) {
                               return k.forward_pd.scratchpad_desc(); })});
  const float* x = inputs->at(0).data<float>();
  const float* weight = inputs->at(1).data<float>();
  float* y = outputs->at(0).data<float>();
  const bool blocked = blocked_output(attrs);
  for (int64_t group = 0; group < g.groups; ++group) {
    memory w_slice = view(group_weights(g), weight + group * g.group_out() * g.group_in() * 9);
    for (int64_t chunk = 0; chunk < chunks.count; ++chunk) {
      const Geometry part = with_batch(g, chunks.length(chunk));
      const Kernels& kernels = kernels_for(part);
      const Forward& pd = kernels.forward_pd;
      const int64_t first = chunks.begin(chunk);
      memory x_slice = input_slice(g, part, first, group, x);
      memory y_slice = output_slice(g, part, first, group, y, blocked);
      memory src = within(pd.src_desc(), scratch[0]);
      memory weights = within(pd.weights_desc(), scratch[1]);
      memory dst = in_place_or(pd.dst_desc(), y_slice, scratch[2]);
      if (new_kernels(chunks, chunk)) copy(stream, w_slice, weights);
      copy(stream, x_slice, src);
      kernels.forward.execute(stream, {{DNNL_ARG_SRC, src},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DST, dst},
                                       {DNNL_ARG_SCRATCHPAD, within(pd.scratchpad_desc(),
                                                                    scratch[3])}});
      if (dst != y_slice) copy(stream, dst, y_slice);
    }
  }
  stream.wait();
  return mxnet::ext::MX_SUCCESS;
}

// The scratch arrays of the backward pass, for every chunk of the plan.
std::vector<memory::desc> backward_scratch(const PlanKernels& plan) {
  return {plan.fit([](const Kernels& k) { return k.backward_data_pd.diff_dst_desc(); }),
          plan.fit([](const Kernels& k) { return k.backward_data_pd.weights_desc(); }),
          plan.fit([](const Kernels& k) { return k.backward_data_pd.diff_src_desc(); }),
          plan.fit([](const Kernels& k) { return k.backward_weights_pd.src_desc(); }),
          plan.fit([](const Kernels& k) { return k.backward_weights_pd.diff_dst_desc(); }),
          plan.fit([](const Kernels& k) { return k.backward_weights_pd.diff_weights_desc(); }),
          // the two passes run one after the other: one scratchpad serves both
          plan.fit([](const Kernels& k) {
            return larger(k.backward_data_pd.scratchpad_desc(),
                          k.backward_weights_pd.scratchpad_desc()); })};
}

// inputs: dy, x, weight, y (output gradients, inputs, outputs); outputs: dx, dweight
MXReturnValue run_backward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                           std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Geometry g = geometry_of(inputs->at(1), inputs->at(2), groups_of(attrs));
  const Chunks chunks = chunks_of(g);
  dnnl::stream stream(cpu_engine());
  Scratch scratch(resource, backward_scratch(plan_kernels(g, chunks)));
  const float* dy = inputs->at(0).data<float>();
  const float* x = inputs->at(1).data<float>();
  const float* weight = inputs->at(2).data<float>();
  float* dx = outputs->at(0).data<float>();
  float* dweight = outputs->at(1).data<float>();
  const bool blocked = blocked_output(attrs);
  for (int64_t group = 0; group < g.groups; ++group) {
    const int64_t weight_offset = group * g.group_out() * g.group_in() * 9;
    memory w_slice = view(group_weights(g), weight + weight_offset);
    memory dw_slice = view(group_weights(g), dweight + weight_offset);
    for (int64_t chunk = 0; chunk < chunks.count; ++chunk) {
      const Geometry part = with_batch(g, chunks.length(chunk));
      const Kernels& k = kernels_for(part);
      const int64_t first = chunks.begin(chunk);
      memory dy_slice = output_slice(g, part, first, group, dy, blocked);
      memory x_slice = input_slice(g, part, first, group, x);
      memory dx_slice = input_slice(g, part, first, group, dx);
      const BackwardData& dpd = k.backward_data_pd;
      const BackwardWeights& wpd = k.backward_weights_pd;
      memory diff_dst = in_place_or(dpd.diff_dst_desc(), dy_slice, scratch[0]);
      memory weights = within(dpd.weights_desc(), scratch[1]);
      memory diff_src = within(dpd.diff_src_desc(), scratch[2]);
      memory src = within(wpd.src_desc(), scratch[3]);
      memory weights_diff_dst = in_place_or(wpd.diff_dst_desc(), dy_slice, scratch[4]);
      memory diff_weights = within(wpd.diff_weights_desc(), scratch[5]);
      const memory::desc pad = larger(dpd.scratchpad_desc(), wpd.scratchpad_desc());
      memory scratchpad = within(pad, scratch[6]);
      const bool same_diff_dst = dpd.diff_dst_desc() == wpd.diff_dst_desc();
      if (new_kernels(chunks, chunk)) copy(stream, w_slice, weights);
      if (diff_dst != dy_slice) copy(stream, dy_slice, diff_dst);
      k.backward_data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DIFF_SRC, diff_src},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      copy(stream, diff_src, dx_slice);
      copy(stream, x_slice, src);
      if (!same_diff_dst && weights_diff_dst != dy_slice) copy(stream, dy_slice, weights_diff_dst);
      k.backward_weights.execute(stream,
                                 {{DNNL_ARG_SRC, src},
                                  {DNNL_ARG_DIFF_DST, same_diff_dst ? diff_dst : weights_diff_dst},
                                  {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                  {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (chunk == 0) {
        copy(stream, diff_weights, dw_slice);
      } else {
        accumulate(stream, diff_weights, dw_slice);
      }
    }
  }
  stream.wait();
  return mxnet::ext::MX_SUCCESS;
}

// oneDNN reports what it cannot do (no kernel for this CPU, out of memory) by exceptions,
// which must not cross into MXNet.
template <typename Body>
MXReturnValue guarded(Body body, const Attributes& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& resource) {
  try {
    return body(attrs, inputs, outputs, resource);
  } catch (const dnnl::error& err) {
    MX_ERROR_MSG << kName << ": oneDNN: " << err.what();
  } catch (const std::exception& err) {
    MX_ERROR_MSG << kName << ": " << err.what();
  }
  return mxnet::ext::MX_FAIL;
}

MXReturnValue forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& resource) {
  return guarded(run_forward, attrs, inputs, outputs, resource);
}

MXReturnValue backward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& resource) {
  return guarded(run_backward, attrs, inputs, outputs, resource);
}

}  // namespace

// Whether oneDNN has Winograd kernels on this CPU (1) or not (0): Python asks before it
// picks the operator.
extern "C" int resnest_winograd_supported() {
  try {
    make_kernels({1, 16, 16, 8, 8, 1});
    return 1;
  } catch (...) {
    return 0;
  }
}

REGISTER_OP(resnest_conv3x3)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10700) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << kName << " needs MXNet 1.7 or newer (found " << version << ")";
  return mxnet::ext::MX_FAIL;
}
