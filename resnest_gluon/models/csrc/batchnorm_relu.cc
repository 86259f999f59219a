// resnest_batchnorm_relu: BatchNorm followed by ReLU over a plain (N, C, H, W) float32 array, as
// one MXNet operator (MXNet's extension API, include/mxnet/lib_api.h of the installed wheel).
//
// Why: the Winograd convolution (winograd_conv.cc) hands MXNet its output in the plain layout
// (the extension API knows no other; or in its kernels' layout, for this operator only, see
// blocked_groups below), and MXNet's oneDNN BatchNorm on a plain array runs
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
// training too, and leave them alone), blocked_groups (G > 0: x, and so its gradient, is in the
// group-blocked layout of the Winograd convolution's output with G groups, winograd_conv.cc;
// y and the other outputs stay plain. Reading the kernels' layout here spares that operator
// its copy back to the plain layout; the copy becomes a 16 x 16 transposition in registers in
// the pass that writes y. AVX-512 code: the layout exists only where those kernels run).
#include <immintrin.h>

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
  int64_t blocked_groups;   // 0: x is plain
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
          resnest::integer_attr(attrs, "use_global_stats") != 0,
          resnest::integer_attr(attrs, "blocked_groups")};
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


// ---- The group-blocked layout (x from the Winograd convolution with blocked_output=1) ----

// Channel blocks of kBlock: tile (n, B) holds channels 16 B .. 16 B + 15 of image n, plane
// position after plane position (16 values each). B's group g = 16 B / Cg starts its tiles at
// g * N * Cg * S; image n's tiles follow each other within it.
constexpr int64_t kBlock = 16;

struct Tiles {
  Planes p;
  int64_t groups;
  int64_t blocks() const { return p.channels / kBlock; }
  int64_t count() const { return p.images * blocks(); }
  // offset of tile i = n * blocks() + B
  int64_t offset(int64_t i) const {
    const int64_t n = i / blocks(), block = i % blocks();
    const int64_t group_channels = p.channels / groups, per_group = group_channels / kBlock;
    const int64_t g = block / per_group, b = block % per_group;
    return ((g * p.images + n) * group_channels + b * kBlock) * p.plane;
  }
  // offset of the plain plane of tile i's first channel (y, dy: (N, C, S))
  int64_t plain(int64_t i) const { return i * kBlock * p.plane; }
  int64_t first_channel(int64_t i) const { return (i % blocks()) * kBlock; }
};

#define AVX512 __attribute__((target("avx512f")))
#define TILE_LOOP __attribute__((noinline, target("avx512f")))

