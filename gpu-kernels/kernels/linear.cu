// Products against weights, and the small elementwise steps around them.
//
// gemv_<w>_r<R>: out[r][o] = x[r] · w[o] (+ bias[o]) for up to R
// activation rows (R = 1, 2, 4 or 8; `rows` ≤ R of them are real), the
// weights read once, in their stored dtype, 16 bytes per lane per load,
// activations kept in f32 — the decode path, bound by the weights'
// bandwidth. One warp per output feature, GEMV_FLIGHT weight loads in
// flight per lane; grid ceil(outs / warps per block). gemv3_<w>_r<R> runs
// up to three such products of one input in one launch. Larger batches go
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

// One output feature `o` of up to R rows, by one warp.
template <typename W, int R>
__device__ __forceinline__ void gemv_row(const W* wr, const float* x, const float* bias,
                                         float* out, int o, int rows, int in, int outs) {
  const int lane = threadIdx.x & 31;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  // 16-byte loads need in % 8 == 0 (rows of weights and of x stay aligned).
  if ((in & 7) == 0) {
    const int step = 32 * 8;
    int i = lane * 8;
    // GEMV_FLIGHT chunks a lane: every weight load issued before the first
    // is used.
    for (; i + (GEMV_FLIGHT - 1) * step < in; i += GEMV_FLIGHT * step) {
      Raw8<W> raw[GEMV_FLIGHT];
#pragma unroll
      for (int u = 0; u < GEMV_FLIGHT; ++u) fetch8(wr + i + u * step, raw[u]);
#pragma unroll
      for (int u = 0; u < GEMV_FLIGHT; ++u) chunk8<W, R>(raw[u], x, acc, rows, in, i + u * step);
    }
    for (; i < in; i += step) {
      Raw8<W> raw;
      fetch8(wr + i, raw);
      chunk8<W, R>(raw, x, acc, rows, in, i);
    }
  } else {
    for (int i = lane; i < in; i += 32) {
      const float wv = load(wr, i);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < rows) acc[r] += wv * x[(u64)r * in + i];
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0 && r < rows) out[(u64)r * outs + o] = s + (bias ? bias[o] : 0.0f);
  }
}

template <typename W, int R>
__device__ void gemv(const W* w, const float* x, const float* bias, float* out, int rows, int in,
                     int outs) {
  const int o = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  if (o >= outs) return;
  gemv_row<W, R>(w + (u64)o * in, x, bias, out, o, rows, in, outs);
}

// Up to three products of one input in one launch (Q, K and V; gate and
// up): warp o takes feature o of the concatenated outputs n0 + n1 + n2.
template <typename W, int R>
__device__ void gemv3(const W* w0, const W* w1, const W* w2, const float* x, const float* b0,
                      const float* b1, const float* b2, float* o0, float* o1, float* o2, int rows,
                      int in, int n0, int n1, int n2) {
  int o = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  if (o < n0) {
    gemv_row<W, R>(w0 + (u64)o * in, x, b0, o0, o, rows, in, n0);
    return;
  }
  o -= n0;
  if (o < n1) {
    gemv_row<W, R>(w1 + (u64)o * in, x, b1, o1, o, rows, in, n1);
    return;
  }
  o -= n1;
  if (o < n2) gemv_row<W, R>(w2 + (u64)o * in, x, b2, o2, o, rows, in, n2);
}

#define GEMV(S, T, R)                                                                          \
  extern "C" __global__ void gemv_##S##_r##R(const T* w, const float* x, const float* bias,   \
                                              float* out, int rows, int in, int outs) {        \
    gemv<T, R>(w, x, bias, out, rows, in, outs);                                               \
  }
#define GEMV3(S, T, R)                                                                           \
  extern "C" __global__ void gemv3_##S##_r##R(                                                   \
      const T* w0, const T* w1, const T* w2, const float* x, const float* b0, const float* b1,   \
      const float* b2, float* o0, float* o1, float* o2, int rows, int in, int n0, int n1,        \
      int n2) {                                                                                  \
    gemv3<T, R>(w0, w1, w2, x, b0, b1, b2, o0, o1, o2, rows, in, n0, n1, n2);                    \
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
