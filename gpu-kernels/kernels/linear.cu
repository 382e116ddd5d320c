// Products against weights, and the small elementwise steps around them.
//
// gemv_<w>_r<R>: out[r][o] = x[r] · w[o] (+ bias[o]) for up to R
// activation rows (R = 1, 2, 4 or 8; `rows` ≤ R of them are real), the
// weights read once, in their stored dtype, 16 bytes per lane per load,
// activations kept in f32 — the decode path, bound by the weights'
// bandwidth. `split` warps (1, 2, 4 or 8) of a 256-thread block share one
// output feature, each summing every split-th step of 256 inputs with
// GEMV_FLIGHT weight loads in flight per lane, their sums meeting in
// shared memory; grid ceil(outs / (8 / split)). The host picks `split` so
// that a launch fills the GPU: one warp per output left a 4,096-output
// product of a Llama-3-8B layer at 0.48 waves on an H200, streaming its
// weights at 57% of the DRAM bandwidth. gemv3_<w>_r<R> runs up to three
// such products of one input in one launch. Larger batches go
// through cuBLAS (the host converts the activations to the weights' dtype
// with to_bf16 / to_f16 first).

// The raw bytes of 8 weights, fetched now and unpacked later, so several
// loads are in flight per lane before the first is used (one 16-byte load
// at a time left the 4,096-output products of a Llama-3-8B layer at 57% of
// the H200's DRAM bandwidth: too few bytes in flight per SM).
template <typename W>
struct Raw8 {
  uint4 u;
};
template <>
struct Raw8<float> {
  float4 a, b;
};
__device__ __forceinline__ void fetch8(const float* p, Raw8<float>& r) {
  r.a = *reinterpret_cast<const float4*>(p);
  r.b = *reinterpret_cast<const float4*>(p + 4);
}
template <typename W>
__device__ __forceinline__ void fetch8(const W* p, Raw8<W>& r) {
  r.u = *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void unpack8(const Raw8<float>& r, float* v) {
  v[0] = r.a.x; v[1] = r.a.y; v[2] = r.a.z; v[3] = r.a.w;
  v[4] = r.b.x; v[5] = r.b.y; v[6] = r.b.z; v[7] = r.b.w;
}
__device__ __forceinline__ void unpack8(const Raw8<__nv_bfloat16>& r, float* v) {
  const u32 w[4] = {r.u.x, r.u.y, r.u.z, r.u.w};
  for (int j = 0; j < 4; ++j) {
    v[2 * j] = __uint_as_float(w[j] << 16);
    v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
  }
}
__device__ __forceinline__ void unpack8(const Raw8<__half>& r, float* v) {
  const u32 w[4] = {r.u.x, r.u.y, r.u.z, r.u.w};
  for (int j = 0; j < 4; ++j) {
    v[2 * j] = __half2float(__ushort_as_half((unsigned short)(w[j] & 0xffffu)));
    v[2 * j + 1] = __half2float(__ushort_as_half((unsigned short)(w[j] >> 16)));
  }
}
template <typename W>
__device__ __forceinline__ void load8(const W* p, float* v) {
  Raw8<W> r;
  fetch8(p, r);
  unpack8(r, v);
}

// acc[r] += w · x[r] over one chunk of 8 inputs at `i`.
template <typename W, int R>
__device__ __forceinline__ void chunk8(const Raw8<W>& raw, const float* x, float* acc, int rows,
                                       int in, int i) {
  float wv[8];
  unpack8(raw, wv);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r < rows) {
      float xv[8];
      load8(x + (u64)r * in + i, xv);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[r] += wv[j] * xv[j];
    }
  }
}

// Chunks of 8 weights each lane has in flight at once.
#define GEMV_FLIGHT 4

// Part `part` of `split` of one output feature's sums over up to R rows,
// by one warp: every split-th step of 256 inputs (32 lanes × 8), from the
// part's first step on.
template <typename W, int R>
__device__ __forceinline__ void gemv_part(const W* wr, const float* x, float* acc, int rows,
                                          int in, int part, int split) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  // 16-byte loads need in % 8 == 0 (rows of weights and of x stay aligned).
  if ((in & 7) == 0) {
    const int step = 32 * 8;
    const int stride = split * step;
    int i = lane * 8 + part * step;
    // GEMV_FLIGHT chunks a lane: every weight load issued before the first
    // is used.
    for (; i + (GEMV_FLIGHT - 1) * stride < in; i += GEMV_FLIGHT * stride) {
      Raw8<W> raw[GEMV_FLIGHT];
#pragma unroll
      for (int u = 0; u < GEMV_FLIGHT; ++u) fetch8(wr + i + u * stride, raw[u]);
#pragma unroll
      for (int u = 0; u < GEMV_FLIGHT; ++u)
        chunk8<W, R>(raw[u], x, acc, rows, in, i + u * stride);
    }
    for (; i < in; i += stride) {
      Raw8<W> raw;
      fetch8(wr + i, raw);
      chunk8<W, R>(raw, x, acc, rows, in, i);
    }
  } else {
    for (int i = lane + 32 * part; i < in; i += 32 * split) {
      const float wv = load(wr, i);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < rows) acc[r] += wv * x[(u64)r * in + i];
    }
  }
}