// Transposes the 16 x 16 floats of r[0..15] (rows) in place: r[c][i] = old r[i][c].
AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {    // pairs of rows interleaved per 128-bit lane
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 s[16];   // s[4 q + m], lane k: column 4 k + m of rows 4 q .. 4 q + 3
  for (int q = 0; q < 4; ++q) {
    const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * q + 1]), d = _mm512_castps_pd(t[4 * q + 3]);
    s[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    s[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    s[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    s[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int m = 0; m < 4; ++m) {    // 4 x 4 transposition of 128-bit lanes
    const __m512 b0 = _mm512_shuffle_f32x4(s[m], s[4 + m], 0x44);
    const __m512 b1 = _mm512_shuffle_f32x4(s[m], s[4 + m], 0xEE);
    const __m512 b2 = _mm512_shuffle_f32x4(s[8 + m], s[12 + m], 0x44);
    const __m512 b3 = _mm512_shuffle_f32x4(s[8 + m], s[12 + m], 0xEE);
    r[m] = _mm512_shuffle_f32x4(b0, b2, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(b0, b2, 0xDD);
    r[8 + m] = _mm512_shuffle_f32x4(b1, b3, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(b1, b3, 0xDD);
  }
}

// Loads positions s0 .. s0 + 15 of 16 plain planes `size` apart, position-major: r[j] holds
// the 16 channels' values at s0 + j.
AVX512 inline void load_transposed(const float* planes, int64_t size, int64_t s0, __m512 r[16]) {
  for (int l = 0; l < kBlock; ++l) r[l] = _mm512_loadu_ps(planes + l * size + s0);
  transpose16(r);
}

// Float partial sums are flushed into doubles every kFlush positions.
constexpr int64_t kFlush = 256;

AVX512 inline void flush(__m512* partial, double* total) {
  alignas(64) float lanes[kBlock];
  _mm512_store_ps(lanes, *partial);
  for (int l = 0; l < kBlock; ++l) total[l] += lanes[l];
  *partial = _mm512_setzero_ps();
}

// sum(x - shift) and sum((x - shift)^2) per channel over one tile (16 channels).
TILE_LOOP void tile_shifted_sums(const float* x, int64_t size, const float* shift, double* sum,
                                 double* squares) {
  const __m512 s = _mm512_loadu_ps(shift);
  __m512 acc = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps();
  for (int64_t i = 0; i < size; ++i) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i * kBlock), s);
    acc = _mm512_add_ps(acc, d);
    acc2 = _mm512_fmadd_ps(d, d, acc2);
    if ((i + 1) % kFlush == 0) {
      flush(&acc, sum);
      flush(&acc2, squares);
    }
  }
  flush(&acc, sum);
  flush(&acc2, squares);
}

// The batch means and biased variances of all channels (as batch_statistics, per tile).
void tiled_batch_statistics(const float* x, const Tiles& t, double* mean, double* var) {
  const int64_t channels = t.p.channels;
  std::vector<float> shift(channels);
  for (int64_t i = 0; i < t.blocks(); ++i)      // image 0's first value of every channel
    std::copy(x + t.offset(i), x + t.offset(i) + kBlock, shift.begin() + i * kBlock);
  std::vector<double> sums(2 * t.count() * kBlock, 0.0);   // per tile: 16 sums, 16 squares
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t.count(); ++i)
    tile_shifted_sums(x + t.offset(i), t.p.plane, shift.data() + t.first_channel(i),
                      &sums[2 * i * kBlock], &sums[(2 * i + 1) * kBlock]);
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0, squares = 0;
    const int64_t block = c / kBlock, lane = c % kBlock;
    for (int64_t n = 0; n < t.p.images; ++n) {
      const int64_t i = n * t.blocks() + block;
      sum += sums[2 * i * kBlock + lane];
      squares += sums[(2 * i + 1) * kBlock + lane];
    }
    const double shifted_mean = sum / t.p.count();
    mean[c] = shift[c] + shifted_mean;
    var[c] = std::max(0.0, squares / t.p.count() - shifted_mean * shifted_mean);
  }
}

// y = max(0, x * scale + bias) from one tile into its 16 plain planes; pooled = their means.
TILE_LOOP void tile_scale_bias_relu(const float* x, int64_t size, const float* scale,
                                    const float* bias, float* y, float* pooled) {
  const __m512 a = _mm512_loadu_ps(scale), b = _mm512_loadu_ps(bias), zero = _mm512_setzero_ps();
  double total[kBlock] = {0};
  __m512 acc = zero;
  int64_t s0 = 0;
  for (; s0 + kBlock <= size; s0 += kBlock) {
    __m512 r[kBlock];
    for (int j = 0; j < kBlock; ++j) {
      r[j] = _mm512_max_ps(zero, _mm512_fmadd_ps(_mm512_loadu_ps(x + (s0 + j) * kBlock), a, b));
      acc = _mm512_add_ps(acc, r[j]);
    }
    if ((s0 / kBlock + 1) % (kFlush / kBlock) == 0) flush(&acc, total);
    transpose16(r);
    for (int l = 0; l < kBlock; ++l) _mm512_storeu_ps(y + l * size + s0, r[l]);
  }
  flush(&acc, total);
  for (int64_t s = s0; s < size; ++s) {
    for (int l = 0; l < kBlock; ++l) {
      const float out = std::max(0.f, x[s * kBlock + l] * scale[l] + bias[l]);
      y[l * size + s] = out;
      total[l] += out;
    }
  }
  for (int l = 0; l < kBlock; ++l) pooled[l] = static_cast<float>(total[l] / size);
}

