//! Reading the encoder's tensors out of `model.safetensors` as plain f32.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::super::EmbedError;

/// The checkpoint's tensors by name. Sentence-transformers checkpoints name
/// them `embeddings.…` / `encoder.…`; some BERT exports prefix `bert.`, which
/// is tried second.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Loads every tensor of the file onto the CPU.
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| EmbedError::File { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self { tensors })
    }

    /// The tensor `name` as f32 values in row-major order, checked against
    /// the shape the config implies.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let tensor = self.tensor(name)?;
        if tensor.dims() != shape {
            return Err(EmbedError::Weights(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Row 0 of a `[rows, width]` table.
    pub fn first_row(&self, name: &str, width: usize) -> Result<Vec<f32>, EmbedError> {
        let tensor = self.tensor(name)?;
        match tensor.dims() {
            [rows, w] if *rows >= 1 && *w == width => Ok(tensor.get(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            dims => Err(EmbedError::Weights(format!("tensor {name} has shape {dims:?}, expected [_, {width}]"))),
        }
    }

    fn tensor(&self, name: &str) -> Result<&Tensor, EmbedError> {
        self.tensors
            .get(name)
            .or_else(|| self.tensors.get(&format!("bert.{name}")))
            .ok_or_else(|| EmbedError::Weights(format!("tensor {name} is missing")))
    }
}
