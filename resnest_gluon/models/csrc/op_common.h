// What the project's MXNet operators share: reading an integer attribute and the float32-only
// type rule (MXNet's extension API, include/mxnet/lib_api.h of the installed wheel).
//
// Included by radix_sum.cc, batchnorm_relu.cc and winograd_conv.cc;
// resnest_gluon/models/extension.py lists it among each library's headers, so a change here
// rebuilds them all.
#ifndef RESNEST_GLUON_OP_COMMON_H_
#define RESNEST_GLUON_OP_COMMON_H_

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace resnest {

using Attributes = std::unordered_map<std::string, std::string>;

// The integer attribute `key`, or 0 when it is missing or not an integer.
inline int64_t integer_attr(const Attributes& attrs, const char* key) {
  auto found = attrs.find(key);
  if (found == attrs.end()) return 0;
  try {
    return std::stoll(found->second);
  } catch (...) {
    return 0;
  }
}

// parse_attrs of an operator with two inputs, one output and a positive attribute `key`.
inline mxnet::ext::MXReturnValue two_inputs_positive_attr(const char* op, const char* key,
                                                          const Attributes& attrs,
                                                          int* num_inputs, int* num_outputs) {
  if (integer_attr(attrs, key) < 1) {
    MX_ERROR_MSG << op << ": " << key << " must be an integer >= 1";
    return mxnet::ext::MX_FAIL;
  }
  *num_inputs = 2;
  *num_outputs = 1;
  return mxnet::ext::MX_SUCCESS;
}

// infer_type of a float32-only operator with one output; `hint` ends the error message.
inline mxnet::ext::MXReturnValue float32_only(const char* op, const char* hint,
                                              std::vector<int>* in_types,
                                              std::vector<int>* out_types) {
  // -1: not known yet (a partial type pass); the inputs are then float32 like the output
  for (int& type : *in_types) {
    if (type == -1) type = mxnet::ext::kFloat32;
    if (type != mxnet::ext::kFloat32) {
      MX_ERROR_MSG << op << ": float32 inputs only (got dtype code " << type << ")" << hint;
      return mxnet::ext::MX_FAIL;
    }
  }
  out_types->at(0) = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace resnest

#endif  // RESNEST_GLUON_OP_COMMON_H_
