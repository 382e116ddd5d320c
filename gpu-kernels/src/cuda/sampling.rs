//! Choosing tokens on the GPU, so that only token ids cross to the host:
//! each row's [`Pick`] — adjustments (bias and penalties), then greedy or
//! a draw with temperature, top-k, min-p and top-p from a uniform number
//! the host supplies (from the request's seeded generator). The kernels
//! are `kernels/sampling.cu`; the rule is [`Pick`]'s, shared with the
//! CPU's sampler.
//!
//! Must never: read a row beyond the logits' shape, or draw its own
//! randomness (the same seed must give the same tokens on every device).

use super::device::args;
use super::ops::grid as rows;
use super::{Cuda, CudaAct};
use crate::{shape, KernelError, Pick};

const THREADS: u32 = 256;

/// Words of one row's parameters (the kernels' `PickParams`).
const PARAM_WORDS: usize = 8;

impl Cuda {
    /// One token per row of `logits`, by each row's [`Pick`].
    pub fn pick_rows(&self, logits: &mut CudaAct, picks: &[Pick]) -> Result<Vec<u32>, KernelError> {
        if picks.len() != logits.rows {
            return Err(shape(
                "pick",
                format!("{} picks for {} rows", picks.len(), logits.rows),
            ));
        }
        if logits.rows == 0 {
            return Ok(Vec::new());
        }
        let mut params = Vec::with_capacity(picks.len() * PARAM_WORDS);
        let (mut adjust, mut offsets) = (Vec::new(), vec![0u32]);
        for p in picks {
            params.extend([
                p.temperature.to_bits(),
                p.top_k,
                p.top_p.to_bits(),
                p.min_p.to_bits(),
                p.uniform.to_bits(),
                p.repetition.to_bits(),
                p.presence.to_bits(),
                p.frequency.to_bits(),
            ]);
            for a in &p.adjust {
                adjust.extend([a.token, a.bias.to_bits(), u32::from(a.seen), a.count]);
            }
            offsets.push((adjust.len() / 4) as u32);
        }
        let vocab = logits.cols as u32;
        let params = self.u32s(&params)?;
        if !adjust.is_empty() {
            let (adj, off) = (self.u32s(&adjust)?, self.u32s(&offsets)?);
            self.gpu.launch(
                "adjust_logits",
                rows(logits.rows, 32),
                &mut args![&logits.mem.ptr, &params.ptr, &adj.ptr, &off.ptr, &vocab],
            )?;
        }
        let sampled = picks.iter().any(|p| p.temperature > 0.0);
        let probs = self.zeros(if sampled {
            logits.rows * logits.cols
        } else {
            1
        })?;
        let out = self.gpu.alloc(logits.rows * 4)?;
        self.gpu.launch(
            "pick",
            rows(logits.rows, THREADS),
            &mut args![&logits.mem.ptr, &probs.ptr, &params.ptr, &out.ptr, &vocab],
        )?;
        let mut ids = vec![0u32; logits.rows];
        self.gpu
            .download(&out, bytemuck::cast_slice_mut(&mut ids))?;
        Ok(ids)
    }
}
