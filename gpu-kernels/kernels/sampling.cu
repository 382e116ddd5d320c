// Sampling on the device, so only token ids cross to the host: penalties
// on the logits, greedy (argmax), and temperature / top-k / top-p / min-p
// sampling with a uniform draw the host supplies per row (from the
// request's seeded generator, so the same seed gives the same tokens).
// One block per row. `probs` is a rows × vocab scratch buffer.

// Penalties of the tokens a sequence has seen (`tokens` with their
// `counts`, n of them): repetition (divide positive logits, multiply
// negative ones), presence (once) and frequency (per occurrence).
// grid rows (each row's list at offsets[row]..offsets[row + 1]).
extern "C" __global__ void penalties(float* logits, const u32* tokens, const u32* counts,
                                     const u32* offsets, u32 vocab, float repetition,
                                     float presence, float frequency) {
  float* row = logits + (u64)blockIdx.x * vocab;
  for (u32 i = offsets[blockIdx.x] + threadIdx.x; i < offsets[blockIdx.x + 1]; i += blockDim.x) {
    const u32 t = tokens[i];
    if (t >= vocab) continue;
    float v = row[t];
    if (repetition != 1.0f) v = v > 0.0f ? v / repetition : v * repetition;
    v -= presence + frequency * (float)counts[i];
    row[t] = v;
  }
}

// Row softmax with a temperature, into probs.
extern "C" __global__ void softmax(const float* logits, float* probs, u32 vocab, float temperature) {
  const float* row = logits + (u64)blockIdx.x * vocab;
  float* p = probs + (u64)blockIdx.x * vocab;
  const float inv_t = 1.0f / fmaxf(temperature, 1e-6f);
  float mx = -INFINITY;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, row[i] * inv_t);
  mx = block_max(mx);
  float sum = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = __expf(row[i] * inv_t - mx);
    p[i] = e;
    sum += e;
  }
  const float inv = 1.0f / block_sum(sum);
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) p[i] *= inv;
}

// The lowest index of the row's largest logit.
extern "C" __global__ void argmax(const float* logits, u32* out, u32 vocab) {
  __shared__ float best_v[32];
  __shared__ u32 best_i[32];
  const float* row = logits + (u64)blockIdx.x * vocab;
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
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
      if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
    out[blockIdx.x] = idx == 0xffffffffu ? 0 : idx;
  }
}

// Probability mass and count of the entries >= t.
__device__ void above(const float* p, u32 vocab, float t, float& mass, float& count) {
  float m = 0.0f, c = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x)
    if (p[i] >= t) { m += p[i]; c += 1.0f; }
  mass = block_sum(m);
  count = block_sum(c);
}

// Samples from probs (a softmax already taken) keeping the tokens of
// probability >= a threshold: the largest one that keeps at least top_k
// tokens (0: all), at least top_p of the mass, and no token below
// min_p · the largest probability. The threshold is found by bisection
// (40 halvings of [0, max]); the token by a block-wide scan in index
// order, so a row and a draw give one answer.
extern "C" __global__ void sample(const float* probs, const float* uniform, u32* out, u32 vocab,
                                  u32 top_k, float top_p, float min_p) {
  __shared__ float scan[1025];
  const float* p = probs + (u64)blockIdx.x * vocab;
  float mx = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, p[i]);
  mx = block_max(mx);
  float lo = 0.0f, hi = mx;  // the answer is in [lo, hi]: `hi` always satisfies
  for (int it = 0; it < 40; ++it) {
    const float mid = 0.5f * (lo + hi);
    float mass, count;
    above(p, vocab, mid, mass, count);
    const bool enough = (top_k == 0 || count >= (float)top_k) && mass >= top_p;
    if (enough) lo = mid; else hi = mid;
  }
  float t = fmaxf(lo, min_p * mx);
  if (t > mx) t = mx;
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
  const float target = fminf(uniform[blockIdx.x] * total, nextafterf(total, 0.0f));
  float run = scan[threadIdx.x];
  if (mine > 0.0f && target >= run && target < run + mine) {
    u32 pick = from;
    for (u32 i = from; i < to; ++i) {
      if (p[i] < t) continue;
      pick = i;
      run += p[i];
      if (run > target) break;
    }
    out[blockIdx.x] = pick;
  }
}
