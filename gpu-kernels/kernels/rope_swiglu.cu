// RoPE (rotate-half, as Hugging Face's Llama, Mistral and Qwen2 apply it)
// and SwiGLU. The inverse frequencies come from the host, which applies
// Llama 3.1's scaling (or none) once per model: the kernel only rotates.

// x: rows × (heads · head_dim), in place; row r at position pos[r].
// grid (rows, heads), block ≥ head_dim / 2 threads.
extern "C" __global__ void rope(float* x, const u32* pos, const float* inv_freq, int heads,
                                int head_dim) {
  const int half = head_dim / 2;
  const int i = threadIdx.x;
  if (i >= half) return;
  float* h = x + ((u64)blockIdx.x * heads + blockIdx.y) * head_dim;
  float s, c;
  sincosf((float)pos[blockIdx.x] * inv_freq[i], &s, &c);
  const float a = h[i], b = h[i + half];
  h[i] = a * c - b * s;
  h[i + half] = b * c + a * s;
}

// out = silu(gate) * up, elementwise over n values.
extern "C" __global__ void swiglu(const float* gate, const float* up, float* out, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + __expf(-g)) * up[i];
  }
}
