//! Checkpoint reading (Meta `.pt` holding `{"model": state_dict}`, or `.safetensors`) and the
//! name/shape check that runs before any weight is used.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::error::{Error, Result};

/// Reads every tensor of a checkpoint into memory, as f32 on `device`.
///
/// `.safetensors` files are read directly; anything else is treated as a PyTorch pickle and the
/// state dict is taken from its `"model"` entry (Meta's layout), or from the top level when the
/// file has no such entry.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let err = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| err(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect()
    } else {
        match candle_core::pickle::read_all_with_key(path, Some("model")) {
            Ok(v) if !v.is_empty() => v,
            _ => candle_core::pickle::read_all(path)
                .map_err(|e| err(format!("not a readable PyTorch checkpoint: {e}")))?,
        }
    };
    if tensors.is_empty() {
        return Err(err("the file holds no tensors".into()));
    }
    tensors
        .into_iter()
        .map(|(k, t)| {
            let t = t.to_dtype(DType::F32).and_then(|t| t.to_device(device));
            t.map(|t| (k, t)).map_err(Error::from)
        })
        .collect()
}

/// A `VarBuilder` backend that records every requested name and shape and returns zero-cost
/// broadcast zeros, so the model's own constructors list what a checkpoint must contain.
#[derive(Default, Clone)]
pub(crate) struct ShapeRecorder {
    pub(crate) seen: Arc<Mutex<Vec<(String, Shape)>>>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name.to_string(), s.clone()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape recorder cannot serve {name} without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Compares the expected tensors with the checkpoint and lists every problem.
pub(crate) fn check_tensors(
    expected: &[(String, Shape)],
    found: &HashMap<String, Tensor>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name) {
            None => problems.push(format!(
                "missing tensor {name} (expected shape {:?})",
                shape.dims()
            )),
            Some(t) if t.dims() != shape.dims() => problems.push(format!(
                "tensor {name}: expected shape {:?}, found {:?}",
                shape.dims(),
                t.dims()
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Builds a var builder over checked tensors.
pub(crate) fn var_builder(
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_tensors(tensors, DType::F32, device)
}
