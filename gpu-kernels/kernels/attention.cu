// Attention over the paged KV cache. A cache holds `slots` rows of
// `kv_heads · head_dim` keys (and as many values); position p of a
// sequence lives in slot blocks[p / block_size] · block_size + p %
// block_size. Grouped-query attention: query head h reads KV head
// h / (heads / kv_heads). head_dim is at most 256 (8 values per lane).
//
// Decode (one new token per sequence) is split-K (flash-decoding): the
// positions of a long context are cut into `splits` slices computed by
// separate blocks, each leaving a partial (max, sum, weighted values) that
// attn_decode_reduce merges. Prefill is causal, one warp per query row
// with an online softmax over the key positions it may see.

#define MAX_PER_LANE 8

struct Seq {
  u32 start;      // position of the sequence's first query row
  u32 rows;       // query rows it owns (1 when decoding)
  u32 row0;       // index of its first query row in the batch
  u32 block_off;  // offset of its block table in `tables`
};

__device__ __forceinline__ u64 slot_of(const u32* table, u32 pos, u32 block_size) {
  return (u64)table[pos / block_size] * block_size + pos % block_size;
}

// One warp: online softmax of q against positions [from, to) of a
// sequence, stepping by `step` warps; m, l, acc are the running max, sum
// and weighted values (acc holds dims lane, lane+32, ...).
template <typename C>
__device__ void attend(const float* q, const C* keys, const C* values, const u32* table,
                       u32 block_size, u32 kv_width, u32 kv_head, int head_dim, float scale,
                       u32 from, u32 to, u32 step, float& m, float& l, float* acc) {
  const int lane = threadIdx.x & 31;
  float qv[MAX_PER_LANE];
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int d = lane + 32 * j;
    qv[j] = d < head_dim ? q[d] : 0.0f;
  }
  for (u32 p = from; p < to; p += step) {
    const u64 base = slot_of(table, p, block_size) * kv_width + (u64)kv_head * head_dim;
    float dot = 0.0f;
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) dot += qv[j] * load(keys, base + d);
    }
    const float s = warp_sum(dot) * scale;
    const float m2 = fmaxf(m, s);
    const float corr = __expf(m - m2), w = __expf(s - m2);
    l = l * corr + w;
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) acc[j] = acc[j] * corr + w * load(values, base + d);
    }
    m = m2;
  }
}

// Merges the warps of a block: each warp's (m, l, acc) into one, written
// by warp 0. smem: warps · (2 + head_dim) floats.
__device__ void merge_warps(float m, float l, const float* acc, int head_dim, float* smem,
                            float& m_out, float& l_out, float* acc_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float* mine = smem + warp * (2 + head_dim);
  if (lane == 0) { mine[0] = m; mine[1] = l; }
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int d = lane + 32 * j;
    if (d < head_dim) mine[2 + d] = acc[j];
  }
  __syncthreads();
  if (warp == 0) {
    float mm = -INFINITY;
    for (int w = 0; w < warps; ++w) mm = fmaxf(mm, smem[w * (2 + head_dim)]);
    float ll = 0.0f;
    for (int j = 0; j < MAX_PER_LANE; ++j) acc_out[j] = 0.0f;
    for (int w = 0; w < warps; ++w) {
      const float* t = smem + w * (2 + head_dim);
      const float c = t[0] == -INFINITY ? 0.0f : __expf(t[0] - mm);
      ll += t[1] * c;
      for (int j = 0; j < MAX_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < head_dim) acc_out[j] += t[2 + d] * c;
      }
    }
    m_out = mm;
    l_out = ll;
  }
}

// grid (heads, seqs, splits); partial: [seqs][heads][splits][2 + head_dim].
template <typename C>
__device__ void attn_decode(const float* q, const C* keys, const C* values, const u32* tables,
                            const Seq* seqs, float* partial, u32 heads, u32 kv_heads,
                            int head_dim, u32 block_size, float scale, u32 window) {
  DYNAMIC_SHARED(float, smem);
  const u32 h = blockIdx.x, s = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const Seq sq = seqs[s];
  const u32 pos = sq.start;  // the one query row is at this position
  const u32 first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
  const u32 len = pos + 1 - first, chunk = (len + splits - 1) / splits;
  const u32 from = first + split * chunk, to = min(from + chunk, pos + 1);
  const u32 warps = blockDim.x >> 5, warp = threadIdx.x >> 5;
  float m = -INFINITY, l = 0.0f, acc[MAX_PER_LANE] = {0};
  const float* qh = q + ((u64)sq.row0 * heads + h) * head_dim;
  if (from < to)
    attend<C>(qh, keys, values, tables + sq.block_off, block_size, kv_heads * head_dim,
              h / (heads / kv_heads), head_dim, scale, from + warp, to, warps, m, l, acc);
  float mo, lo, ao[MAX_PER_LANE];
  merge_warps(m, l, acc, head_dim, smem, mo, lo, ao);
  if (warp == 0) {
    float* out = partial + (((u64)s * heads + h) * splits + split) * (2 + head_dim);
    const int lane = threadIdx.x & 31;
    if (lane == 0) { out[0] = mo; out[1] = lo; }
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) out[2 + d] = ao[j];
    }
  }
}