// The ReLU's gradient of 16 positions, position-major: dy + spread where y > 0.
AVX512 inline __m512 relu_gradient16(__m512 dy, __m512 spread, __m512 y) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ),
                             _mm512_add_ps(dy, spread));
}

// gradient_sums over one tile: dy and y are its 16 plain planes, x the tile. Also writes g, in
// the tile's layout, to dx (tile_input_gradient finishes it there without transposing again).
TILE_LOOP void tile_gradient_sums(const float* dy, const float* y, const float* x, int64_t size,
                                  const float* spread, const float* mean, double* sum,
                                  double* centred, float* dx) {
  const __m512 sp = _mm512_loadu_ps(spread), m = _mm512_loadu_ps(mean);
  __m512 acc = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps();
  int64_t s0 = 0;
  for (; s0 + kBlock <= size; s0 += kBlock) {
    __m512 d[kBlock], out[kBlock];
    load_transposed(dy, size, s0, d);
    load_transposed(y, size, s0, out);
    for (int j = 0; j < kBlock; ++j) {
      const int64_t at = (s0 + j) * kBlock;
      const __m512 g = relu_gradient16(d[j], sp, out[j]);
      _mm512_storeu_ps(dx + at, g);
      acc = _mm512_add_ps(acc, g);
      acc2 = _mm512_fmadd_ps(g, _mm512_sub_ps(_mm512_loadu_ps(x + at), m), acc2);
    }
    if ((s0 / kBlock + 1) % (kFlush / kBlock) == 0) {
      flush(&acc, sum);
      flush(&acc2, centred);
    }
  }
  flush(&acc, sum);
  flush(&acc2, centred);
  for (int64_t s = s0; s < size; ++s) {
    for (int l = 0; l < kBlock; ++l) {
      const float g = relu_gradient(dy[l * size + s] + spread[l], y[l * size + s]);
      dx[s * kBlock + l] = g;
      sum[l] += g;
      centred[l] += static_cast<double>(g) * (x[s * kBlock + l] - mean[l]);
    }
  }
}

// dx = g * scale + (x - mean) * slope + offset over one tile, g in dx (tile_gradient_sums).
TILE_LOOP void tile_input_gradient(const float* x, int64_t size, const float* mean,
                                   const float* scale, const float* slope, const float* offset,
                                   float* dx) {
  const __m512 m = _mm512_loadu_ps(mean), a = _mm512_loadu_ps(scale);
  const __m512 b = _mm512_loadu_ps(slope), o = _mm512_loadu_ps(offset);
  for (int64_t at = 0; at < size * kBlock; at += kBlock) {
    const __m512 centred = _mm512_sub_ps(_mm512_loadu_ps(x + at), m);
    _mm512_storeu_ps(dx + at, _mm512_fmadd_ps(_mm512_loadu_ps(dx + at), a,
                                              _mm512_fmadd_ps(centred, b, o)));
  }
}

// ---- The operator ----

void plain_batch_statistics(const float* x, const Planes& p, double* mean, double* var) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.channels; ++c) batch_statistics(x, p, c, &mean[c], &var[c]);
}

// y and pooled from x (plain) with per-channel scale and bias.
void plain_scale_bias_relu(const float* x, const Planes& p, const float* scale, const float* bias,
                           float* y, float* pooled) {
  const int64_t planes = p.images * p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    const int64_t c = i % p.channels;
    const double sum = scale_bias_relu(x + i * p.plane, p.plane, scale[c], bias[c],
                                       y + i * p.plane);
    pooled[i] = static_cast<float>(sum / p.plane);
  }
}

void tiled_scale_bias_relu(const float* x, const Tiles& t, const float* scale, const float* bias,
                           float* y, float* pooled) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t.count(); ++i) {
    const int64_t c = t.first_channel(i);
    tile_scale_bias_relu(x + t.offset(i), t.p.plane, scale + c, bias + c, y + t.plain(i),
                         pooled + i * kBlock);
  }
}

