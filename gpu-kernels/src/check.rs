//! Every step of the forward pass on one device against another (the
//! CUDA device, on a GPU or in the kernel emulator, against the CPU path),
//! on random inputs: the same calls through [`Kernels`] on both devices,
//! the largest difference relative to the largest reference value, against
//! a tolerance per dtype and path. `lattice-gpu-check` runs it on a GPU,
//! the test suite in the emulator.
//!
//! The reference is the CPU path with f32 activations throughout
//! (`Cpu::with_bf16_dot(false)`): the CPU's own `vdpbf16ps` path rounds
//! activations to bf16 and is checked against exact products in its unit
//! tests.
//!
//! Tolerances: f32 arithmetic in another order, 1e-4; bf16 or f16 weights
//! with f32 activations (the GEMV), 1e-4; products through cuBLAS, whose
//! activations are rounded to the weights' 16-bit dtype first, 1e-2 (bf16:
//! 8 bits of mantissa) and 2e-3 (f16). Embedding gathers and row copies
//! must be exact.
//!
//! Must never: compare a device with itself, or pass a case whose output
//! holds NaN.

use crate::{AttnSeq, AttnShape, DType, HostWeight, KernelError, Kernels, KvDtype};

type Result<T> = std::result::Result<T, KernelError>;

/// One compared step.
pub struct Case {
    pub name: String,
    /// Largest |gpu − cpu| over the largest |cpu|.
    pub err: f32,
    pub tol: f32,
}

impl Case {
    pub fn passed(&self) -> bool {
        self.err <= self.tol
    }
}

/// Deterministic noise (xorshift64*), also what `lattice_worker::testmodel`
/// fills generated weights with. Seed with an odd number.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() + 1.0) * 0.5 * n as f32) as usize % n.max(1)
    }
}

