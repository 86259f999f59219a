// Anti-aliased resampling of 8-bit images, equal to Pillow's Image.resize (its libImaging
// Resample.c): the same filters, the same coefficients (computed in double, normalised to
// 22-bit fixed point), the same two passes (horizontal over the rows the vertical pass
// needs, then vertical) and the same rounding and clipping of each pass to 8 bits. Integer
// sums do not depend on their order, so the result is bit-identical while the work is laid
// out for vector units: the horizontal pass runs on a transposed copy, where, like the
// vertical pass, it weights whole contiguous rows.
//
// Built by resnest_gluon/native.py with -ffp-contract=off: a fused multiply-add in the
// coefficient arithmetic would round differently from Pillow's build.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return sin(x) / x * (0.54f + 0.46f * cos(x));
}

double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

// Pillow's filter numbers (Image.Resampling): LANCZOS 1, BILINEAR 2, BICUBIC 3, BOX 4,
// HAMMING 5. NEAREST (0) is not a convolution and is left to Pillow.
const Filter* filter_for(int code) {
  static const Filter lanczos{lanczos_filter, 3.0}, bilinear{bilinear_filter, 1.0},
      bicubic{bicubic_filter, 2.0}, box{box_filter, 0.5}, hamming{hamming_filter, 1.0};
  switch (code) {
    case 1: return &lanczos;
    case 2: return &bilinear;
    case 3: return &bicubic;
    case 4: return &box;
    case 5: return &hamming;
    default: return nullptr;
  }
}

// The taps of one axis: output i reads `count[i]` inputs from `first[i]` on, with the
// fixed-point weights weights[i * ksize + t].
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Taps compute_taps(int in_size, float in0, float in1, int out_size, const Filter& filter) {
  Taps taps;
  double scale = (double)(in1 - in0) / out_size;  // the difference in float, as Pillow
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = filter.support * filterscale;
  taps.ksize = (int)ceil(support) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign((size_t)out_size * taps.ksize, 0);
  std::vector<double> k(taps.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    int32_t* out = &taps.weights[(size_t)xx * taps.ksize];
    for (int x = 0; x < xmax; ++x) {
      out[x] = k[x] < 0 ? (int)(-0.5 + k[x] * (1 << kPrecisionBits))
                        : (int)(0.5 + k[x] * (1 << kPrecisionBits));
    }
    taps.first[xx] = xmin;
    taps.count[xx] = xmax;
  }
  return taps;
}

inline uint8_t clip8(int32_t sum) {
  int32_t v = sum >> kPrecisionBits;
  return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// out[i] = clip8(sum_t rows[t][i] * weights[t]) for i < n, rows[t] = base + t * stride. The
// sums of a chunk of outputs stay in vector registers across the taps.
__attribute__((target_clones("avx2", "default")))
void weighted_rows(const uint8_t* base, ptrdiff_t stride, int count, const int32_t* weights,
                   int n, uint8_t* out) {
  constexpr int kChunk = 32;
  int i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    int32_t acc[kChunk];
    for (int j = 0; j < kChunk; ++j) acc[j] = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < count; ++t) {
      const uint8_t* row = base + t * stride + i;
      const int32_t w = weights[t];
      for (int j = 0; j < kChunk; ++j) acc[j] += (int32_t)row[j] * w;
    }
    for (int j = 0; j < kChunk; ++j) out[i + j] = clip8(acc[j]);
  }
  for (; i < n; ++i) {
    int32_t acc = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < count; ++t) acc += (int32_t)base[t * stride + i] * weights[t];
    out[i] = clip8(acc);
  }
}

// dst (cols, rows, P) = transpose of src (rows, cols, C) with row pitch `stride`, each pixel
// widened from C to P bytes (3 -> 4: whole words move faster than 3-byte pixels; the pad byte
// is 0 and is dropped again by transpose_from). Blocks of 16x16 pixels keep both in cache.
template <int C, int P>
void transpose_to(const uint8_t* src, ptrdiff_t stride, int rows, int cols, uint8_t* dst) {
  const int block = 16;
  for (int r0 = 0; r0 < rows; r0 += block) {
    int r1 = r0 + block < rows ? r0 + block : rows;
    for (int c0 = 0; c0 < cols; c0 += block) {
      int c1 = c0 + block < cols ? c0 + block : cols;
      for (int r = r0; r < r1; ++r) {
        const uint8_t* s = src + r * stride + (ptrdiff_t)c0 * C;
        uint8_t* d = dst + ((size_t)c0 * rows + r) * P;
        for (int c = c0; c < c1; ++c, s += C, d += (size_t)rows * P) {
          uint8_t pixel[P] = {0};
          for (int ch = 0; ch < C; ++ch) pixel[ch] = s[ch];
          memcpy(d, pixel, P);
        }
      }
    }
  }
}

// dst (cols, rows, C) contiguous = transpose of src (rows, cols, P) contiguous, narrowing
// each pixel from P to C bytes.
template <int C, int P>
void transpose_from(const uint8_t* src, int rows, int cols, uint8_t* dst) {
  const int block = 16;
  for (int r0 = 0; r0 < rows; r0 += block) {
    int r1 = r0 + block < rows ? r0 + block : rows;
    for (int c0 = 0; c0 < cols; c0 += block) {
      int c1 = c0 + block < cols ? c0 + block : cols;
      for (int c = c0; c < c1; ++c) {
        const uint8_t* s = src + ((size_t)r0 * cols + c) * P;
        uint8_t* d = dst + ((size_t)c * rows + r0) * C;
        for (int r = r0; r < r1; ++r, s += (size_t)cols * P, d += C) {
          uint8_t pixel[P];
          memcpy(pixel, s, P);
          for (int ch = 0; ch < C; ++ch) d[ch] = pixel[ch];
        }
      }
    }
  }
}

