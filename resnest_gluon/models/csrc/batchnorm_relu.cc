// resnest_batchnorm_relu: BatchNorm followed by ReLU over a plain (N, C, H, W) float32 array, as
// one MXNet operator (MXNet's extension API, include/mxnet/lib_api.h of the installed wheel).
//
// Why: the Winograd convolution (winograd_conv.cc) hands MXNet its output in the plain layout
// (the extension API knows no other), and MXNet's oneDNN BatchNorm on a plain array runs
// oneDNN's reference kernel for that layout (`ncsp_bnorm`): about 15x slower than on a blocked
// array in the forward pass of training, 3x in inference (docs/benchmarks.md). Here each channel
// is a set of contiguous planes, read once for the statistics and once for the output, with the
// ReLU in the same pass.
//
// Inputs: x, gamma, beta, moving_mean, moving_var, train (one value: 1 in training, 0 in
// inference; the extension API tells an operator nothing of the mode, so the graph computes it
// with a Dropout). Outputs: y; the mean and variance that normalised x (the batch's in
// training, else the moving ones), which the backward pass reads; and y's spatial means per
// image and channel, (N, C): split attention's context, here for free since y passes through
// the registers anyway (a global pooling of y, forward and backward, cost 50 ms of a ResNeSt-50
// training step at batch 16). The forward pass of training updates the moving statistics in
// place (momentum, biased batch variance, as MXNet's BatchNorm): in the forward pass, where
// MXNet's engine knows of the write (the operator declares them mutable), as MXNet's cuDNN
// BatchNorm and PyTorch's do. MXNet's CPU BatchNorm updates them in its backward pass, but
// the extension API cannot declare a backward pass's writes: an update there raced with reads
// of the statistics (a copy taken after the step could miss it).
// Attributes: eps, momentum, use_global_stats (0/1: normalise with the moving statistics in
// training too, and leave them alone).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"
#include "op_common.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using resnest::Attributes;

namespace {

const char* kName = "resnest_batchnorm_relu";
constexpr int kLanes = 16;   // independent partial sums: the compiler vectorises them

// The loops over one plane are compiled on their own: inlined into the OpenMP regions, GCC left
// some of them scalar.
#define PLANE_LOOP __attribute__((noinline))

enum Input { kX, kGamma, kBeta, kMovingMean, kMovingVar, kTrain, kInputs };
enum Output { kY, kMean, kVar, kPooled, kOutputs };

struct Settings {
  double eps, momentum;
  bool global_stats;
};

double real_attr(const Attributes& attrs, const char* key, double fallback) {
  auto found = attrs.find(key);
  if (found == attrs.end()) return fallback;
  try {
    return std::stod(found->second);
  } catch (...) {
    return std::nan("");
  }
}

Settings settings_of(const Attributes& attrs) {
  return {real_attr(attrs, "eps", 1e-5), real_attr(attrs, "momentum", 0.9),
          resnest::integer_attr(attrs, "use_global_stats") != 0};
}

// A (N, C, H, W) array: channel c of image n is the plane at (n * C + c) * plane.
struct Planes {
  int64_t images, channels, plane;
  int64_t offset(int64_t n, int64_t c) const { return (n * channels + c) * plane; }
  double count() const { return static_cast<double>(images * plane); }
};

Planes planes_of(const MXTensor& x) {
  return {x.shape[0], x.shape[1], x.shape[2] * x.shape[3]};
}

// sum(x - shift) and sum((x - shift)^2) over one plane, in kLanes float partial sums.
PLANE_LOOP void shifted_sums(const float* x, int64_t size, float shift, double* sum,
                             double* squares) {
  float lane_sum[kLanes] = {0}, lane_squares[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float d = x[i + k] - shift;
      lane_sum[k] += d;
      lane_squares[k] += d * d;
    }
  }
  double s = 0, q = 0;
  for (; i < size; ++i) {
    const double d = x[i] - shift;
    s += d;
    q += d * d;
  }
  for (int k = 0; k < kLanes; ++k) {
    s += lane_sum[k];
    q += lane_squares[k];
  }
  *sum += s;
  *squares += q;
}

// The batch mean and biased variance of channel c. Sums run shifted by one of the channel's
// values, so a mean far from zero costs no precision in the variance.
void batch_statistics(const float* x, const Planes& p, int64_t c, double* mean, double* var) {
  const float shift = x[p.offset(0, c)];
  double sum = 0, squares = 0;
  for (int64_t n = 0; n < p.images; ++n)
    shifted_sums(x + p.offset(n, c), p.plane, shift, &sum, &squares);
  const double shifted_mean = sum / p.count();
  *mean = shift + shifted_mean;
  *var = std::max(0.0, squares / p.count() - shifted_mean * shifted_mean);
}

