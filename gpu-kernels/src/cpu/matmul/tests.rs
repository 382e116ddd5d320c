//! The CPU products against naive ones, path by path; batch invariance.

use super::*;
use crate::DType;

fn naive(x: &Mat, w: &[f32], n_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let k = x.cols;
    let mut out = vec![0.0; x.rows * n_out];
    for r in 0..x.rows {
        for o in 0..n_out {
            let mut s = 0.0f64;
            for i in 0..k {
                s += f64::from(x.data[r * k + i]) * f64::from(w[o * k + i]);
            }
            out[r * n_out + o] = s as f32 + bias.map_or(0.0, |b| b[o]);
        }
    }
    out
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97));
            ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `values(n, seed)` rounded to bf16, as bits.
fn bf16_bits(n: usize, seed: u32) -> Vec<u16> {
    values(n, seed)
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

/// The largest absolute difference.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn paths(simd: Simd) -> Paths {
    Paths {
        simd,
        threads: 2,
        gemv_max_rows: GEMV_MAX_ROWS,
        bf16_dot: false,
    }
}

/// Every (rows, dtype, simd) case against a naive f64 product of the
/// same (dtype-rounded) weights.
#[test]
fn every_path_matches_a_naive_product() {
    let (n_out, k) = (70, 131);
    let w32 = values(n_out * k, 1);
    let bf: Vec<u16> = w32
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect();
    let hf: Vec<u16> = w32
        .iter()
        .map(|v| half::f16::from_f32(*v).to_bits())
        .collect();
    let as_f32 = |bits: &[u16], d: DType| -> Vec<f32> {
        bits.iter()
            .map(|&b| match d {
                DType::BF16 => bf16_to_f32(b),
                _ => half::f16::from_bits(b).to_f32(),
            })
            .collect()
    };
    let bias = values(n_out, 3);
    let bias_w = HostWeight::owned_f32("b", vec![n_out], bias.clone()).unwrap();
    let weights = [
        (
            HostWeight::owned_f32("w", vec![n_out, k], w32.clone()).unwrap(),
            w32.clone(),
        ),
        (
            HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bf.clone()).unwrap(),
            as_f32(&bf, DType::BF16),
        ),
        (
            HostWeight::owned_u16("w", DType::F16, vec![n_out, k], hf.clone()).unwrap(),
            as_f32(&hf, DType::F16),
        ),
    ];
    for rows in [1, 3, 6, 8, 9, 33, 65] {
        let x = Mat::from_vec(rows, k, values(rows * k, 2)).unwrap();
        for (w, reference) in &weights {
            let want = naive(&x, reference, n_out, Some(&bias));
            for simd in [Simd::detect(), Simd::Portable] {
                let mut out = Mat::zeros(rows, n_out);
                matmul(paths(simd), &x, w, Some(&bias_w), &mut out).unwrap();
                let worst = worst(&out.data, &want);
                assert!(
                    worst < 1e-4,
                    "rows {rows}, {:?}, {simd:?}: off by {worst}",
                    w.dtype()
                );
            }
        }
    }
}

/// The `vdpbf16ps` path, where this CPU has AVX512-BF16, at every
/// tile shape (1 row, 2, 3, a tile and a rest, many): the exact
/// product of the bf16 weights and the activations rounded to bf16
/// (the only error is the f32 sums' order). Where it has not, the
/// path is off and the GEMV or `gemm` answers.
#[test]
fn the_bf16_dot_path_is_the_product_of_bf16_rounded_activations() {
    let (n_out, k) = (70, 131);
    let bits = bf16_bits(n_out * k, 8);
    let wf: Vec<f32> = bits.iter().map(|b| bf16_to_f32(*b)).collect();
    let w = HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bits).unwrap();
    let detected = Paths::detect(2);
    for rows in [1, 2, 3, 4, 5, 8, 33, 65, 66, 67, 100] {
        let x = Mat::from_vec(rows, k, values(rows * k, 9)).unwrap();
        let rounded: Vec<f32> = x
            .data
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_f32())
            .collect();
        let want = if detected.bf16_dot {
            naive(&Mat::from_vec(rows, k, rounded).unwrap(), &wf, n_out, None)
        } else {
            naive(&x, &wf, n_out, None)
        };
        let mut out = Mat::zeros(rows, n_out);
        matmul(detected, &x, &w, None, &mut out).unwrap();
        let worst = worst(&out.data, &want);
        assert!(
            worst < 1e-4,
            "rows {rows}, bf16 dot {}: off by {worst}",
            detected.bf16_dot
        );
    }
}

