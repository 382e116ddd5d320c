//! Sampling on the GPU, so that only token ids cross to the host:
//! penalties on the logits, greedy choice, and temperature / top-k /
//! top-p / min-p sampling from a uniform draw the host supplies per row
//! (from the request's seeded generator). The kernels are
//! `kernels/sampling.cu`; the engine does not call these yet (it samples
//! on the host, where grammar masks and log-probabilities also live).
//!
//! Must never: read a row beyond the logits' shape, or draw its own
//! randomness (the same seed must give the same tokens on every device).

use super::device::args;
use super::ops::grid as rows;
use super::{Cuda, CudaAct};
use crate::{shape, KernelError};

const THREADS: u32 = 256;

impl Cuda {
    fn ids(&self, mem: &super::backend::Mem, n: usize) -> Result<Vec<u32>, KernelError> {
        let mut out = vec![0u32; n];
        self.gpu.download(mem, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// Each row's largest logit (the lowest index among equals).
    pub fn argmax_rows(&self, logits: &CudaAct) -> Result<Vec<u32>, KernelError> {
        if logits.rows == 0 {
            return Ok(Vec::new());
        }
        let out = self.gpu.alloc(logits.rows * 4)?;
        let vocab = logits.cols as u32;
        self.gpu.launch(
            "argmax",
            rows(logits.rows, THREADS),
            &mut args![&logits.mem.ptr, &out.ptr, &vocab],
        )?;
        self.ids(&out, logits.rows)
    }

    /// Penalties in place: row `r`'s seen tokens with their counts,
    /// repetition (divides positive logits, multiplies negative ones),
    /// presence (once) and frequency (per occurrence).
    pub fn penalize(
        &self,
        logits: &mut CudaAct,
        seen: &[Vec<(u32, u32)>],
        repetition: f32,
        presence: f32,
        frequency: f32,
    ) -> Result<(), KernelError> {
        if seen.len() != logits.rows {
            return Err(shape("penalize", "one list of seen tokens per row"));
        }
        let (mut tokens, mut counts, mut offsets) = (Vec::new(), Vec::new(), vec![0u32]);
        for row in seen {
            for &(t, c) in row {
                tokens.push(t);
                counts.push(c);
            }
            offsets.push(tokens.len() as u32);
        }
        if logits.rows == 0 {
            return Ok(());
        }
        let (t, c, o) = (
            self.u32s(&tokens)?,
            self.u32s(&counts)?,
            self.u32s(&offsets)?,
        );
        let vocab = logits.cols as u32;
        self.gpu.launch(
            "penalties",
            rows(logits.rows, 32),
            &mut args![
                &logits.mem.ptr,
                &t.ptr,
                &c.ptr,
                &o.ptr,
                &vocab,
                &repetition,
                &presence,
                &frequency
            ],
        )
    }

    /// One token per row: softmax at `temperature`, the tokens kept by
    /// top-k (0: off), top-p and min-p, and the draw `uniform[row]` in
    /// [0, 1) over their probabilities in index order.
    pub fn sample_rows(
        &self,
        logits: &CudaAct,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        min_p: f32,
        uniform: &[f32],
    ) -> Result<Vec<u32>, KernelError> {
        if uniform.len() != logits.rows {
            return Err(shape("sample_rows", "one uniform draw per row"));
        }
        if logits.rows == 0 {
            return Ok(Vec::new());
        }
        let probs = self.zeros(logits.rows * logits.cols)?;
        let vocab = logits.cols as u32;
        self.gpu.launch(
            "softmax",
            rows(logits.rows, THREADS),
            &mut args![&logits.mem.ptr, &probs.ptr, &vocab, &temperature],
        )?;
        let u = self.f32s(uniform)?;
        let out = self.gpu.alloc(logits.rows * 4)?;
        self.gpu.launch(
            "sample",
            rows(logits.rows, THREADS),
            &mut args![&probs.ptr, &u.ptr, &out.ptr, &vocab, &top_k, &top_p, &min_p],
        )?;
        self.ids(&out, logits.rows)
    }
}
