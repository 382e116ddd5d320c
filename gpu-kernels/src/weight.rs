//! The host form of a weight: its dtype, shape, layout and bytes — a
//! window on a shared buffer (a memory-mapped safetensors file) viewed in
//! place when it is aligned for its dtype, or an owned copy when it is
//! not, or a bf16 matrix reordered into tiles for a device that asked
//! ([`HostWeight::tiled`]).
//!
//! Must never: convert a weight's dtype (kernels read each dtype as
//! stored), copy bytes that can be viewed in place unless a device asked
//! for tiles, or hand out a tiled matrix's elements as if they were rows.

use crate::KernelError;
use half::f16;
use std::ops::Range;
use std::sync::Arc;

mod pages;

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

/// How a matrix's elements are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Row-major, as stored in the file.
    Rows,
    /// bf16 rows in tiles of [`TILE_ROWS`]: for each tile, its rows'
    /// first [`TILE_CHUNK`] elements one after another, then their next
    /// [`TILE_CHUNK`], and so on. A tile of the CPU's `vdpbf16ps` products
    /// is then one sequential stream from memory instead of four
    /// interleaved ones (measured, `lattice-load-worker --kernels`, tiles
    /// in huge pages: 1.3–2.2× the products' rate at 4–32 activation rows
    /// on the gate and up shapes, 1.05–1.25× on the down shape, weights
    /// read from memory; a whole decode step of 1 to 64 sequences 8–33%
    /// shorter, docs/benchmarks-log.md).
    Tiles,
}

/// Rows per tile of [`Layout::Tiles`].
pub const TILE_ROWS: usize = 4;
/// Elements of one row taken at a time in [`Layout::Tiles`]: one
/// 64-byte cache line of bf16.
pub const TILE_CHUNK: usize = 32;

enum Data {
    Shared {
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    },
    F32(Vec<f32>),
    U16(Vec<u16>),
    /// A device's copy: 64-byte aligned (a tile's chunks are whole cache
    /// lines, none split across two), in huge pages when large.
    Pages(pages::Pages),
}

/// A weight on the host.
pub struct HostWeight {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    layout: Layout,
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
            layout: Layout::Rows,
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
            layout: Layout::Rows,
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
            layout: Layout::Rows,
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
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// This bf16 matrix reordered into [`Layout::Tiles`] (an owned copy),
    /// or `None` when it is not a bf16 matrix in rows whose rows divide
    /// into tiles of [`TILE_ROWS`] and whose columns into pairs of
    /// [`TILE_CHUNK`] (the `vdpbf16ps` tile takes two chunks per step), or
    /// when no memory is left for the copy.
    pub fn tiled(&self) -> Option<Self> {
        let [rows, cols] = *self.shape() else {
            return None;
        };
        let fits = rows.is_multiple_of(TILE_ROWS) && cols.is_multiple_of(2 * TILE_CHUNK);
        let Elems::BF16(src) = self.elems() else {
            return None;
        };
        if !fits || self.layout != Layout::Rows || rows == 0 || cols == 0 {
            return None;
        }
        let mut pages = pages::Pages::zeroed(src.len())?;
        let mut dst = pages.as_mut_slice().chunks_exact_mut(TILE_CHUNK);
        for tile in src.chunks_exact(TILE_ROWS * cols) {
            for c in (0..cols).step_by(TILE_CHUNK) {
                for (row, d) in tile.chunks_exact(cols).zip(dst.by_ref()) {
                    d.copy_from_slice(&row[c..c + TILE_CHUNK]);
                }
            }
        }
        Some(Self {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            layout: Layout::Tiles,
            data: Data::Pages(pages),
        })
    }

    /// The elements as stored, in the weight's [`Layout`].
    pub fn elems(&self) -> Elems<'_> {
        match (&self.data, self.dtype) {
            (Data::F32(v), _) => Elems::F32(v),
            (Data::U16(v), DType::F16) => Elems::F16(bytemuck::cast_slice(v)),
            (Data::U16(v), _) => Elems::BF16(v),
            (Data::Pages(p), DType::F16) => Elems::F16(bytemuck::cast_slice(p.as_slice())),
            (Data::Pages(p), _) => Elems::BF16(p.as_slice()),
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
    fn a_tiled_matrix_holds_each_tile_s_rows_chunk_by_chunk() {
        let (rows, cols) = (8, 128);
        let bits: Vec<u16> = (0..rows * cols).map(|i| i as u16).collect();
        let w = HostWeight::owned_u16("w", DType::BF16, vec![rows, cols], bits).unwrap();
        let t = w.tiled().unwrap();
        assert_eq!(
            (t.layout(), t.shape(), t.dtype()),
            (Layout::Tiles, &[8usize, 128][..], DType::BF16)
        );
        let Elems::BF16(e) = t.elems() else {
            panic!("bf16 stays bf16")
        };
        assert_eq!((e.len(), e.as_ptr() as usize % 64), (rows * cols, 0));
        // Element (r, c) sits in tile r / 4, chunk c / 32, slot r % 4.
        for r in 0..rows {
            for c in 0..cols {
                let at = (r / 4) * 4 * cols + (c / 32) * 4 * 32 + (r % 4) * 32 + c % 32;
                assert_eq!(e[at], (r * cols + c) as u16, "({r}, {c})");
            }
        }
        // Shapes that do not divide, other dtypes and vectors stay rows.
        let bf16 = |shape: Vec<usize>| {
            let n = shape.iter().product();
            HostWeight::owned_u16("w", DType::BF16, shape, vec![0; n]).unwrap()
        };
        assert!(bf16(vec![6, 128]).tiled().is_none());
        assert!(bf16(vec![8, 96]).tiled().is_none());
        assert!(bf16(vec![128]).tiled().is_none());
        assert!(t.tiled().is_none());
        let f16 = HostWeight::owned_u16("w", DType::F16, vec![8, 128], vec![0; 1024]).unwrap();
        assert!(f16.tiled().is_none());
        let f32 = HostWeight::owned_f32("w", vec![4, 64], vec![0.0; 256]).unwrap();
        assert!(f32.tiled().is_none());
    }

    #[test]
    fn bf16_bits_are_the_upper_half_of_an_f32() {
        for v in [1.0f32, -0.5, 393216.0, 0.0] {
            assert_eq!(bf16_to_f32((v.to_bits() >> 16) as u16), v);
        }
    }
}
