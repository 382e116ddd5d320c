//! Where a decode step's time goes on the GPU, without hardware counters:
//! the host's cost of one driver call, the time each step of a layer takes
//! on its own (many launches queued, then one wait: the GPU's time per
//! launch when it, not the host, is the bound), and a whole step's time
//! to queue against its time to finish.
//!
//! Must never: report a figure it did not measure in this run.

use super::Report;
use anyhow::Result;
use lattice_gpu_kernels::check::Rng;
use lattice_gpu_kernels::cuda::Cuda;
use lattice_gpu_kernels::{DType, HostWeight, Kernels};
use std::time::Instant;

fn bf16_weight(
    k: &Cuda,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<<Cuda as Kernels>::Weight> {
    let mut rng = Rng(0x9E37_79B9 | 1);
    let bits: Vec<u16> = (0..rows * cols)
        .map(|_| half::bf16::from_f32(rng.uniform() * 0.02).to_bits())
        .collect();
    Ok(k.weight(HostWeight::owned_u16(
        name,
        DType::BF16,
        vec![rows, cols],
        bits,
    )?)?)
}

fn f32_vector(k: &Cuda, name: &str, n: usize) -> Result<<Cuda as Kernels>::Weight> {
    Ok(k.weight(HostWeight::owned_f32(name, vec![n], vec![1.0; n])?)?)
}

/// Seconds to queue `reps` runs of `step`, and seconds until they finished.
fn time(k: &Cuda, reps: usize, mut step: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    step()?;
    k.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        step()?;
    }
    let queued = t.elapsed().as_secs_f64();
    k.synchronize()?;
    Ok((queued, t.elapsed().as_secs_f64()))
}

/// The widths of a decode layer.
pub struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    /// Query width: heads × head_dim.
    pub q: usize,
    /// Key (and value) width: KV heads × head_dim.
    pub kv: usize,
    pub head_dim: usize,
}

impl LayerShape {
    /// Llama 3 8B's.
    pub fn llama3_8b() -> Self {
        Self {
            hidden: 4096,
            intermediate: 14336,
            q: 4096,
            kv: 1024,
            head_dim: 128,
        }
    }
}

/// One row per step of a decode layer of shape `l`, batch 1, bf16
/// weights, each launched `reps` times after a warm-up.
pub fn layer_steps(r: &mut Report, k: &Cuda, l: &LayerShape, reps: usize) -> Result<()> {
    r.note(format!("\n| one step of a decode layer, batch 1 ({reps} launches, then one wait) | host µs to queue each | µs each until done | weights GB/s |"));
    r.note("|---|---|---|---|".into());
    let (hidden, intermediate, q, kv, head_dim) = (l.hidden, l.intermediate, l.q, l.kv, l.head_dim);
    let x = k.act(1, hidden)?;
    let mut y = k.act(1, hidden)?;
    let row = |r: &mut Report, what: &str, bytes: usize, t: (f64, f64)| {
        let (queued, done) = (t.0 / reps as f64, t.1 / reps as f64);
        let bw = if bytes > 0 {
            format!("{:.0}", bytes as f64 / done / 1e9)
        } else {
            "—".into()
        };
        r.note(format!(
            "| {what} | {:.1} | {:.1} | {bw} |",
            queued * 1e6,
            done * 1e6
        ));
    };
    let before = k.driver_calls();
    let t = time(k, reps, || {
        let mut a = k.act(1, hidden)?;
        k.add(&mut a, &x)?;
        Ok(())
    })?;
    let calls = (k.driver_calls() - before) as f64 / (reps + 1) as f64;
    row(
        r,
        &format!("an activation allocated (zeroed) and one small launch ({calls:.0} driver calls)"),
        0,
        t,
    );
    let t = time(k, reps, || Ok(k.add(&mut y, &x)?))?;
    row(r, "one small launch (add, 4096 values)", 0, t);
    let norm = f32_vector(k, "norm", hidden)?;
    let mut normed = k.act(1, hidden)?;
    let t = time(k, reps, || {
        Ok(k.add_rms_norm(&mut y, &x, &norm, 1e-5, &mut normed)?)
    })?;
    row(r, "add + RMSNorm", 0, t);
    for (what, rows, cols) in [
        ("product: Q projection", q, hidden),
        ("product: K (or V) projection", kv, hidden),
        ("product: O projection", hidden, q),
        ("product: gate (or up) projection", intermediate, hidden),
        ("product: down projection", hidden, intermediate),
    ] {
        let w = bf16_weight(k, what, rows, cols)?;
        let input = k.act(1, cols)?;
        let mut out = k.act(1, rows)?;
        let t = time(k, reps, || Ok(k.matmul(&input, &w, None, &mut out)?))?;
        row(r, what, rows * cols * 2, t);
    }
    let mut qa = k.act(1, q)?;
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / 1e4f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let t = time(k, reps, || Ok(k.rope(&mut qa, head_dim, &[127], &inv)?))?;
    row(r, "RoPE of Q", 0, t);
    let (gate, up) = (k.act(1, intermediate)?, k.act(1, intermediate)?);
    let mut act = k.act(1, intermediate)?;
    let t = time(k, reps, || Ok(k.silu_mul(&gate, &up, &mut act)?))?;
    row(r, "SiLU · up", 0, t);
    Ok(())
}

/// A step's time to queue against its time to finish, and its driver
/// calls: `step` runs one forward pass that reads nothing back.
pub fn step_split(
    r: &mut Report,
    k: &Cuda,
    what: &str,
    mut step: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut queued = Vec::new();
    let mut done = Vec::new();
    let mut calls = 0;
    for _ in 0..8 {
        k.synchronize()?;
        let before = k.driver_calls();
        let t = Instant::now();
        step()?;
        queued.push(t.elapsed().as_secs_f64());
        k.synchronize()?;
        done.push(t.elapsed().as_secs_f64());
        calls = k.driver_calls() - before;
    }
    queued.sort_by(f64::total_cmp);
    done.sort_by(f64::total_cmp);
    r.note(format!(
        "| {what} | {calls} driver calls | queued in {:.2} ms | done in {:.2} ms |",
        queued[4] * 1e3,
        done[4] * 1e3
    ));
    Ok(())
}

/// GPU time by kernel over one run of `step` (events around each launch),
/// against the step's wall time without them.
pub fn kernels_of_step(
    r: &mut Report,
    k: &Cuda,
    what: &str,
    mut step: impl FnMut() -> Result<()>,
) -> Result<()> {
    step()?;
    k.synchronize()?;
    let t = Instant::now();
    step()?;
    k.synchronize()?;
    let wall = t.elapsed().as_secs_f64() * 1e6;
    k.time_launches(true)?;
    step()?;
    let times = k.launch_times()?;
    k.time_launches(false)?;
    let busy: f64 = times.iter().map(|t| t.2).sum();
    r.note(format!(
        "\n{what}: {wall:.0} µs wall (untimed run), {busy:.0} µs inside launches ({:.0}%): by kernel\n",
        100.0 * busy / wall
    ));
    r.note("| kernel | launches | µs in all | µs each |".into());
    r.note("|---|---|---|---|".into());
    for (name, n, us) in times {
        r.note(format!("| {name} | {n} | {us:.0} | {:.1} |", us / n as f64));
    }
    Ok(())
}
