// The CUDA C++ dialect the kernels use, on the host: Lattice's kernel
// emulator (the test suite runs every kernel source through it on
// machines without a GPU). Compiled with g++ -std=c++20 together with
// runtime.cpp, one shared library per kernel source.
//
// A launch runs its blocks one after another, and each block's threads as
// fibers on one host thread (ucontext), switched at barriers:
// __syncthreads waits for every live thread of the block, a warp shuffle
// for the 32 lanes of its warp; __shared__ variables are statics (one block
// at a time uses them). Arithmetic is the host's: results
// match a GPU's within rounding, never bit for bit.
//
// Must never: be used for speed, or hide a data race the GPU would have
// (a kernel that reads another thread's write without a barrier is wrong
// on both).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define LATTICE_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
extern thread_local dim3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
// The value of lane (this lane ^ lane_mask), any type of up to 8 bytes.
void emu_shuffle(const void* in, void* out, unsigned size, int lane_mask);
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  T r;
  emu_shuffle(&v, &r, sizeof(T), lane_mask);
  return r;
}
// The launch's dynamic shared memory.
void* emu_dynamic_shared();

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
// sincosf and fmaxf: glibc's. math.h declares __expf, but libm does not
// export it: the kernels' __expf is ours.
inline float lattice_emu_expf(float x) { return std::exp(x); }
#define __expf lattice_emu_expf
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <typename T> inline T min(T a, T b) { return a < b ? a : b; }
template <typename T> inline T max(T a, T b) { return a > b ? a : b; }

struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((unsigned)b.bits << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return {(uint16_t)(u >> 16)};
}

struct __half { _Float16 v; };
struct __half2 { __half x, y; };
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half(float f) { return {(_Float16)f}; }
inline float2 __half22float2(__half2 h) { return {(float)h.x.v, (float)h.y.v}; }
inline __half __ushort_as_half(unsigned short s) { __half h; std::memcpy(&h, &s, 2); return h; }