// y = max(0, x * scale + bias) over one plane; returns the sum of y.
PLANE_LOOP double scale_bias_relu(const float* __restrict x, int64_t size, float scale,
                                  float bias, float* __restrict y) {
  float lane_sum[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float out = std::max(0.f, x[i + k] * scale + bias);
      y[i + k] = out;
      lane_sum[k] += out;
    }
  }
  double sum = 0;
  for (; i < size; ++i) {
    y[i] = std::max(0.f, x[i] * scale + bias);
    sum += y[i];
  }
  for (int k = 0; k < kLanes; ++k) sum += lane_sum[k];
  return sum;
}

bool batch_statistics_used(const Settings& settings, MXTensor& train) {
  return train.data<float>()[0] != 0.f && !settings.global_stats;
}

// 1 / sqrt(var + eps) per channel.
std::vector<float> inverse_stds(const float* var, int64_t channels, const Settings& settings) {
  std::vector<float> invstd(channels);
  for (int64_t c = 0; c < channels; ++c)
    invstd[c] = static_cast<float>(1.0 / std::sqrt(var[c] + settings.eps));
  return invstd;
}

// moving = moving * momentum + batch * (1 - momentum), per channel
void update_moving(float* moving, const float* batch, int64_t channels, double momentum) {
  for (int64_t c = 0; c < channels; ++c)
    moving[c] = static_cast<float>(moving[c] * momentum + batch[c] * (1 - momentum));
}

// inputs: x, gamma, beta, moving_mean, moving_var, train; outputs: y, mean, var, pooled
MXReturnValue forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Settings settings = settings_of(attrs);
  const Planes p = planes_of(inputs->at(kX));
  const float* x = inputs->at(kX).data<float>();
  const float* gamma = inputs->at(kGamma).data<float>();
  const float* beta = inputs->at(kBeta).data<float>();
  float* moving_mean = inputs->at(kMovingMean).data<float>();
  float* moving_var = inputs->at(kMovingVar).data<float>();
  const bool batch_stats = batch_statistics_used(settings, inputs->at(kTrain));
  float* y = outputs->at(kY).data<float>();
  float* mean = outputs->at(kMean).data<float>();
  float* var = outputs->at(kVar).data<float>();
  float* pooled = outputs->at(kPooled).data<float>();
  const int64_t channels = p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < channels; ++c) {
    double m = moving_mean[c], v = moving_var[c];
    if (batch_stats) batch_statistics(x, p, c, &m, &v);
    mean[c] = static_cast<float>(m);
    var[c] = static_cast<float>(v);
  }
  if (batch_stats) {
    update_moving(moving_mean, mean, channels, settings.momentum);
    update_moving(moving_var, var, channels, settings.momentum);
  }
  const std::vector<float> invstd = inverse_stds(var, channels, settings);
  const int64_t planes = p.images * p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    const int64_t c = i % p.channels;
    const float scale = gamma[c] * invstd[c];
    const double sum = scale_bias_relu(x + i * p.plane, p.plane, scale, beta[c] - mean[c] * scale,
                                       y + i * p.plane);
    pooled[i] = static_cast<float>(sum / p.plane);
  }
  return mxnet::ext::MX_SUCCESS;
}

// dy where the ReLU passed its input (y > 0), else 0. Callers load both values first, their
// arrays are __restrict and the library is built with -fno-trapping-math: the loops then
// compile to vector selects, not to a branch on the sign of every element (mispredicted half
// the time, it made the backward pass 7x slower).
inline float relu_gradient(float dy, float y) { return y > 0.f ? dy : 0.f; }

// sum(g) and sum(g * (x - mean)) over one plane, g = dy + spread where y > 0 (the ReLU's
// gradient; spread is the pooled output's gradient over the plane's size).
PLANE_LOOP void gradient_sums(const float* __restrict dy, float spread, const float* __restrict y,
                              const float* __restrict x, int64_t size, float mean, double* sum,
                              double* centred) {
  float lane_sum[kLanes] = {0}, lane_centred[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float d = dy[i + k] + spread, out = y[i + k];
      const float g = relu_gradient(d, out);
      lane_sum[k] += g;
      lane_centred[k] += g * (x[i + k] - mean);
    }
  }
  double s = 0, q = 0;
  for (; i < size; ++i) {
    const double g = relu_gradient(dy[i] + spread, y[i]);
    s += g;
    q += g * (x[i] - mean);
  }
  for (int k = 0; k < kLanes; ++k) {
    s += lane_sum[k];
    q += lane_centred[k];
  }
  *sum += s;
  *centred += q;
}

