// resnest_radix_sum: split attention's weighted sum over the radix splits, as one MXNet
// operator (MXNet's extension API, include/mxnet/lib_api.h of the installed wheel).
//
//   y[n, c, s] = sum_r att[n, r*C + c] * x[n, r*C + c, s]      x: (N, R*C, ...)  y: (N, C, ...)
//
// With MXNet's own operators the same sum takes a batched product (x read and R*C planes
// written), a split (copied again) and an add_n; here x is read once and y written once. The
// backward pass is one more sweep: dx = att * dy and datt = sum_s x * dy.
//
// Inputs must already be in MXNet's plain layout (the Python side reshapes x first): the
// extension API converts oneDNN-layout inputs into unplanned temporary arrays, which in
// training cost more than the fusion saves. float32 only; other dtypes use the Python
// formulation.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "op_common.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using resnest::Attributes;

namespace {

int64_t radix_of(const Attributes& attrs) { return resnest::integer_attr(attrs, "radix"); }

// Rows of x per sample (R*C), channels of y (C) and the length of one row (H*W).
struct Geometry {
  int64_t samples, channels, radix, row;
};

Geometry geometry_of(const MXTensor& x, int64_t radix) {
  int64_t row = 1;
  for (size_t d = 2; d < x.shape.size(); ++d) row *= x.shape[d];
  return {x.shape[0], x.shape[1] / radix, radix, row};
}

const char* kName = "resnest_radix_sum";

MXReturnValue parse_attrs(const Attributes& attrs, int* num_inputs, int* num_outputs) {
  return resnest::two_inputs_positive_attr(kName, "radix", attrs, num_inputs, num_outputs);
}

MXReturnValue infer_type(const Attributes& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return resnest::float32_only(kName, "; use attention_product=batch_dot for other dtypes",
                               in_types, out_types);
}

MXReturnValue infer_shape(const Attributes& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const int64_t radix = radix_of(attrs);
  const std::vector<unsigned int>& x = in_shapes->at(0);
  if (x.size() < 2 || x[1] % radix != 0) {
    MX_ERROR_MSG << "resnest_radix_sum: x must be (N, radix * C, ...)";
    return mxnet::ext::MX_FAIL;
  }
  uint64_t weights = 1;
  for (unsigned int d : in_shapes->at(1)) weights *= d;
  if (weights != static_cast<uint64_t>(x[0]) * x[1]) {
    MX_ERROR_MSG << "resnest_radix_sum: att must hold one weight per row of x (N * radix * C)";
    return mxnet::ext::MX_FAIL;
  }
  out_shapes->at(0) = x;
  out_shapes->at(0)[1] = x[1] / radix;
  return mxnet::ext::MX_SUCCESS;
}

// inputs: x, att; outputs: y
MXReturnValue forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Geometry g = geometry_of(inputs->at(0), radix_of(attrs));
  const float* x = inputs->at(0).data<float>();
  const float* att = inputs->at(1).data<float>();
  float* y = outputs->at(0).data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.samples; ++n) {
    for (int64_t c = 0; c < g.channels; ++c) {
      float* out = y + (n * g.channels + c) * g.row;
      for (int64_t r = 0; r < g.radix; ++r) {
        const int64_t row = (n * g.radix + r) * g.channels + c;
        const float weight = att[row];
        const float* in = x + row * g.row;
        if (r == 0) {
          for (int64_t s = 0; s < g.row; ++s) out[s] = weight * in[s];
        } else {
          for (int64_t s = 0; s < g.row; ++s) out[s] += weight * in[s];
        }
      }
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

// inputs: dy, x, att, y (the API passes output gradients, inputs, outputs); outputs: dx, datt
MXReturnValue backward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Geometry g = geometry_of(inputs->at(1), radix_of(attrs));
  const float* dy = inputs->at(0).data<float>();
  const float* x = inputs->at(1).data<float>();
  const float* att = inputs->at(2).data<float>();
  float* dx = outputs->at(0).data<float>();
  float* datt = outputs->at(1).data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.samples; ++n) {
    for (int64_t rc = 0; rc < g.radix * g.channels; ++rc) {
      const int64_t row = n * g.radix * g.channels + rc;
      const float weight = att[row];
      const float* grad = dy + (n * g.channels + rc % g.channels) * g.row;
      const float* in = x + row * g.row;
      float* grad_in = dx + row * g.row;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t s = 0; s < g.row; ++s) {
        grad_in[s] = weight * grad[s];
        dot += in[s] * grad[s];
      }
      datt[row] = dot;
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(resnest_radix_sum)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10700) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "resnest_radix_sum needs MXNet 1.7 or newer (found " << version << ")";
  return mxnet::ext::MX_FAIL;
}