/// Products of one input in one dispatch give the bits each gives
/// alone, whatever their dtypes (f32 with a bias, bf16, f16) and
/// number of rows (streamed, bf16 dot or `gemm`).
#[test]
fn several_products_at_once_are_each_product_alone() {
    let k = 131;
    let bias = HostWeight::owned_f32("b", vec![40], values(40, 3)).unwrap();
    let ws = [
        HostWeight::owned_f32("q", vec![40, k], values(40 * k, 1)).unwrap(),
        HostWeight::owned_u16("k", DType::BF16, vec![24, k], bf16_bits(24 * k, 4)).unwrap(),
        HostWeight::owned_u16("v", DType::F16, vec![9, k], bf16_bits(9 * k, 5)).unwrap(),
    ];
    for rows in [1, 5, 70] {
        let x = Mat::from_vec(rows, k, values(rows * k, 2)).unwrap();
        let alone: Vec<Mat> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut out = Mat::zeros(rows, w.shape()[0]);
                let b = (i == 0).then_some(&bias);
                matmul(Paths::detect(2), &x, w, b, &mut out).unwrap();
                out
            })
            .collect();
        let mut outs: Vec<Mat> = ws.iter().map(|w| Mat::zeros(rows, w.shape()[0])).collect();
        let mut products: Vec<Product<'_>> = ws
            .iter()
            .zip(outs.iter_mut())
            .enumerate()
            .map(|(i, (w, out))| Product {
                w,
                bias: (i == 0).then_some(&bias),
                out,
            })
            .collect();
        matmul_many(Paths::detect(2), &x, &mut products).unwrap();
        for (i, (got, want)) in outs.iter().zip(&alone).enumerate() {
            assert_eq!(got.data, want.data, "rows {rows}, product {i}");
        }
    }
}

/// A row's result does not depend on the rows batched with it (the
/// streamed and batched paths of the engine give the same tokens):
/// on the GEMV path up to its bound, and on the `vdpbf16ps` path
/// (where this CPU has it) at any size, past the GEMV's bound too.
#[test]
fn a_row_gives_the_same_bits_in_any_batch() {
    let (n_out, k) = (40, 200);
    let bits = bf16_bits(n_out * k, 5);
    let w = HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bits).unwrap();
    let detected = Paths::detect(2);
    let mut cases = vec![(paths(Simd::detect()), 8)];
    if detected.bf16_dot {
        cases.extend([(detected, 8), (detected, 70)]);
    }
    for (at, rows) in cases {
        let x = Mat::from_vec(rows, k, values(rows * k, 6)).unwrap();
        let mut all = Mat::zeros(rows, n_out);
        matmul(at, &x, &w, None, &mut all).unwrap();
        for r in 0..rows {
            let one = Mat::from_vec(1, k, x.row(r).to_vec()).unwrap();
            let mut out = Mat::zeros(1, n_out);
            matmul(at, &one, &w, None, &mut out).unwrap();
            let same = out
                .data
                .iter()
                .zip(all.row(r))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "row {r} differs alone and in a batch of {rows} (bf16 dot {})",
                at.bf16_dot
            );
        }
    }
}

#[test]
fn a_shape_mismatch_is_an_error_not_a_panic() {
    let w = HostWeight::owned_f32(
        "model.layers.0.mlp.up_proj.weight",
        vec![4, 3],
        vec![0.0; 12],
    )
    .unwrap();
    let x = Mat::zeros(2, 5);
    let mut out = Mat::zeros(2, 4);
    let err = matmul(paths(Simd::Portable), &x, &w, None, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch in matmul: x 2×5 · model.layers.0.mlp.up_proj.weight [4, 3]ᵀ into 2×4"
    );
}

/// A matrix copied into tiles gives the bits it gives in rows, at every
/// number of rows (one alone, partial 3-row groups, the GEMV's bound and
/// past it), with a bias, alone and beside a matrix in rows; where this
/// CPU has no `vdpbf16ps`, a tiled matrix is refused, not misread.
#[test]
fn a_tiled_matrix_gives_the_bits_of_its_rows() {
    let (n_out, k) = (72, 192);
    let bits = bf16_bits(n_out * k, 7);
    let rows_w = HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bits).unwrap();
    let tiled = rows_w.tiled().unwrap();
    let bias = HostWeight::owned_f32("b", vec![n_out], values(n_out, 3)).unwrap();
    let other = HostWeight::owned_u16("o", DType::BF16, vec![20, k], bf16_bits(20 * k, 8)).unwrap();
    let detected = Paths::detect(3);
    if !detected.bf16_dot {
        let x = Mat::from_vec(2, k, values(2 * k, 2)).unwrap();
        let mut out = Mat::zeros(2, n_out);
        let err = matmul(detected, &x, &tiled, None, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape mismatch in matmul: w is tiled for `vdpbf16ps`, which this CPU path does not run"
        );
        return;
    }
    for rows in [1, 2, 4, 5, 16, 64, 70] {
        let x = Mat::from_vec(rows, k, values(rows * k, 2)).unwrap();
        let mut want = Mat::zeros(rows, n_out);
        matmul(detected, &x, &rows_w, Some(&bias), &mut want).unwrap();
        let mut got = Mat::zeros(rows, n_out);
        matmul(detected, &x, &tiled, Some(&bias), &mut got).unwrap();
        assert_eq!(got.data, want.data, "{rows} rows alone");
        let (mut a, mut b) = (Mat::zeros(rows, n_out), Mat::zeros(rows, 20));
        let mut products = [
            Product {
                w: &tiled,
                bias: Some(&bias),
                out: &mut a,
            },
            Product {
                w: &other,
                bias: None,
                out: &mut b,
            },
        ];
        matmul_many(detected, &x, &mut products).unwrap();
        assert_eq!(a.data, want.data, "{rows} rows beside a matrix in rows");
    }
    // Without the bf16 dot path the tiles are refused.
    let x = Mat::from_vec(2, k, values(2 * k, 2)).unwrap();
    let mut out = Mat::zeros(2, n_out);
    let err = matmul(paths(Simd::detect()), &x, &tiled, None, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch in matmul: w is tiled for `vdpbf16ps`, which this CPU path does not run"
    );
}
