//! Attention against a direct computation, and its paths (tiles, rows,
//! every body this CPU runs) against each other, bit for bit.

use super::*;
use crate::KvDtype;

/// Two sequences over scattered blocks, one of them with a sliding
/// window, caches in f32 and in bf16 (written through `kv_write`),
/// every body this CPU runs: against a direct computation on the
/// values the cache holds. The shapes cover a head dimension the
/// AVX-512 body refuses (8) and ones it takes (16, 64, 80: 64 + 16, 128),
/// groups of 1, 2, 3 and 8 query heads per KV head, and contexts of
/// one to three blocks of sixteen positions (the last one partial).
#[test]
fn paged_attention_matches_a_direct_computation() {
    for (heads, kv_heads, hd) in [
        (4, 2, 8),
        (4, 2, 64),
        (6, 2, 16),
        (8, 1, 32),
        (2, 2, 80),
        (4, 2, 128),
    ] {
        matches_a_direct_computation(heads, kv_heads, hd);
    }
}

fn matches_a_direct_computation(heads: usize, kv_heads: usize, hd: usize) {
    let bs = 4;
    let group = heads / kv_heads;
    let kvw = kv_heads * hd;
    let slots = 64 * bs;
    let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
    let raw_k: Vec<f32> = (0..slots * kvw).map(val).collect();
    let raw_v: Vec<f32> = (0..slots * kvw).map(|i| val(i + 13)).collect();
    let seq_a = [5u32, 2, 9, 11, 40, 33, 17, 60, 3, 22, 50];
    let seq_b = [1u32, 7];
    // a: 3 new rows at positions 37..40 (ctx 40); b: 1 row at position 6.
    let q = Mat::from_vec(
        4,
        heads * hd,
        (0..4 * heads * hd).map(|i| val(i + 5)).collect(),
    )
    .unwrap();
    for dtype in [KvDtype::F32, KvDtype::BF16] {
        let mut kv = KvCpu {
            width: kvw,
            k: KvRows::zeros(slots * kvw, dtype).unwrap(),
            v: KvRows::zeros(slots * kvw, dtype).unwrap(),
        };
        let all: Vec<u32> = (0..slots as u32).collect();
        let k_rows = Mat::from_vec(slots, kvw, raw_k.clone()).unwrap();
        let v_rows = Mat::from_vec(slots, kvw, raw_v.clone()).unwrap();
        super::super::ops::kv_write(&mut kv, &k_rows, &v_rows, &all).unwrap();
        let held = |x: &f32| match dtype {
            KvDtype::F32 => *x,
            KvDtype::BF16 => half::bf16::from_f32(*x).to_f32(),
        };
        let kf: Vec<f32> = raw_k.iter().map(held).collect();
        let vf: Vec<f32> = raw_v.iter().map(held).collect();
        if dtype == KvDtype::BF16 {
            assert_ne!(kf, raw_k, "the bf16 cache rounds");
        }
        for window in [None, Some(3), Some(20)] {
            let shape = AttnShape {
                heads,
                kv_heads,
                head_dim: hd,
                block_size: bs,
                window,
                scale: 0.35,
            };
            let seqs = [
                AttnSeq {
                    rows: 0..3,
                    start: 37,
                    blocks: &seq_a,
                },
                AttnSeq {
                    rows: 3..4,
                    start: 6,
                    blocks: &seq_b,
                },
            ];
            // Every body this CPU can run (AVX-512 implies AVX2).
            let mut simds = vec![Simd::detect(), Simd::Portable];
            if Simd::detect() == Simd::Avx512 {
                simds.push(Simd::Avx2);
            }
            for simd in simds {
                let mut out = Mat::zeros(4, heads * hd);
                attention(simd, &q, &kv, shape, &seqs, &mut out, Tiles::Auto).unwrap();
                // In tiles (split where sequence `a` ends), the same bits.
                let mut tiled = Mat::zeros(4, heads * hd);
                attention(simd, &q, &kv, shape, &seqs, &mut tiled, Tiles::Always).unwrap();
                assert!(
                    tiled
                        .data
                        .iter()
                        .zip(&out.data)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{heads}/{kv_heads}×{hd} {dtype:?} {window:?} {simd:?}: tiles differ"
                );
                for (row, blocks, pos) in [
                    (0usize, &seq_a[..], 37usize),
                    (1, &seq_a[..], 38),
                    (2, &seq_a[..], 39),
                    (3, &seq_b[..], 6),
                ] {
                    for h in 0..heads {
                        let kvh = h / group;
                        let qh = &q.data[row * heads * hd + h * hd..][..hd];
                        let first = window.map_or(0, |w: usize| (pos + 1).saturating_sub(w));
                        let slot =
                            |p: usize| (blocks[p / bs] as usize * bs + p % bs) * kvw + kvh * hd;
                        let sc: Vec<f64> = (first..=pos)
                            .map(|p| {
                                (0..hd)
                                    .map(|d| f64::from(qh[d]) * f64::from(kf[slot(p) + d]))
                                    .sum::<f64>()
                                    * 0.35
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for d in 0..hd {
                            let want: f64 = (first..=pos)
                                .zip(&e)
                                .map(|(p, w)| w / z * f64::from(vf[slot(p) + d]))
                                .sum();
                            let got = out.data[row * heads * hd + h * hd + d];
                            assert!(
                                (f64::from(got) - want).abs() < 1e-5,
                                "{heads}/{kv_heads}×{hd} {dtype:?} {window:?} {simd:?} row {row} head {h}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A prefill chunk of 37 rows beside two decoding sequences, over
/// scattered blocks: in tiles (as `attention` runs such a chunk) and
/// one row at a time, the same bits for every head, in f32 and bf16
/// caches. The shapes make tiles of 16, 8, 5, 4 and 2 rows, value
/// reads shared by 1 to 4 heads, and a head dimension of 80 (64 + 16).
#[test]
fn tiles_of_rows_give_the_bits_of_one_row_at_a_time() {
    if Simd::detect() != Simd::Avx512 {
        return;
    }
    for (heads, kv_heads, hd) in [
        (4, 4, 64),
        (4, 2, 64),
        (6, 2, 80),
        (8, 2, 64),
        (8, 1, 32),
        (4, 2, 128),
    ] {
        let bs = 16;
        let kvw = kv_heads * hd;
        let slots = 16 * bs;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let blocks_a = [9u32, 2, 14, 5];
        let blocks_b = [3u32, 11];
        let blocks_c = [7u32];
        let seqs = [
            AttnSeq {
                rows: 0..1,
                start: 20,
                blocks: &blocks_b,
            },
            // Positions 3..40: the chunk after a 3-token prefix.
            AttnSeq {
                rows: 1..38,
                start: 3,
                blocks: &blocks_a,
            },
            AttnSeq {
                rows: 38..39,
                start: 9,
                blocks: &blocks_c,
            },
        ];
        let rows = 39;
        let q = Mat::from_vec(
            rows,
            heads * hd,
            (0..rows * heads * hd).map(|i| val(i + 5)).collect(),
        )
        .unwrap();
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            block_size: bs,
            window: None,
            scale: 0.125,
        };
        for dtype in [KvDtype::F32, KvDtype::BF16] {
            let mut kv = KvCpu {
                width: kvw,
                k: KvRows::zeros(slots * kvw, dtype).unwrap(),
                v: KvRows::zeros(slots * kvw, dtype).unwrap(),
            };
            let all: Vec<u32> = (0..slots as u32).collect();
            let k_rows = Mat::from_vec(slots, kvw, (0..slots * kvw).map(val).collect()).unwrap();
            let v_rows =
                Mat::from_vec(slots, kvw, (0..slots * kvw).map(|i| val(i + 13)).collect()).unwrap();
            super::super::ops::kv_write(&mut kv, &k_rows, &v_rows, &all).unwrap();
            let mut one = Mat::zeros(rows, heads * hd);
            let mut tiled = Mat::zeros(rows, heads * hd);
            let simd = Simd::Avx512;
            attention(simd, &q, &kv, shape, &seqs, &mut one, Tiles::Never).unwrap();
            attention(simd, &q, &kv, shape, &seqs, &mut tiled, Tiles::Always).unwrap();
            for (i, (a, b)) in tiled.data.iter().zip(&one.data).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{heads}/{kv_heads}×{hd} {dtype:?}: row {} value {}: {a} vs {b}",
                    i / (heads * hd),
                    i % (heads * hd)
                );
            }
            assert!(one.data.iter().all(|x| x.is_finite() && *x != 0.0));
        }
    }
}

#[test]
fn a_block_table_too_short_for_the_context_is_an_error() {
    let kv = KvCpu {
        width: 8,
        k: KvRows::F32(vec![0.0; 64]),
        v: KvRows::F32(vec![0.0; 64]),
    };
    let q = Mat::zeros(1, 8);
    let mut out = Mat::zeros(1, 8);
    let shape = AttnShape {
        heads: 1,
        kv_heads: 1,
        head_dim: 8,
        block_size: 4,
        window: None,
        scale: 1.0,
    };
    let seqs = [AttnSeq {
        rows: 0..1,
        start: 4,
        blocks: &[0],
    }];
    let err = attention(Simd::Portable, &q, &kv, shape, &seqs, &mut out, Tiles::Auto).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch in attention: 1 blocks for a context of 5"
    );
}
