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

// Positions a warp has in flight at once in `attend`: their table
// entries, keys and values are loaded together, so one position's chain of
// dependent loads (table, key, value) overlaps the others'.
#define IN_FLIGHT 4

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
  for (u32 p0 = from; p0 < to; p0 += step * IN_FLIGHT) {
    u64 base[IN_FLIGHT];
    bool live[IN_FLIGHT];
#pragma unroll
    for (int u = 0; u < IN_FLIGHT; ++u) {
      const u32 p = p0 + u * step;
      live[u] = p < to;
      base[u] = live[u] ? slot_of(table, p, block_size) * kv_width + (u64)kv_head * head_dim : 0;
    }
    float kx[IN_FLIGHT][MAX_PER_LANE], vx[IN_FLIGHT][MAX_PER_LANE];
#pragma unroll
    for (int u = 0; u < IN_FLIGHT; ++u) {
#pragma unroll
      for (int j = 0; j < MAX_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        const bool in = live[u] && d < head_dim;
        kx[u][j] = in ? load(keys, base[u] + d) : 0.0f;
        vx[u][j] = in ? load(values, base[u] + d) : 0.0f;
      }
    }
    float sc[IN_FLIGHT];
#pragma unroll
    for (int u = 0; u < IN_FLIGHT; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < MAX_PER_LANE; ++j) dot += qv[j] * kx[u][j];
      sc[u] = dot;
    }
#pragma unroll
    for (int u = 0; u < IN_FLIGHT; ++u) sc[u] = warp_sum(sc[u]) * scale;
#pragma unroll
    for (int u = 0; u < IN_FLIGHT; ++u) {
      if (!live[u]) continue;
      const float m2 = fmaxf(m, sc[u]);
      const float corr = __expf(m - m2), w = __expf(sc[u] - m2);
      l = l * corr + w;
#pragma unroll
      for (int j = 0; j < MAX_PER_LANE; ++j) acc[j] = acc[j] * corr + w * vx[u][j];
      m = m2;
    }
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

// Causal prefill, tiled (flash-attention style) for head_dim ≤ 128:
// grid (heads, ceil(max rows / 16), seqs), 4 warps; a block takes 16 query
// rows of one head (4 per warp) and walks the keys they may see in tiles
// of 32 positions, each tile's keys and values loaded once into shared
// memory for all 16 rows. Within a tile, lane p scores position p (a dot
// product over the head), the warp reduces the tile's max and sum once
// per row, and each lane accumulates its dims of the weighted values.
// Dynamic shared memory: (16·hd + 32·(hd + 1) + 32·hd + 128) floats.
#define TQ 16
#define TK 32
template <typename C>
__device__ void attn_prefill_tiled(const float* q, const C* keys, const C* values,
                                   const u32* tables, const Seq* seqs, float* out, u32 heads,
                                   u32 kv_heads, int hd, u32 block_size, float scale, u32 window) {
  DYNAMIC_SHARED(float, sm);
  const int hdp = hd + 1;
  float* qs = sm;              // [TQ][hd]
  float* ks = qs + TQ * hd;    // [TK][hd + 1]: padded, so lanes read distinct banks
  float* vs = ks + TK * hdp;   // [TK][hd]
  float* ws = vs + TK * hd;    // [warps][TK]
  const u32 h = blockIdx.x, s = blockIdx.z;
  const Seq sq = seqs[s];
  const u32 r0 = blockIdx.y * TQ;
  if (r0 >= sq.rows) return;  // the whole block
  const u32 nrows = min((u32)TQ, sq.rows - r0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u32 kv_width = kv_heads * hd, kvh = h / (heads / kv_heads);
  const u32* table = tables + sq.block_off;
  for (int i = threadIdx.x; i < TQ * hd; i += blockDim.x) {
    const u32 r = i / hd;
    qs[i] = r < nrows ? q[((u64)(sq.row0 + r0 + r) * heads + h) * hd + i % hd] : 0.0f;
  }
  const u32 first_row = sq.start + r0, last = first_row + nrows - 1;
  const u32 lo = (window > 0 && first_row + 1 > window) ? first_row + 1 - window : 0;
  float m[4], l[4], acc[4][4];
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int j = 0; j < 4; ++j) acc[r][j] = 0.0f;
  }
  for (u32 t0 = lo; t0 <= last; t0 += TK) {
    __syncthreads();  // the last tile is consumed (and the query tile loaded)
    for (int i = threadIdx.x; i < TK * hd; i += blockDim.x) {
      const u32 p = i / hd, d = i % hd, pos = t0 + p;
      float kv = 0.0f, vv = 0.0f;
      if (pos <= last) {
        const u64 base = slot_of(table, pos, block_size) * kv_width + (u64)kvh * hd;
        kv = load(keys, base + d);
        vv = load(values, base + d);
      }
      ks[p * hdp + d] = kv;
      vs[p * hd + d] = vv;
    }
    __syncthreads();
    for (int rr = 0; rr < 4; ++rr) {
      const u32 r = warp * 4 + rr;
      if (r >= nrows) break;  // the whole warp
      const u32 pos_r = first_row + r;
      const u32 from_r = (window > 0 && pos_r + 1 > window) ? pos_r + 1 - window : 0;
      const u32 p = t0 + lane;
      float sc = -INFINITY;
      if (p <= pos_r && p >= from_r) {
        const float* qr = qs + r * hd;
        const float* kp = ks + lane * hdp;
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot += qr[d] * kp[d];
        sc = dot * scale;
      }
      const float mn = fmaxf(m[rr], warp_max(sc));
      if (mn == -INFINITY) continue;  // nothing visible yet: the whole warp
      const float w = sc == -INFINITY ? 0.0f : __expf(sc - mn);
      const float corr = __expf(m[rr] - mn);
      l[rr] = l[rr] * corr + warp_sum(w);
      ws[warp * TK + lane] = w;
      __syncwarp();
      for (int j = 0; j < 4; ++j) {
        const int d = lane + 32 * j;
        if (d < hd) {
          float a = acc[rr][j] * corr;
          for (int k = 0; k < TK; ++k) a += ws[warp * TK + k] * vs[k * hd + d];
          acc[rr][j] = a;
        }
      }
      __syncwarp();
      m[rr] = mn;
    }
  }
  for (int rr = 0; rr < 4; ++rr) {
    const u32 r = warp * 4 + rr;
    if (r >= nrows) break;
    float* o = out + ((u64)(sq.row0 + r0 + r) * heads + h) * hd;
    for (int j = 0; j < 4; ++j) {
      const int d = lane + 32 * j;
      if (d < hd) o[d] = l[rr] > 0.0f ? acc[rr][j] / l[rr] : 0.0f;
    }
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
  extern "C" __global__ void attn_prefill_tiled_##S(                                            \
      const float* q, const C* k, const C* v, const u32* tables, const Seq* seqs, float* out,     \
      u32 heads, u32 kv_heads, int head_dim, u32 block_size, float scale, u32 window) {          \
    attn_prefill_tiled<C>(q, k, v, tables, seqs, out, heads, kv_heads, head_dim, block_size,     \
                          scale, window);                                                        \
  }                                                                                               \
  extern "C" __global__ void kv_write_##S(const float* k, const float* v, const u32* slots,      \
                                          C* keys, C* values, u32 width) {                        \
    kv_write<C>(k, v, slots, keys, values, width);                                                \
  }
FOR_CACHES(ENTRY)