// Adds up the parts: warp w of the block holds part w % split of its
// output's sums, and the first warp of each output (`part` 0) writes
// out[r][o] (+ bias[o]). Every thread of the block calls it (a barrier
// when split > 1); `real`: the warp has an output (the grid's last block
// may have warps past the end).
template <int R>
__device__ __forceinline__ void gemv_store(float* acc, const float* bias, float* out, int o,
                                           int rows, int outs, int part, int split, bool real) {
  __shared__ float sums[8 * 8];  // [warp][row]: the 8 warps of a block, R <= 8
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = warp_sum(acc[r]);
    if (split > 1 && lane == 0) sums[warp * 8 + r] = acc[r];
  }
  if (split > 1) __syncthreads();
  if (!real || part != 0 || lane != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r < rows) {
      float s = acc[r];
      for (int q = 1; q < split; ++q) s += sums[(warp + q) * 8 + r];
      out[(u64)r * outs + o] = s + (bias ? bias[o] : 0.0f);
    }
  }
}

// One warp's part of feature `o` of a product with `n` outputs, summed
// and stored; `w` null: the warp is past the last output (it still meets
// the block's barrier).
template <typename W, int R>
__device__ __forceinline__ void gemv_warp(const W* w, const float* x, const float* bias,
                                          float* out, int o, int rows, int in, int n, int part,
                                          int split) {
  float acc[R];
  if (w) {
    gemv_part<W, R>(w + (u64)o * in, x, acc, rows, in, part, split);
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  }
  gemv_store<R>(acc, bias, out, o, rows, n, part, split, w != nullptr);
}

template <typename W, int R>
__device__ void gemv(const W* w, const float* x, const float* bias, float* out, int rows, int in,
                     int outs, int split) {
  const int warp = threadIdx.x >> 5;
  const int o = (int)blockIdx.x * (8 / split) + warp / split;
  gemv_warp<W, R>(o < outs ? w : nullptr, x, bias, out, o, rows, in, outs, warp % split, split);
}

// Up to three products of one input in one launch (Q, K and V; gate and
// up): feature o of the concatenated outputs n0 + n1 + n2.
template <typename W, int R>
__device__ void gemv3(const W* w0, const W* w1, const W* w2, const float* x, const float* b0,
                      const float* b1, const float* b2, float* o0, float* o1, float* o2, int rows,
                      int in, int n0, int n1, int n2, int split) {
  const int warp = threadIdx.x >> 5;
  const int part = warp % split;
  int o = (int)blockIdx.x * (8 / split) + warp / split;
  const W* wr = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  int n = 0;
  if (o < n0) {
    wr = w0, bias = b0, out = o0, n = n0;
  } else if (o - n0 < n1) {
    o -= n0;
    wr = w1, bias = b1, out = o1, n = n1;
  } else if (o - n0 - n1 < n2) {
    o -= n0 + n1;
    wr = w2, bias = b2, out = o2, n = n2;
  }
  gemv_warp<W, R>(wr, x, bias, out, o, rows, in, n, part, split);
}

#define GEMV(S, T, R)                                                                          \
  extern "C" __global__ void gemv_##S##_r##R(const T* w, const float* x, const float* bias,   \
                                              float* out, int rows, int in, int outs,          \
                                              int split) {                                     \
    gemv<T, R>(w, x, bias, out, rows, in, outs, split);                                        \
  }
#define GEMV3(S, T, R)                                                                           \
  extern "C" __global__ void gemv3_##S##_r##R(                                                   \
      const T* w0, const T* w1, const T* w2, const float* x, const float* b0, const float* b1,   \
      const float* b2, float* o0, float* o1, float* o2, int rows, int in, int n0, int n1,        \
      int n2, int split) {                                                                       \
    gemv3<T, R>(w0, w1, w2, x, b0, b1, b2, o0, o1, o2, rows, in, n0, n1, n2, split);             \
  }
#define ENTRY(S, T)                                                       \
  GEMV(S, T, 1) GEMV(S, T, 2) GEMV(S, T, 4) GEMV(S, T, 8) GEMV3(S, T, 1) \
      GEMV3(S, T, 2) GEMV3(S, T, 4) GEMV3(S, T, 8)
FOR_WEIGHTS(ENTRY)

// Activations in the weights' dtype, for cuBLAS.
extern "C" __global__ void to_bf16(const float* x, __nv_bfloat16* out, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = __float2bfloat16(x[i]);
}
extern "C" __global__ void to_f16(const float* x, __half* out, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = __float2half(x[i]);
}

// out[r][c] += bias[c] over rows × cols values.
extern "C" __global__ void add_bias(float* out, const float* bias, u32 cols, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] += bias[i % cols];
}

// x += y over n values.
extern "C" __global__ void add(float* x, const float* y, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    x[i] += y[i];
}

// out[i] = x[rows[i]], one block per output row.
extern "C" __global__ void gather_rows(const float* x, const u32* rows, float* out, u32 cols) {
  const float* src = x + (u64)rows[blockIdx.x] * cols;
  float* dst = out + (u64)blockIdx.x * cols;
  for (u32 c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}
