// Shared by every Lattice kernel (prepended to each source before NVRTC
// compiles it). Activations are f32; weights are f32, bf16 or f16 as
// stored; the KV cache is f32 or bf16. Reductions assume blockDim.x is a
// multiple of 32 and at most 1024.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// A launch's dynamic shared memory, `name` of type T*. (The kernel
// emulator, gpu-kernels/emu, has no `extern __shared__`.)
#ifdef LATTICE_EMU
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu_dynamic_shared())
#else
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, u64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float load(const __half* p, u64 i) { return __half2float(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, u64 i, float v) { p[i] = __float2bfloat16(v); }

struct SumOp {
  __device__ static float identity() { return 0.0f; }
  __device__ static float apply(float a, float b) { return a + b; }
};
struct MaxOp {
  __device__ static float identity() { return -INFINITY; }
  __device__ static float apply(float a, float b) { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v) {
  for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The reduction over the block, returned to every thread.
template <typename Op>
__device__ float block_reduce(float v) {
  __shared__ float part[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce<Op>(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < (int)((blockDim.x + 31) >> 5) ? part[lane] : Op::identity();
    w = warp_reduce<Op>(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const float out = total;
  __syncthreads();
  return out;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }
__device__ float block_sum(float v) { return block_reduce<SumOp>(v); }
__device__ float block_max(float v) { return block_reduce<MaxOp>(v); }

// One entry point per weight dtype: M(suffix, type).
#define FOR_WEIGHTS(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)
// One entry point per KV-cache dtype.
#define FOR_CACHES(M) M(f32, float) M(bf16, __nv_bfloat16)