// Each output line i of `taps` from the lines of `src` (line pitch `stride`, `n` bytes used).
void resample_lines(const uint8_t* src, ptrdiff_t stride, int line_offset, const Taps& taps,
                    int n, uint8_t* dst, ptrdiff_t dst_stride) {
  for (size_t i = 0; i < taps.first.size(); ++i) {
    weighted_rows(src + (ptrdiff_t)(taps.first[i] - line_offset) * stride, stride,
                  taps.count[i], &taps.weights[i * taps.ksize], n,
                  dst + (ptrdiff_t)i * dst_stride);
  }
}

// Working memory, kept per thread between calls: fresh buffers of this size would come from
// mmap and cost a page fault per 4 KiB on every image. Buffers grown past kKeptBytes (a huge
// image) are released after the call.
constexpr size_t kKeptBytes = 32u << 20;
thread_local std::vector<uint8_t> scratch_buffers[3];

uint8_t* scratch(int which, size_t bytes) {
  std::vector<uint8_t>& buffer = scratch_buffers[which];
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// Releases the oversized buffers when a call ends, by whichever return.
struct ScratchTrim {
  ~ScratchTrim() {
    for (std::vector<uint8_t>& buffer : scratch_buffers) {
      if (buffer.size() > kKeptBytes) std::vector<uint8_t>().swap(buffer);
    }
  }
};

// The horizontal pass over rows [row0, row0 + rows) of src: columns become lines of a
// transposed copy (pixels of P bytes), are weighted as lines, and are transposed back into
// dst (rows, out_w, C).
template <int C, int P>
void horizontal_pass(const uint8_t* src, ptrdiff_t stride, int row0, int rows,
                     const Taps& taps, int out_w, uint8_t* dst) {
  int col0 = taps.first[0], col1 = 0;
  for (int i = 0; i < out_w; ++i) {
    if (taps.first[i] < col0) col0 = taps.first[i];
    if (taps.first[i] + taps.count[i] > col1) col1 = taps.first[i] + taps.count[i];
  }
  const int line = rows * P;
  uint8_t* columns = scratch(0, (size_t)(col1 - col0) * line);
  transpose_to<C, P>(src + (ptrdiff_t)row0 * stride + (ptrdiff_t)col0 * C, stride, rows,
                     col1 - col0, columns);
  uint8_t* resampled = scratch(1, (size_t)out_w * line);
  resample_lines(columns, line, col0, taps, line, resampled, line);
  transpose_from<C, P>(resampled, out_w, rows, dst);
}

void horizontal_pass(const uint8_t* src, ptrdiff_t stride, int row0, int rows, int channels,
                     const Taps& taps, int out_w, uint8_t* dst) {
  switch (channels) {
    case 1: return horizontal_pass<1, 1>(src, stride, row0, rows, taps, out_w, dst);
    case 2: return horizontal_pass<2, 2>(src, stride, row0, rows, taps, out_w, dst);
    case 3: return horizontal_pass<3, 4>(src, stride, row0, rows, taps, out_w, dst);
    default: return horizontal_pass<4, 4>(src, stride, row0, rows, taps, out_w, dst);
  }
}

}  // namespace

extern "C" {

// Resample the box (x0, y0, x1, y1) of src (height, width, channels uint8, row pitch
// `stride` bytes) to out (out_h, out_w, channels, contiguous) exactly as Pillow's
// Image.resize((out_w, out_h), filter, box). Returns 0, or 1 for a filter it does not
// implement (NEAREST), 2 for arguments Pillow refuses, 3 when memory runs out.
int resnest_resample(const uint8_t* src, int height, int width, int channels, ptrdiff_t stride,
                     float x0, float y0, float x1, float y1, int out_w, int out_h, int filter,
                     uint8_t* out) {
  const Filter* f = filter_for(filter);
  if (f == nullptr) return 1;
  if (out_w <= 0 || out_h <= 0 || channels < 1 || channels > 4 || x0 < 0 || y0 < 0 ||
      x1 > width || y1 > height || x1 <= x0 || y1 <= y0)
    return 2;
  ScratchTrim trim;
  try {
    const size_t out_line = (size_t)out_w * channels;
    if (out_w == width && out_h == height && x0 == 0 && y0 == 0 && x1 == out_w &&
        y1 == out_h) {
      for (int r = 0; r < height; ++r) memcpy(out + r * out_line, src + r * stride, out_line);
      return 0;
    }
    bool need_horizontal = out_w != width || x0 != 0 || x1 != out_w;
    bool need_vertical = out_h != height || y0 != 0 || y1 != out_h;
    Taps vertical = compute_taps(height, y0, y1, out_h, *f);
    int row0 = vertical.first[0];
    int row1 = vertical.first[out_h - 1] + vertical.count[out_h - 1];
    const uint8_t* lines = src;
    ptrdiff_t line_stride = stride;
    int line_offset = 0;
    if (need_horizontal) {
      Taps horizontal = compute_taps(width, x0, x1, out_w, *f);
      uint8_t* temp = need_vertical ? scratch(2, (size_t)(row1 - row0) * out_line) : out;
      horizontal_pass(src, stride, row0, row1 - row0, channels, horizontal, out_w, temp);
      if (!need_vertical) return 0;
      lines = temp;
      line_stride = (ptrdiff_t)out_line;
      line_offset = row0;
    }
    resample_lines(lines, line_stride, line_offset, vertical, (int)out_line, out,
                   (ptrdiff_t)out_line);
    return 0;
  } catch (const std::bad_alloc&) {
    return 3;
  }
}

}  // extern "C"