// grid (heads, seqs), one warp: out[row0 of seq][h] = merged splits.
extern "C" __global__ void attn_decode_reduce(const float* partial, const Seq* seqs, float* out,
                                              u32 heads, int head_dim, u32 splits) {
  const u32 h = blockIdx.x, s = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const float* p = partial + ((u64)s * heads + h) * splits * (2 + head_dim);
  float mm = -INFINITY;
  for (u32 k = 0; k < splits; ++k) mm = fmaxf(mm, p[k * (2 + head_dim)]);
  float ll = 0.0f, acc[MAX_PER_LANE] = {0};
  for (u32 k = 0; k < splits; ++k) {
    const float* t = p + k * (2 + head_dim);
    const float c = t[0] == -INFINITY ? 0.0f : __expf(t[0] - mm);
    ll += t[1] * c;
    for (int j = 0; j < MAX_PER_LANE; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) acc[j] += t[2 + d] * c;
    }
  }
  float* o = out + ((u64)seqs[s].row0 * heads + h) * head_dim;
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int d = lane + 32 * j;
    if (d < head_dim) o[d] = ll > 0.0f ? acc[j] / ll : 0.0f;
  }
}

// Causal prefill: grid (heads, ceil(max rows / warps per block), seqs);
// warp w of block b takes query row b · warps + w of the sequence and
// attends to positions [max(0, pos + 1 - window), pos].
template <typename C>
__device__ void attn_prefill(const float* q, const C* keys, const C* values, const u32* tables,
                             const Seq* seqs, float* out, u32 heads, u32 kv_heads, int head_dim,
                             u32 block_size, float scale, u32 window) {
  const u32 h = blockIdx.x, s = blockIdx.z;
  const Seq sq = seqs[s];
  const u32 i = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= sq.rows) return;
  const u32 pos = sq.start + i;
  const u32 first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
  const u64 row = sq.row0 + i;
  float m = -INFINITY, l = 0.0f, acc[MAX_PER_LANE] = {0};
  attend<C>(q + (row * heads + h) * head_dim, keys, values, tables + sq.block_off, block_size,
            kv_heads * head_dim, h / (heads / kv_heads), head_dim, scale, first, pos + 1, 1, m, l,
            acc);
  const int lane = threadIdx.x & 31;
  float* o = out + (row * heads + h) * head_dim;
  for (int j = 0; j < MAX_PER_LANE; ++j) {
    const int d = lane + 32 * j;
    if (d < head_dim) o[d] = l > 0.0f ? acc[j] / l : 0.0f;
  }
}

// Writes rows of new keys and values (f32) into their cache slots.
// grid rows, block ≥ 32.
template <typename C>
__device__ void kv_write(const float* k, const float* v, const u32* slots, C* keys, C* values,
                         u32 width) {
  const u64 dst = (u64)slots[blockIdx.x] * width, src = (u64)blockIdx.x * width;
  for (u32 c = threadIdx.x; c < width; c += blockDim.x) {
    store(keys, dst + c, k[src + c]);
    store(values, dst + c, v[src + c]);
  }
}

#define ENTRY(S, C)                                                                               \
  extern "C" __global__ void attn_decode_##S(const float* q, const C* k, const C* v,             \
                                             const u32* tables, const Seq* seqs, float* partial,  \
                                             u32 heads, u32 kv_heads, int head_dim,               \
                                             u32 block_size, float scale, u32 window) {           \
    attn_decode<C>(q, k, v, tables, seqs, partial, heads, kv_heads, head_dim, block_size, scale, \
                   window);                                                                       \
  }                                                                                               \
  extern "C" __global__ void attn_prefill_##S(const float* q, const C* k, const C* v,            \
                                              const u32* tables, const Seq* seqs, float* out,     \
                                              u32 heads, u32 kv_heads, int head_dim,              \
                                              u32 block_size, float scale, u32 window) {          \
    attn_prefill<C>(q, k, v, tables, seqs, out, heads, kv_heads, head_dim, block_size, scale,    \
                    window);                                                                      \
  }                                                                                               \
  extern "C" __global__ void kv_write_##S(const float* k, const float* v, const u32* slots,      \
                                          C* keys, C* values, u32 width) {                        \
    kv_write<C>(k, v, slots, keys, values, width);                                                \
  }
FOR_CACHES(ENTRY)
