//! A Hugging Face model directory on disk: `config.json`, the weights in
//! `model.safetensors` or shards named by `model.safetensors.index.json`,
//! each file memory-mapped once and its tensors viewed in place.
//!
//! Must never: copy a tensor whose dtype the kernels read as stored, or
//! guess a tensor that is not there (each is looked up by its exact name,
//! and a missing one is an error naming it).
//!
//! Memory-mapping is `unsafe` in Rust because another process may change
//! the file under the map; a model directory is read-only input, as for
//! every inference server that maps its weights (llama.cpp, vLLM, candle).

use crate::error::{file_err, Result, WorkerError};
use lattice_gpu_kernels::{DType, HostWeight};
use memmap2::Mmap;
use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Shared = Arc<dyn AsRef<[u8]> + Send + Sync>;

struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// The tensors of a model directory, by name.
pub struct Tensors {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    index: HashMap<String, Entry>,
}

fn map(path: &Path) -> Result<Arc<Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    // SAFETY: the map is read-only and the model directory is treated as
    // immutable input while the worker runs (see the module header).
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
    Ok(Arc::new(map))
}

impl Tensors {
    /// Maps every weight file of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| file_err(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_err(&index_path, e))?;
            let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
                return Err(file_err(&index_path, "no `weight_map` object"));
            };
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            if let Some(bad) = shards.iter().find(|s| s.contains('/') || s.contains("..")) {
                return Err(file_err(
                    &index_path,
                    format!("shard {bad} is outside the directory"),
                ));
            }
            shards.iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            if !path.exists() {
                return Err(file_err(&path, "not found (no weights)"));
            }
            let bytes = map(&path)?;
            let (header, meta) = SafeTensors::read_metadata((*bytes).as_ref())
                .map_err(|e| file_err(&path, format!("not a safetensors file: {e}")))?;
            let data_start = 8 + header;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                index.insert(
                    name,
                    Entry {
                        file: files.len(),
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        range: data_start + a..data_start + b,
                    },
                );
            }
            files.push((path, bytes));
        }
        Ok(Self { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The dtype most weights are stored in.
    pub fn dtype(&self) -> Option<DType> {
        let mut counts: HashMap<&'static str, (usize, DType)> = HashMap::new();
        for e in self.index.values() {
            if let Some(d) = dtype(e.dtype) {
                counts.entry(d.name()).or_insert((0, d)).0 += 1;
            }
        }
        counts.values().max_by_key(|(n, _)| *n).map(|(_, d)| *d)
    }

    /// Tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostWeight> {
        let err = |detail: String| WorkerError::Tensor {
            name: name.to_string(),
            detail,
        };
        let Some(e) = self.index.get(name) else {
            return Err(err("missing from the model's safetensors files".into()));
        };
        if e.shape != shape {
            return Err(err(format!("shape {:?}, expected {shape:?}", e.shape)));
        }
        let Some(dt) = dtype(e.dtype) else {
            return Err(err(format!("dtype {:?} (served: f32, f16, bf16)", e.dtype)));
        };
        let (_, map) = &self.files[e.file];
        let bytes: Shared = map.clone();
        Ok(HostWeight::shared(
            name,
            dt,
            shape.to_vec(),
            bytes,
            e.range.clone(),
        )?)
    }

    /// Takes the mapped files' pages out of this process's resident set
    /// once the device holds what it copied (tiles, vectors in f32): they
    /// stay in the page cache, and a weight still viewed in place faults
    /// its pages back in when a step reads it. Without this, a model whose
    /// matrices were tiled counted twice in the worker's RSS.
    pub fn release_pages(&self) {
        for (path, map) in &self.files {
            // SAFETY: the map is shared and read-only (`Mmap::map`):
            // `MADV_DONTNEED` drops its page-table entries and the next
            // read faults the same bytes in from the page cache; nothing
            // is discarded, no reference into it is invalidated.
            #[allow(unsafe_code)]
            let done = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            if let Err(e) = done {
                tracing::debug!(file = %path.display(), "madvise(DONTNEED): {e}");
            }
        }
    }
}

fn dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}
