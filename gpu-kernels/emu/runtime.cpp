// The emulator's launches (see emu.h): a registry of the source's kernels,
// each called through cuLaunchKernel's convention (an array of pointers
// to the arguments), and a launch that runs every block's threads as
// fibers, switched at barriers. A fiber is entered once through
// makecontext/swapcontext and switched after that with _setjmp/_longjmp,
// which save no signal mask (swapcontext's two system calls per switch
// were most of the emulator's time).
#include <setjmp.h>
#include <ucontext.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "emu.h"

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {
enum class State { Ready, AtBlock, AtWarp, Done };

constexpr std::size_t kStack = 64 * 1024;

// Fiber stacks, kept from launch to launch (uninitialised: a fresh
// zeroed megabyte per thread per launch would cost more than the kernel).
std::vector<std::unique_ptr<char[]>>& stacks(unsigned threads) {
  static std::vector<std::unique_ptr<char[]>> all;
  while (all.size() < threads) all.emplace_back(new char[kStack]);
  return all;
}

struct Fiber {
  ucontext_t ctx;
  jmp_buf jb;
  bool started = false;
  State state = State::Ready;
  dim3 idx;
};

// The block being run (one at a time, on the launching thread).
struct Block {
  ucontext_t scheduler;
  jmp_buf back;  // the scheduler, to return to from a fiber
  std::vector<Fiber> fibers;
  std::vector<uint64_t> lanes;  // one slot per thread, for shuffles
  std::vector<unsigned char> shared;
  unsigned current = 0;
  const std::function<void(void**)>* kernel = nullptr;
  void** args = nullptr;
};
Block* block = nullptr;

using Invoker = std::function<void(void**)>;
std::map<std::string, Invoker>& registry() {
  static std::map<std::string, Invoker> r;
  return r;
}

template <typename... A, std::size_t... I>
void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

void wait(State s) {
  Fiber& f = block->fibers[block->current];
  f.state = s;
  if (_setjmp(f.jb) == 0) _longjmp(block->back, 1);
}

void body() {
  (*block->kernel)(block->args);
  block->fibers[block->current].state = State::Done;
  _longjmp(block->back, 1);  // never returns: its stack is done with
}

// Runs one block to its end; false when its threads wait on each other
// forever (a barrier some thread never reaches).
bool run_block() {
  const unsigned n = block->fibers.size();
  for (;;) {
    // Release each warp whose live lanes all wait at its shuffle, and the
    // block when every live thread waits at __syncthreads.
    bool all_block = true, any_live = false;
    for (unsigned w = 0; w * 32 < n; ++w) {
      bool all = true, live = false;
      for (unsigned t = w * 32; t < (w + 1) * 32 && t < n; ++t) {
        const State s = block->fibers[t].state;
        if (s != State::Done) live = true;
        if (s != State::Done && s != State::AtWarp) all = false;
      }
      if (live && all)
        for (unsigned t = w * 32; t < (w + 1) * 32 && t < n; ++t)
          if (block->fibers[t].state == State::AtWarp) block->fibers[t].state = State::Ready;
    }
    for (auto& f : block->fibers) {
      if (f.state != State::Done) any_live = true;
      if (f.state != State::Done && f.state != State::AtBlock) all_block = false;
    }
    if (!any_live) return true;
    if (all_block)
      for (auto& f : block->fibers)
        if (f.state == State::AtBlock) f.state = State::Ready;
    bool ran = false;
    for (unsigned t = 0; t < n; ++t) {
      if (block->fibers[t].state != State::Ready) continue;
      ran = true;
      block->current = t;
      Fiber& f = block->fibers[t];
      threadIdx = f.idx;
      if (_setjmp(block->back) == 0) {
        if (f.started) _longjmp(f.jb, 1);
        f.started = true;
        swapcontext(&block->scheduler, &f.ctx);
      }
    }
    if (!ran) return false;
  }
}
}  // namespace

void __syncthreads() { wait(State::AtBlock); }

void __syncwarp(unsigned) { wait(State::AtWarp); }

void emu_shuffle(const void* in, void* out, unsigned size, int lane_mask) {
  const unsigned t = block->current, warp = t / 32, lane = t % 32;
  std::memcpy(&block->lanes[t], in, size);
  wait(State::AtWarp);
  std::memcpy(out, &block->lanes[warp * 32 + (lane ^ (unsigned)lane_mask)], size);
  wait(State::AtWarp);
}

void* emu_dynamic_shared() { return block->shared.data(); }

template <typename... A>
int emu_register(const char* name, void (*f)(A...)) {
  registry()[name] = [f](void** args) { call(f, args, std::index_sequence_for<A...>{}); };
  return 0;
}

// 0 when launched; 1 for an unknown kernel; 2 for a block that is not a
// whole number of warps; 3 for threads that wait on each other forever.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, unsigned shared, void** args) {
  auto it = registry().find(name);
  if (it == registry().end()) return 1;
  const unsigned threads = bx * by * bz;
  if (threads == 0 || threads % 32 != 0 || threads > 1024) return 2;
  Block b;
  b.fibers.resize(threads);
  auto& stack = stacks(threads);
  b.lanes.assign(threads, 0);
  b.shared.assign(shared + 16, 0);
  b.kernel = &it->second;
  b.args = args;
  Block* outer = block;
  block = &b;
  gridDim = dim3{gx, gy, gz};
  blockDim = dim3{bx, by, bz};
  int rc = 0;
  for (unsigned z = 0; z < gz && rc == 0; ++z)
    for (unsigned y = 0; y < gy && rc == 0; ++y)
      for (unsigned x = 0; x < gx && rc == 0; ++x) {
        blockIdx = dim3{x, y, z};
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& f = b.fibers[t];
          f.state = State::Ready;
          f.started = false;
          f.idx = dim3{t % bx, (t / bx) % by, t / (bx * by)};
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = stack[t].get();
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = &b.scheduler;
          makecontext(&f.ctx, body, 0);
        }
        std::fill(b.shared.begin(), b.shared.end(), 0);
        if (!run_block()) rc = 3;
      }
  block = outer;
  return rc;
}

// cuBLAS's product as the device calls it (C = Aᵀ·B, column-major, f32
// accumulation and output): dtype 0 f32, 1 bf16, 2 f16.
extern "C" void emu_gemm(int m, int n, int k, const void* a, const void* b, float* c, int dtype) {
  auto at = [dtype](const void* p, long i) -> float {
    switch (dtype) {
      case 1: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
      case 2: return __half2float(static_cast<const __half*>(p)[i]);
      default: return static_cast<const float*>(p)[i];
    }
  };
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int p = 0; p < k; ++p) s += at(a, (long)i * k + p) * at(b, (long)j * k + p);
      c[(long)j * m + i] = s;
    }
}
