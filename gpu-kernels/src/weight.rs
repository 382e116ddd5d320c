//! The host form of a weight: its dtype, shape and bytes — a window on a
//! shared buffer (a memory-mapped safetensors file) viewed in place when
//! it is aligned for its dtype, or an owned copy when it is not.
//!
//! Must never: convert a weight's dtype (kernels read each dtype as
//! stored), or copy bytes that can be viewed in place.

use crate::KernelError;
use half::f16;
use std::ops::Range;
use std::sync::Arc;

/// The dtypes a weight may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// A weight's elements as stored: bf16 as raw bits.
#[derive(Debug, Clone, Copy)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [u16]),
}

impl Elems<'_> {
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(s) => s.len(),
            Elems::F16(s) => s.len(),
            Elems::BF16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elems::F32(s) => s[i],
            Elems::F16(s) => s[i].to_f32(),
            Elems::BF16(s) => bf16_to_f32(s[i]),
        }
    }
    /// Elements `range` as f32, appended to `out`.
    pub fn extend_f32(&self, range: Range<usize>, out: &mut Vec<f32>) {
        match self {
            Elems::F32(s) => out.extend_from_slice(&s[range]),
            Elems::F16(s) => out.extend(s[range].iter().map(|h| h.to_f32())),
            Elems::BF16(s) => out.extend(s[range].iter().map(|&b| bf16_to_f32(b))),
        }
    }
}

/// bf16 bits to f32: the bf16 is the f32's upper half.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

enum Data {
    Shared {
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    },
    F32(Vec<f32>),
    U16(Vec<u16>),
}

/// A weight on the host.
pub struct HostWeight {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

impl std::fmt::Debug for HostWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.name, self.dtype.name(), self.shape)
    }
}

impl HostWeight {
    /// A window `range` of `bytes` holding `shape` elements of `dtype`;
    /// viewed in place when aligned, copied otherwise.
    pub fn shared(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    ) -> Result<Self, KernelError> {
        let elems: usize = shape.iter().product();
        let err = |detail: String| KernelError::Weight {
            what: name.to_string(),
            detail,
        };
        let all = (*bytes).as_ref();
        let Some(window) = all.get(range.clone()) else {
            return Err(err(format!(
                "bytes {}..{} are outside its file of {} bytes",
                range.start,
                range.end,
                all.len()
            )));
        };
        if window.len() != elems * dtype.size() {
            return Err(err(format!(
                "{} bytes for shape {shape:?} in {} (expected {})",
                window.len(),
                dtype.name(),
                elems * dtype.size()
            )));
        }
        let aligned = (window.as_ptr() as usize).is_multiple_of(dtype.size());
        let data = if aligned {
            Data::Shared { bytes, range }
        } else {
            match dtype {
                DType::F32 => Data::F32(
                    window
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                DType::F16 | DType::BF16 => Data::U16(
                    window
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
            }
        };
        Ok(Self {
            name: name.to_string(),
            dtype,
            shape,
            data,
        })
    }

    /// An owned f32 weight (tests, generated tables).
    pub fn owned_f32(name: &str, shape: Vec<usize>, values: Vec<f32>) -> Result<Self, KernelError> {
        let elems: usize = shape.iter().product();
        if values.len() != elems {
            return Err(KernelError::Weight {
                what: name.to_string(),
                detail: format!("{} values for shape {shape:?}", values.len()),
            });
        }
        Ok(Self {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            data: Data::F32(values),
        })
    }

    /// An owned 16-bit weight (bf16 or f16 bits).
    pub fn owned_u16(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        bits: Vec<u16>,
    ) -> Result<Self, KernelError> {
        let elems: usize = shape.iter().product();
        if bits.len() != elems || dtype == DType::F32 {
            return Err(KernelError::Weight {
                what: name.to_string(),
                detail: format!("{} {} values for shape {shape:?}", bits.len(), dtype.name()),
            });
        }
        Ok(Self {
            name: name.to_string(),
            dtype,
            shape,
            data: Data::U16(bits),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Whether the elements are viewed in place (not copied).
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Data::Shared { .. })
    }

    /// The elements as stored.
    pub fn elems(&self) -> Elems<'_> {
        match (&self.data, self.dtype) {
            (Data::F32(v), _) => Elems::F32(v),
            (Data::U16(v), DType::F16) => Elems::F16(bytemuck::cast_slice(v)),
            (Data::U16(v), _) => Elems::BF16(v),
            (Data::Shared { bytes, range }, dtype) => {
                // Checked aligned and sized in `shared`.
                let window = &(**bytes).as_ref()[range.clone()];
                match dtype {
                    DType::F32 => Elems::F32(bytemuck::cast_slice(window)),
                    DType::F16 => Elems::F16(bytemuck::cast_slice(window)),
                    DType::BF16 => Elems::BF16(bytemuck::cast_slice(window)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_window_is_viewed_in_place_and_a_misaligned_one_copied() {
        let mut raw = vec![0u8; 2];
        for v in [1.5f32, -2.0, 3.25] {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        // Two copies of the data: one at offset 2 (misaligned for f32 when
        // the buffer is 4-aligned), one at offset 4 after a shift.
        let mut shifted = vec![0u8; 4];
        shifted.extend_from_slice(&raw[2..]);
        let a: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(shifted);
        let w = HostWeight::shared("w", DType::F32, vec![3], a, 4..16).unwrap();
        let b: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(raw);
        let v = HostWeight::shared("v", DType::F32, vec![3], b, 2..14).unwrap();
        for w in [&w, &v] {
            let e = w.elems();
            assert_eq!((e.get(0), e.get(1), e.get(2)), (1.5, -2.0, 3.25));
        }
        // Vec<u8> allocations are at least 4-aligned here (the allocator's
        // minimum), so the first is in place and the second is a copy.
        assert!(w.is_mapped());
        assert!(!v.is_mapped());
    }

    #[test]
    fn a_window_of_the_wrong_size_names_the_weight() {
        let a: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![0u8; 10]);
        let err =
            HostWeight::shared("model.norm.weight", DType::BF16, vec![4], a, 0..10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weight model.norm.weight: 10 bytes for shape [4] in bf16 (expected 8)"
        );
    }

    #[test]
    fn bf16_bits_are_the_upper_half_of_an_f32() {
        for v in [1.0f32, -0.5, 393216.0, 0.0] {
            assert_eq!(bf16_to_f32((v.to_bits() >> 16) as u16), v);
        }
    }
}
