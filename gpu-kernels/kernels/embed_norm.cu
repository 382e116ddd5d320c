// Embedding gather, RMSNorm, and RMSNorm fused with the residual add.
// One block per row.

template <typename W>
__device__ void embed(const W* table, const u32* tokens, float* out, int cols) {
  const W* row = table + (u64)tokens[blockIdx.x] * cols;
  float* o = out + (u64)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = load(row, c);
}

// out = x / rms(x) * weight
template <typename W>
__device__ void rms_norm(const float* x, const W* weight, float eps, float* out, int cols) {
  const float* r = x + (u64)blockIdx.x * cols;
  float* o = out + (u64)blockIdx.x * cols;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += r[c] * r[c];
  const float inv = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = r[c] * inv * load(weight, c);
}

// x += delta; out = x / rms(x) * weight
template <typename W>
__device__ void add_rms_norm(float* x, const float* delta, const W* weight, float eps, float* out, int cols) {
  float* r = x + (u64)blockIdx.x * cols;
  const float* d = delta + (u64)blockIdx.x * cols;
  float* o = out + (u64)blockIdx.x * cols;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = r[c] + d[c];
    r[c] = v;
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = r[c] * inv * load(weight, c);
}

#define ENTRY(S, T)                                                                              \
  extern "C" __global__ void embed_##S(const T* table, const u32* tokens, float* out, int cols) { \
    embed<T>(table, tokens, out, cols);                                                          \
  }                                                                                              \
  extern "C" __global__ void rms_norm_##S(const float* x, const T* w, float eps, float* out,     \
                                          int cols) {                                            \
    rms_norm<T>(x, w, eps, out, cols);                                                           \
  }                                                                                              \
  extern "C" __global__ void add_rms_norm_##S(float* x, const float* d, const T* w, float eps,   \
                                              float* out, int cols) {                            \
    add_rms_norm<T>(x, d, w, eps, out, cols);                                                    \
  }
FOR_WEIGHTS(ENTRY)