// inputs: x, gamma, beta, moving_mean, moving_var, train; outputs: y, mean, var, pooled
MXReturnValue forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Settings settings = settings_of(attrs);
  const Planes p = planes_of(inputs->at(kX));
  const Tiles tiles{p, settings.blocked_groups};
  const float* x = inputs->at(kX).data<float>();
  const float* gamma = inputs->at(kGamma).data<float>();
  const float* beta = inputs->at(kBeta).data<float>();
  float* moving_mean = inputs->at(kMovingMean).data<float>();
  float* moving_var = inputs->at(kMovingVar).data<float>();
  const bool batch_stats = batch_statistics_used(settings, inputs->at(kTrain));
  float* mean = outputs->at(kMean).data<float>();
  float* var = outputs->at(kVar).data<float>();
  const int64_t channels = p.channels;
  std::vector<double> m(moving_mean, moving_mean + channels), v(moving_var, moving_var + channels);
  if (batch_stats && settings.blocked_groups > 0) tiled_batch_statistics(x, tiles, &m[0], &v[0]);
  if (batch_stats && settings.blocked_groups == 0) plain_batch_statistics(x, p, &m[0], &v[0]);
  for (int64_t c = 0; c < channels; ++c) {
    mean[c] = static_cast<float>(m[c]);
    var[c] = static_cast<float>(v[c]);
  }
  if (batch_stats) {
    update_moving(moving_mean, mean, channels, settings.momentum);
    update_moving(moving_var, var, channels, settings.momentum);
  }
  const std::vector<float> invstd = inverse_stds(var, channels, settings);
  std::vector<float> scale(channels), bias(channels);
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = gamma[c] * invstd[c];
    bias[c] = beta[c] - mean[c] * scale[c];
  }
  float* y = outputs->at(kY).data<float>();
  float* pooled = outputs->at(kPooled).data<float>();
  if (settings.blocked_groups > 0) {
    tiled_scale_bias_relu(x, tiles, scale.data(), bias.data(), y, pooled);
  } else {
    plain_scale_bias_relu(x, p, scale.data(), bias.data(), y, pooled);
  }
  return mxnet::ext::MX_SUCCESS;
}

// The backward pass's arrays.
struct Gradients {
  const float *dy, *dpooled, *x, *gamma, *y, *mean;
  std::vector<float> invstd;
  float *dx, *dgamma, *dbeta;
};

// dx = g * scale + (x - mean) * slope + offset: channel c's terms. With batch statistics the
// mean and variance depend on x too:
// dx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd.
void gradient_terms(const Gradients& a, const Planes& p, bool batch_stats, int64_t c,
                    float* scale, float* slope, float* offset) {
  *scale = a.gamma[c] * a.invstd[c];
  *slope = 0.f;
  *offset = 0.f;
  if (batch_stats) {
    *slope = static_cast<float>(-*scale * a.dgamma[c] * a.invstd[c] / p.count());
    *offset = static_cast<float>(-*scale * a.dbeta[c] / p.count());
  }
}

void plain_backward(const Gradients& a, const Planes& p, bool batch_stats) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.channels; ++c) {
    double sum = 0, centred = 0;
    for (int64_t n = 0; n < p.images; ++n) {
      const int64_t at = p.offset(n, c);
      const float spread = a.dpooled[n * p.channels + c] / p.plane;
      gradient_sums(a.dy + at, spread, a.y + at, a.x + at, p.plane, a.mean[c], &sum, &centred);
    }
    a.dbeta[c] = static_cast<float>(sum);
    a.dgamma[c] = static_cast<float>(centred * a.invstd[c]);
  }
  const int64_t planes = p.images * p.channels;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    const int64_t c = i % p.channels, at = i * p.plane;
    float scale, slope, offset;
    gradient_terms(a, p, batch_stats, c, &scale, &slope, &offset);
    input_gradient(a.dy + at, a.dpooled[i] / p.plane, a.y + at, a.x + at, p.plane, a.mean[c],
                   scale, slope, offset, a.dx + at);
  }
}