/// Relative error, infinite when either side holds NaN or lengths differ.
pub fn rel_err(gpu: &[f32], cpu: &[f32]) -> f32 {
    if gpu.len() != cpu.len() || gpu.iter().chain(cpu).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = gpu
        .iter()
        .zip(cpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn weight(name: &str, dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<HostWeight> {
    Ok(match dtype {
        DType::F32 => HostWeight::owned_f32(name, shape, values.to_vec())?,
        DType::BF16 => HostWeight::owned_u16(
            name,
            dtype,
            shape,
            values
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_bits())
                .collect(),
        )?,
        DType::F16 => HostWeight::owned_u16(
            name,
            dtype,
            shape,
            values
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect(),
        )?,
    })
}

/// `values` as a `rows × cols` activation (the trait has no upload: an
/// embedding gather of an f32 table does it on every device).
pub fn upload<K: Kernels>(k: &K, values: &[f32], rows: usize, cols: usize) -> Result<K::Act> {
    let table = k.weight(weight("upload", DType::F32, vec![rows, cols], values)?)?;
    let mut a = k.act(rows, cols)?;
    let ids: Vec<u32> = (0..rows as u32).collect();
    k.embed(&table, &ids, &mut a)?;
    Ok(a)
}

/// An `outs × inp` weight scaled by 1/√inp, and a bias when asked for.
fn product_weight<K: Kernels>(
    k: &K,
    rng: &mut Rng,
    dtype: DType,
    outs: usize,
    inp: usize,
    bias: bool,
) -> Result<(K::Weight, Option<K::Weight>)> {
    let scale = 1.0 / (inp as f32).sqrt();
    let wv: Vec<f32> = rng.values(outs * inp).iter().map(|v| v * scale).collect();
    let w = k.weight(weight("w", dtype, vec![outs, inp], &wv)?)?;
    let b = if bias {
        Some(k.weight(weight("b", dtype, vec![outs], &rng.values(outs))?)?)
    } else {
        None
    };
    Ok((w, b))
}

/// A product's tolerance: the GEMV keeps f32 activations; cuBLAS reads
/// them rounded to 16-bit weights' dtype.
fn product_tol(rows: usize, dtype: DType) -> f32 {
    match (rows <= crate::cuda::GEMV_MAX_ROWS, dtype) {
        (true, _) | (false, DType::F32) => 1e-4,
        (false, DType::BF16) => 1e-2,
        (false, DType::F16) => 2e-3,
    }
}

/// What one case runs, on either device.
enum Op {
    Embed(DType),
    RmsNorm(usize),
    AddRmsNorm(usize),
    Matmul {
        dtype: DType,
        rows: usize,
        inp: usize,
        outs: usize,
        bias: bool,
    },
    /// Products of one input by two or three weights (Q, K and V with
    /// biases; gate and up without), in one `matmul_many`.
    MatmulMany {
        dtype: DType,
        rows: usize,
        inp: usize,
        outs: usize,
        three: bool,
    },
    Rope,
    Attention(AttnCase),
    SiluMul,
    Add,
    Gather,
}

fn run<K: Kernels>(k: &K, op: &Op, seed: u64) -> Result<Vec<f32>> {
    let mut rng = Rng(seed | 1);
    k.scope(|| -> Result<Vec<f32>> {
        match *op {
            Op::Embed(dtype) => {
                let (vocab, cols) = (300, 200);
                let table = k.weight(weight(
                    "table",
                    dtype,
                    vec![vocab, cols],
                    &rng.values(vocab * cols),
                )?)?;
                let ids: Vec<u32> = (0..13).map(|_| rng.below(vocab) as u32).collect();
                let mut out = k.act(ids.len(), cols)?;
                k.embed(&table, &ids, &mut out)?;
                k.to_host(&out)
            }
            Op::RmsNorm(cols) | Op::AddRmsNorm(cols) => {
                let rows = 5;
                let mut x = upload(k, &rng.values(rows * cols), rows, cols)?;
                let d = upload(k, &rng.values(rows * cols), rows, cols)?;
                let w = k.weight(weight("norm", DType::BF16, vec![cols], &rng.values(cols))?)?;
                let mut out = k.act(rows, cols)?;
                if matches!(op, Op::RmsNorm(_)) {
                    k.rms_norm(&x, &w, 1e-5, &mut out)?;
                    return k.to_host(&out);
                }
                k.add_rms_norm(&mut x, &d, &w, 1e-5, &mut out)?;
                let mut all = k.to_host(&out)?;
                all.extend(k.to_host(&x)?);
                Ok(all)
            }
            Op::Matmul {
                dtype,
                rows,
                inp,
                outs,
                bias,
            } => {
                let x = upload(k, &rng.values(rows * inp), rows, inp)?;
                let (w, b) = product_weight(k, &mut rng, dtype, outs, inp, bias)?;
                let mut out = k.act(rows, outs)?;
                k.matmul(&x, &w, b.as_ref(), &mut out)?;
                k.to_host(&out)
            }
            Op::MatmulMany {
                dtype,
                rows,
                inp,
                outs,
                three,
            } => {
                let x = upload(k, &rng.values(rows * inp), rows, inp)?;
                // Q-sized, then K- and V-sized (a quarter: GQA), or two
                // of one size (gate and up).
                let sizes = if three {
                    vec![outs, outs / 4, outs / 4]
                } else {
                    vec![outs, outs]
                };
                let mut ws = Vec::new();
                let mut outputs = Vec::new();
                for &o in &sizes {
                    ws.push(product_weight(k, &mut rng, dtype, o, inp, three)?);
                    outputs.push(k.act(rows, o)?);
                }
                let pairs: Vec<_> = ws.iter().map(|(w, b)| (w, b.as_ref())).collect();
                let mut outs: Vec<&mut K::Act> = outputs.iter_mut().collect();
                k.matmul_many(&x, &pairs, &mut outs)?;
                let mut all = Vec::new();
                for o in &outputs {
                    all.extend(k.to_host(o)?);
                }
                Ok(all)
            }
            Op::Rope => {
                let (rows, head_dim, heads) = (7, 64, 8);
                let mut x = upload(
                    k,
                    &rng.values(rows * heads * head_dim),
                    rows,
                    heads * head_dim,
                )?;
                let pos: Vec<u32> = (0..rows).map(|_| rng.below(4000) as u32).collect();
                let inv: Vec<f32> = (0..head_dim / 2)
                    .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
                    .collect();
                k.rope(&mut x, head_dim, &pos, &inv)?;
                k.to_host(&x)
            }
            Op::Attention(case) => attention(k, &mut rng, case),
            Op::SiluMul | Op::Add => {
                let (rows, cols) = (9, 3000);
                let a = upload(k, &rng.values(rows * cols), rows, cols)?;
                let mut b = upload(k, &rng.values(rows * cols), rows, cols)?;
                if matches!(op, Op::Add) {
                    k.add(&mut b, &a)?;
                    return k.to_host(&b);
                }
                let mut out = k.act(rows, cols)?;
                k.silu_mul(&a, &b, &mut out)?;
                k.to_host(&out)
            }
            Op::Gather => {
                let (rows, cols) = (40, 333);
                let x = upload(k, &rng.values(rows * cols), rows, cols)?;
                let pick = [39, 0, 7, 7, 21];
                let mut out = k.act(pick.len(), cols)?;
                k.gather_rows(&x, &pick, &mut out)?;
                k.to_host(&out)
            }
        }
    })
}

/// One attention case: which rows, which head size, which cache.
#[derive(Debug, Clone, Copy)]
struct AttnCase {
    head_dim: usize,
    decode: bool,
    prefill: bool,
    window: Option<usize>,
    /// The longest decode context.
    long: usize,
    cache: KvDtype,
}

/// Paged attention: decode rows of sequences of 1, `long` / 5 and `long`
/// positions (1,500 at full scale: long enough to be split in three), prefill chunks of 37 rows from
/// position 0 and of 20 rows from position 50, or both in one call; GQA
/// (8 heads over 2 KV heads); blocks of 16 slots in shuffled order.
fn attention<K: Kernels>(k: &K, rng: &mut Rng, case: AttnCase) -> Result<Vec<f32>> {
    let AttnCase {
        head_dim,
        decode,
        prefill,
        window,
        long,
        cache,
    } = case;
    let (heads, kv_heads, bs) = (8, 2, 16);
    let width = kv_heads * head_dim;
    // (context length, query rows) per sequence.
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    if decode {
        shapes.extend([(1, 1), (long / 5, 1), (long, 1)]);
    }
    if prefill {
        shapes.extend([(37, 37), (70, 20)]);
    }
    let blocks_needed: usize = shapes.iter().map(|(len, _)| len.div_ceil(bs)).sum();
    let total_blocks = blocks_needed + 7;
    let mut order: Vec<u32> = (0..total_blocks as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut kv = k.kv(total_blocks * bs, width, cache)?;
    let mut next = 0;
    let mut tables = Vec::new();
    let mut slots = Vec::new();
    for (len, _) in &shapes {
        let n = len.div_ceil(bs);
        let table = order[next..next + n].to_vec();
        next += n;
        for p in 0..*len {
            slots.push(table[p / bs] * bs as u32 + (p % bs) as u32);
        }
        tables.push(table);
    }
    let keys = upload(k, &rng.values(slots.len() * width), slots.len(), width)?;
    let values = upload(k, &rng.values(slots.len() * width), slots.len(), width)?;
    k.kv_write(&mut kv, &keys, &values, &slots)?;
    let rows: usize = shapes.iter().map(|(_, r)| r).sum();
    let q = upload(
        k,
        &rng.values(rows * heads * head_dim),
        rows,
        heads * head_dim,
    )?;
    let mut seqs = Vec::new();
    let mut row = 0;
    for ((len, r), table) in shapes.iter().zip(&tables) {
        seqs.push(AttnSeq {
            rows: row..row + r,
            start: len - r,
            blocks: table,
        });
        row += r;
    }
    let shape = AttnShape {
        heads,
        kv_heads,
        head_dim,
        block_size: bs,
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let mut out = k.act(rows, heads * head_dim)?;
    k.attention(&q, &kv, shape, &seqs, &mut out)?;
    k.to_host(&out)
}

/// Every case, `gpu` against `cpu`; an error of either side fails the
/// case (with its message). `scale` sizes the larger inputs (1: the shapes
/// stated; the emulator runs 1/4 so as not to take minutes).
pub fn check_all<G: Kernels, C: Kernels>(
    gpu: &G,
    cpu: &C,
    scale: f32,
) -> Vec<(Case, Option<String>)> {
    // Sizes at `scale`, whole multiples of 8 (the aligned paths).
    let sized = |n: usize| (((n as f32 * scale) as usize) / 8 * 8).max(8);
    let (hidden, inp, outs) = (sized(4096), sized(1024), sized(768));
    let mut cases: Vec<(String, Op, f32)> = Vec::new();
    for d in [DType::F32, DType::BF16, DType::F16] {
        cases.push((format!("embed {}", d.name()), Op::Embed(d), 0.0));
    }
    cases.push(("rms_norm".into(), Op::RmsNorm(hidden), 1e-4));
    cases.push(("add_rms_norm".into(), Op::AddRmsNorm(hidden), 1e-4));
    for d in [DType::F32, DType::BF16, DType::F16] {
        for rows in [1, 2, 3, 5, 8, 9, 32, 130] {
            let path = if rows <= crate::cuda::GEMV_MAX_ROWS {
                "gemv"
            } else {
                "cublas"
            };
            cases.push((
                format!("matmul {} {rows}×{inp}·{inp}→{outs} ({path})", d.name()),
                Op::Matmul {
                    dtype: d,
                    rows,
                    inp,
                    outs,
                    bias: rows % 2 == 1,
                },
                product_tol(rows, d),
            ));
        }
        // Fixed shapes, at every scale: rows that are not whole 16-byte
        // loads; whole flights of GEMV_FLIGHT chunks, then a tail of one
        // or two (1,320 = 5 × 256 + 40).
        // On the emulator (one SM) the last three are split over 4, 2
        // and 8 warps an output (`cuda::products::gemv_split`).
        for (inp, outs, what) in [
            (100, 50, "unaligned rows"),
            (1320, 24, "flights and a tail"),
            (1000, 12, "unaligned rows over warps"),
            (2048, 8, "a long row over warps"),
        ] {
            cases.push((
                format!("matmul {} 3×{inp}·{inp}→{outs} ({what})", d.name()),
                Op::Matmul {
                    dtype: d,
                    rows: 3,
                    inp,
                    outs,
                    bias: true,
                },
                1e-4,
            ));
        }
    }
    for d in [DType::F32, DType::BF16, DType::F16] {
        for (rows, three) in [(1, true), (5, true), (2, false), (9, true), (32, false)] {
            let what = if three {
                "Q, K, V with biases"
            } else {
                "gate and up"
            };
            let path = if rows <= crate::cuda::GEMV_MAX_ROWS {
                "one gemv launch"
            } else {
                "cublas, one conversion"
            };
            cases.push((
                format!("matmul_many {} {rows}×{inp}: {what} ({path})", d.name()),
                Op::MatmulMany {
                    dtype: d,
                    rows,
                    inp,
                    outs,
                    three,
                },
                product_tol(rows, d),
            ));
        }
    }
    // Q, K and V fused with long rows: split over warps on the emulator
    // (24 outputs of 2,048 inputs: 4 warps each).
    for d in [DType::F32, DType::BF16, DType::F16] {
        cases.push((
            format!(
                "matmul_many {} 3×2048: Q, K, V with biases over warps",
                d.name()
            ),
            Op::MatmulMany {
                dtype: d,
                rows: 3,
                inp: 2048,
                outs: 16,
                three: true,
            },
            1e-4,
        ));
    }
    cases.push(("rope".into(), Op::Rope, 1e-4));
    // 64 and 128: the tiled prefill; 256: one warp per query row. A bf16
    // cache holds the same rounded values on both devices (each rounds
    // to nearest, ties to even), so its tolerance is f32's.
    for head_dim in [64, 128, 256] {
        for (name, decode, prefill, window, cache) in [
            ("decode", true, false, None, KvDtype::F32),
            ("prefill", false, true, None, KvDtype::F32),
            ("mixed", true, true, None, KvDtype::F32),
            ("mixed, window 64", true, true, Some(64), KvDtype::F32),
            ("mixed", true, true, None, KvDtype::BF16),
        ] {
            cases.push((
                format!(
                    "attention {name}, head_dim {head_dim}, {} cache",
                    cache.name()
                ),
                Op::Attention(AttnCase {
                    head_dim,
                    decode,
                    prefill,
                    window,
                    long: sized(1500),
                    cache,
                }),
                1e-4,
            ));
        }
    }
    cases.push(("silu_mul".into(), Op::SiluMul, 1e-5));
    cases.push(("add".into(), Op::Add, 0.0));
    cases.push(("gather_rows".into(), Op::Gather, 0.0));
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, op, tol))| {
            let seed = 0x5EED_0000 + i as u64;
            match (run(gpu, &op, seed), run(cpu, &op, seed)) {
                (Ok(g), Ok(c)) => (
                    Case {
                        name,
                        err: rel_err(&g, &c),
                        tol,
                    },
                    None,
                ),
                (g, c) => {
                    let why = [g.err(), c.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    (
                        Case {
                            name,
                            err: f32::INFINITY,
                            tol,
                        },
                        Some(why),
                    )
                }
            }
        })
        .collect()
}
