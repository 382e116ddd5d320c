// Choosing tokens on the device, so only token ids cross to the host:
// each row's adjustments (logit bias, repetition / presence / frequency
// penalties), then greedy (temperature <= 0) or a draw with temperature,
// top-k, min-p and top-p from a uniform number the host supplies per row
// (from the request's seeded generator, so the same seed gives the same
// tokens). The rule is `lattice_gpu_kernels::Pick`'s, which the CPU's
// sampler follows too. One block per row; `probs` is a rows × vocab
// scratch buffer.

// Mirrors `Pick` (host side: `cuda/sampling.rs` lays it out).
struct PickParams {
  float temperature;
  u32 top_k;
  float top_p;
  float min_p;
  float uniform;
  float repetition;
  float presence;
  float frequency;
};

// Mirrors `Adjust`: each token at most once per row.
struct PickAdjust {
  u32 token;
  float bias;
  u32 seen;
  u32 count;
};

// Row `blockIdx.x`'s adjustments, adj[offsets[row]..offsets[row + 1]].
extern "C" __global__ void adjust_logits(float* logits, const PickParams* params,
                                         const PickAdjust* adj, const u32* offsets, u32 vocab) {
  float* row = logits + (u64)blockIdx.x * vocab;
  const PickParams pp = params[blockIdx.x];
  for (u32 i = offsets[blockIdx.x] + threadIdx.x; i < offsets[blockIdx.x + 1]; i += blockDim.x) {
    const PickAdjust a = adj[i];
    if (a.token >= vocab) continue;
    float v = row[a.token] + a.bias;
    if (a.seen && pp.repetition != 1.0f) v = v > 0.0f ? v / pp.repetition : v * pp.repetition;
    if (a.count > 0) v -= pp.presence + pp.frequency * (float)a.count;
    row[a.token] = v;
  }
}

// The lowest index of the row's largest value, on thread 0.
__device__ u32 row_argmax(const float* row, u32 vocab) {
  __shared__ float best_v[32];
  __shared__ u32 best_i[32];
  float v = -INFINITY;
  u32 idx = 0xffffffffu;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x)
    if (row[i] > v) { v = row[i]; idx = i; }
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const u32 i2 = __shfl_xor_sync(0xffffffffu, idx, o);
    if (v2 > v || (v2 == v && i2 < idx)) { v = v2; idx = i2; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
      if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
  return idx == 0xffffffffu ? 0 : idx;
}

// How many entries are >= t (count) and their mass, block-wide.
__device__ void above(const float* p, u32 vocab, float t, float& mass, float& count) {
  float m = 0.0f, c = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x)
    if (p[i] >= t) { m += p[i]; c += 1.0f; }
  mass = block_sum(m);
  count = block_sum(c);
}

// The largest threshold in [lo, hi] (non-negative floats, bisected on
// their bits, which order as they do: exact in at most 31 passes) that
// keeps at least `k` entries (k > 0) or at least `mass_wanted` of mass.
__device__ float largest_keeping(const float* p, u32 vocab, float lo, float hi, u32 k,
                                 float mass_wanted) {
  u32 a = __float_as_uint(lo), b = __float_as_uint(hi);
  while (a < b) {
    const u32 mid = a + (b - a + 1) / 2;
    float mass, count;
    above(p, vocab, __uint_as_float(mid), mass, count);
    const bool keeps = k > 0 ? count >= (float)k : mass >= mass_wanted;
    if (keeps) a = mid; else b = mid - 1;
  }
  return __uint_as_float(a);
}

// One token per row: greedy over the logits, or the draw over
// softmax(logits / temperature) written into probs.
extern "C" __global__ void pick(const float* logits, float* probs, const PickParams* params,
                                u32* out, u32 vocab) {
  __shared__ float scan[1025];
  const PickParams pp = params[blockIdx.x];
  const float* row = logits + (u64)blockIdx.x * vocab;
  if (pp.temperature <= 0.0f) {
    const u32 best = row_argmax(row, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = best;
    return;
  }
  float* p = probs + (u64)blockIdx.x * vocab;
  const float inv_t = 1.0f / pp.temperature;
  float lmax = -INFINITY;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) lmax = fmaxf(lmax, row[i] * inv_t);
  lmax = block_max(lmax);
  float sum = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = expf(row[i] * inv_t - lmax);
    p[i] = e;
    sum += e;
  }
  const float inv = 1.0f / block_sum(sum);
  float mx = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
    p[i] *= inv;
    mx = fmaxf(mx, p[i]);
  }
  mx = block_max(mx);
  // top-k, then min-p, then top-p over what they kept.
  float t = 0.0f;
  if (pp.top_k > 0 && pp.top_k < vocab) t = largest_keeping(p, vocab, 0.0f, mx, pp.top_k, 0.0f);
  t = fminf(fmaxf(t, pp.min_p * mx), mx);
  if (pp.top_p < 1.0f) {
    float kept, count;
    above(p, vocab, t, kept, count);
    t = largest_keeping(p, vocab, t, mx, 0, pp.top_p * kept);
  }
  // Each thread's contiguous chunk, its kept mass, a block-wide scan.
  const u32 chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const u32 from = threadIdx.x * chunk, to = min(from + chunk, vocab);
  float mine = 0.0f;
  for (u32 i = from; i < to; ++i)
    if (p[i] >= t) mine += p[i];
  scan[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    float run = 0.0f;
    for (u32 k = 0; k < blockDim.x; ++k) { const float v = scan[k]; scan[k] = run; run += v; }
    scan[blockDim.x] = run;
  }
  __syncthreads();
  // The prefixes partition [0, total): exactly one thread's chunk holds
  // the target (the same sums in the same order decide both).
  const float total = scan[blockDim.x];
  const float target = fminf(pp.uniform * total, nextafterf(total, 0.0f));
  float run = scan[threadIdx.x];
  if (mine > 0.0f && target >= run && target < run + mine) {
    u32 chosen = from;
    for (u32 i = from; i < to; ++i) {
      if (p[i] < t) continue;
      chosen = i;
      run += p[i];
      if (run > target) break;
    }
    out[blockIdx.x] = chosen;
  }
}