void tiled_backward(const Gradients& a, const Tiles& t, bool batch_stats) {
  const Planes& p = t.p;
  std::vector<double> sums(2 * t.count() * kBlock, 0.0);   // per tile: 16 sums, 16 centred
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t.count(); ++i) {
    float spread[kBlock];
    for (int l = 0; l < kBlock; ++l) spread[l] = a.dpooled[i * kBlock + l] / p.plane;
    tile_gradient_sums(a.dy + t.plain(i), a.y + t.plain(i), a.x + t.offset(i), p.plane, spread,
                       a.mean + t.first_channel(i), &sums[2 * i * kBlock],
                       &sums[(2 * i + 1) * kBlock], a.dx + t.offset(i));
  }
  for (int64_t c = 0; c < p.channels; ++c) {
    double sum = 0, centred = 0;
    for (int64_t n = 0; n < p.images; ++n) {
      const int64_t i = n * t.blocks() + c / kBlock;
      sum += sums[2 * i * kBlock + c % kBlock];
      centred += sums[(2 * i + 1) * kBlock + c % kBlock];
    }
    a.dbeta[c] = static_cast<float>(sum);
    a.dgamma[c] = static_cast<float>(centred * a.invstd[c]);
  }
  std::vector<float> scale(p.channels), slope(p.channels), offset(p.channels);
  for (int64_t c = 0; c < p.channels; ++c)
    gradient_terms(a, p, batch_stats, c, &scale[c], &slope[c], &offset[c]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t.count(); ++i) {
    const int64_t c = t.first_channel(i);
    tile_input_gradient(a.x + t.offset(i), p.plane, a.mean + c, &scale[c], &slope[c],
                        &offset[c], a.dx + t.offset(i));
  }
}

// inputs: dy, dmean, dvar, dpooled, x, gamma, beta, moving_mean, moving_var, train, y, mean,
// var, pooled (output gradients, inputs, outputs); outputs: the gradients of the six inputs
MXReturnValue backward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& resource) {
  const Settings settings = settings_of(attrs);
  const int in = kOutputs, out = kOutputs + kInputs;   // where inputs and outputs start
  const Planes p = planes_of(inputs->at(in + kX));
  const bool batch_stats = batch_statistics_used(settings, inputs->at(in + kTrain));
  const Gradients a{inputs->at(kY).data<float>(),
                    inputs->at(kPooled).data<float>(),
                    inputs->at(in + kX).data<float>(),
                    inputs->at(in + kGamma).data<float>(),
                    inputs->at(out + kY).data<float>(),
                    inputs->at(out + kMean).data<float>(),
                    inverse_stds(inputs->at(out + kVar).data<float>(), p.channels, settings),
                    outputs->at(kX).data<float>(),
                    outputs->at(kGamma).data<float>(),
                    outputs->at(kBeta).data<float>()};
  if (settings.blocked_groups > 0) {
    tiled_backward(a, Tiles{p, settings.blocked_groups}, batch_stats);
  } else {
    plain_backward(a, p, batch_stats);
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
  if (!(settings.eps > 0) || !(settings.momentum >= 0 && settings.momentum <= 1) ||
      settings.blocked_groups < 0) {
    MX_ERROR_MSG << kName << ": eps must be > 0, momentum in [0, 1] and blocked_groups >= 0";
    return mxnet::ext::MX_FAIL;
  }
  if (settings.blocked_groups > 0 && !__builtin_cpu_supports("avx512f")) {
    MX_ERROR_MSG << kName << ": blocked_groups needs a CPU with AVX-512 (as the Winograd "
                 << "convolution whose output it reads)";
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
  const int64_t groups = settings_of(attrs).blocked_groups;
  if (groups > 0 && (x[1] % groups != 0 || (x[1] / groups) % kBlock != 0)) {
    MX_ERROR_MSG << kName << ": blocked_groups=" << groups << " needs groups of a multiple of "
                 << kBlock << " channels (x has " << x[1] << ")";
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