// dx = g * scale + (x - mean) * slope + offset over one plane (g as in gradient_sums).
PLANE_LOOP void input_gradient(const float* __restrict dy, float spread,
                               const float* __restrict y, const float* __restrict x, int64_t size,
                               float mean, float scale, float slope, float offset,
                               float* __restrict dx) {
  for (int64_t i = 0; i < size; ++i) {
    const float d = dy[i] + spread, out = y[i];
    const float g = relu_gradient(d, out);
    dx[i] = g * scale + (x[i] - mean) * slope + offset;
  }
}

// inputs: dy, dmean, dvar, dpooled, x, gamma, beta, moving_mean, moving_var, train, y, mean,
// var, pooled (output gradients, inputs, outputs); outputs: the gradients of the six inputs
MXReturnValue backward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Settings settings = settings_of(attrs);
  const int in = kOutputs, out = kOutputs + kInputs;   // where inputs and outputs start
  const Planes p = planes_of(inputs->at(in + kX));
  const float* dy = inputs->at(kY).data<float>();
  const float* dpooled = inputs->at(kPooled).data<float>();
  const float* x = inputs->at(in + kX).data<float>();
  const float* gamma = inputs->at(in + kGamma).data<float>();
  const bool batch_stats = batch_statistics_used(settings, inputs->at(in + kTrain));
  const float* y = inputs->at(out + kY).data<float>();
  const float* mean = inputs->at(out + kMean).data<float>();
  const float* var = inputs->at(out + kVar).data<float>();
  const std::vector<float> invstd = inverse_stds(var, p.channels, settings);
  float* dx = outputs->at(kX).data<float>();
  float* dgamma = outputs->at(kGamma).data<float>();
  float* dbeta = outputs->at(kBeta).data<float>();
  const int64_t channels = p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0, centred = 0;
    for (int64_t n = 0; n < p.images; ++n) {
      const int64_t at = p.offset(n, c);
      const float spread = dpooled[n * p.channels + c] / p.plane;
      gradient_sums(dy + at, spread, y + at, x + at, p.plane, mean[c], &sum, &centred);
    }
    dbeta[c] = static_cast<float>(sum);
    dgamma[c] = static_cast<float>(centred * invstd[c]);
  }
  const int64_t planes = p.images * p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    const int64_t c = i % p.channels;
    const float scale = gamma[c] * invstd[c];
    // with batch statistics, the mean and variance depend on x too:
    // dx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd
    float slope = 0.f, offset = 0.f;
    if (batch_stats) {
      slope = static_cast<float>(-scale * dgamma[c] * invstd[c] / p.count());
      offset = static_cast<float>(-scale * dbeta[c] / p.count());
    }
    const int64_t at = i * p.plane;
    input_gradient(dy + at, dpooled[i] / p.plane, y + at, x + at, p.plane, mean[c], scale, slope,
                   offset, dx + at);
  }
  // the moving statistics and the mode take no gradient
  for (int i : {kMovingMean, kMovingVar, kTrain}) {
    MXTensor& grad = outputs->at(i);
    std::fill(grad.data<float>(), grad.data<float>() + grad.size(), 0.f);
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue parse_attrs(const Attributes& attrs, int* num_inputs, int* num_outputs) {
  const Settings settings = settings_of(attrs);
  if (!(settings.eps > 0) || !(settings.momentum >= 0 && settings.momentum <= 1)) {
    MX_ERROR_MSG << kName << ": eps must be > 0 and momentum in [0, 1]";
    return mxnet::ext::MX_FAIL;
  }
  *num_inputs = kInputs;
  *num_outputs = kOutputs;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_type(const Attributes& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  MXReturnValue status = resnest::float32_only(kName, "", in_types, out_types);
  for (int& type : *out_types) type = mxnet::ext::kFloat32;
  return status;
}

MXReturnValue infer_shape(const Attributes& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int> x = in_shapes->at(kX);
  bool valid = x.size() == 4 && in_shapes->at(kTrain) == std::vector<unsigned int>{1};
  for (int i : {kGamma, kBeta, kMovingMean, kMovingVar}) {
    std::vector<unsigned int>& shape = in_shapes->at(i);
    if (valid && shape.empty()) shape = {x[1]};   // not known yet: the channels of x
    valid = valid && shape == std::vector<unsigned int>{x[1]};
  }
  if (!valid) {
    MX_ERROR_MSG << kName << ": x must be (N, C, H, W), gamma, beta and the moving statistics "
                 << "(C,) and train (1,)";
    return mxnet::ext::MX_FAIL;
  }
  out_shapes->at(kY) = x;
  out_shapes->at(kMean) = {x[1]};
  out_shapes->at(kVar) = {x[1]};
  out_shapes->at(kPooled) = {x[0], x[1]};
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue mutate_inputs(const Attributes& attrs, std::vector<int>* input_indices) {
  input_indices->push_back(kMovingMean);
  input_indices->push_back(kMovingVar);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(resnest_batchnorm_relu)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setMutateInputs(mutate_inputs)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");
