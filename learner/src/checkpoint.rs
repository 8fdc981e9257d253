//! Atomic, checksummed checkpoints with keep-last-N.
//!
//! Layout of `ROOT/step-00000042/`:
//! - `model.safetensors`: weights under their Hugging Face names, plus any extra files given
//!   (`config.json`, `tokenizer.json`, …), so the directory loads in the policy loader and in
//!   HF transformers as a model directory;
//! - `optimizer.safetensors`: AdamW moments (and f32 master weights);
//! - `state.json`: step, optimizer step, policy version, sampler cursor, RNG states — opaque JSON
//!   owned by the caller;
//! - `MANIFEST.json`: SHA-256 and size of every file above.
//!
//! A checkpoint is written into `step-….tmp`, every file fsynced, then renamed into place and
//! the directory fsynced: a crash leaves either the previous checkpoints or the new one, never a
//! half-written directory that looks valid. Loading verifies every checksum and falls back to the
//! newest intact checkpoint, saying why it skipped the others.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const MANIFEST: &str = "MANIFEST.json";

/// Everything a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Training steps completed.
    pub step: u64,
    /// Optimizer updates completed.
    pub optimizer_step: u64,
    /// Policy version of the weights.
    pub policy_version: u64,
    /// Caller-owned state: sampler cursor, RNG states, experiment id, … (opaque here).
    pub extra: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: u64,
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    sha256: String,
    bytes: u64,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub state: CheckpointState,
}

/// Writes and finds checkpoints under one root directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    keep_last: usize,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fsync_path(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(path, e))
}

impl CheckpointStore {
    /// A store under `root`, keeping the newest `keep_last` checkpoints (at least 1).
    pub fn new(root: impl Into<PathBuf>, keep_last: usize) -> Self {
        Self {
            root: root.into(),
            keep_last: keep_last.max(1),
        }
    }

    fn dir_for(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// Writes one checkpoint atomically and prunes old ones. `extra_files` (name, bytes) are
    /// copied in as they are (e.g. `config.json`, `tokenizer.json`).
    pub fn save(
        &self,
        weights: &HashMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
        state: &CheckpointState,
        extra_files: &[(&str, &[u8])],
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).map_err(|e| io_err(&self.root, e))?;
        let final_dir = self.dir_for(state.step);
        let tmp = self.root.join(format!("step-{:08}.tmp", state.step));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;

        candle_core::safetensors::save(weights, tmp.join(MODEL))?;
        candle_core::safetensors::save(optimizer, tmp.join(OPTIMIZER))?;
        let state_json = serde_json::to_vec_pretty(state).map_err(|e| Error::Checkpoint {
            path: tmp.join(STATE),
            reason: e.to_string(),
        })?;
        fs::write(tmp.join(STATE), &state_json).map_err(|e| io_err(&tmp.join(STATE), e))?;
        for (name, bytes) in extra_files {
            if name.contains('/') || [MODEL, OPTIMIZER, STATE, MANIFEST].contains(name) {
                return Err(Error::Checkpoint {
                    path: tmp.join(name),
                    reason: "extra file names must be plain and not clash with checkpoint files"
                        .into(),
                });
            }
            fs::write(tmp.join(name), bytes).map_err(|e| io_err(&tmp.join(name), e))?;
        }

        let mut files = BTreeMap::new();
        let mut names: Vec<String> = vec![MODEL.into(), OPTIMIZER.into(), STATE.into()];
        names.extend(extra_files.iter().map(|(n, _)| n.to_string()));
        for name in names {
            let path = tmp.join(&name);
            let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
            fsync_path(&path)?;
            files.insert(
                name,
                FileEntry {
                    sha256: sha256_hex(&bytes),
                    bytes: bytes.len() as u64,
                },
            );
        }
        let manifest = Manifest {
            step: state.step,
            files,
        };
        let mpath = tmp.join(MANIFEST);
        let mut f = fs::File::create(&mpath).map_err(|e| io_err(&mpath, e))?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).unwrap_or_default())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(&mpath, e))?;
        fsync_path(&tmp)?;

        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| io_err(&final_dir, e))?;
        fsync_path(&self.root)?;
        self.prune()?;
        Ok(final_dir)
    }

    /// Checkpoint directories (complete or not), oldest first.
    fn step_dirs(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.root, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn prune(&self) -> Result<()> {
        let dirs = self.step_dirs()?;
        let excess = dirs.len().saturating_sub(self.keep_last);
        for (_, dir) in dirs.into_iter().take(excess) {
            fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        Ok(())
    }

    /// Verifies a checkpoint directory against its manifest.
    pub fn verify(dir: &Path) -> Result<()> {
        let mpath = dir.join(MANIFEST);
        let text = fs::read(&mpath).map_err(|e| io_err(&mpath, e))?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
            path: mpath.clone(),
            reason: format!("unreadable manifest: {e}"),
        })?;
        for (name, entry) in &manifest.files {
            let path = dir.join(name);
            let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
            let sha = sha256_hex(&bytes);
            if bytes.len() as u64 != entry.bytes || sha != entry.sha256 {
                return Err(Error::Checkpoint {
                    path,
                    reason: format!(
                        "checksum mismatch: manifest says {} bytes sha256 {}, found {} bytes sha256 {}",
                        entry.bytes,
                        entry.sha256,
                        bytes.len(),
                        sha
                    ),
                });
            }
        }
        Ok(())
    }

    /// Loads one checkpoint directory after verifying it.
    pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
        Self::verify(dir)?;
        let weights = candle_core::safetensors::load(dir.join(MODEL), device)?;
        let optimizer = candle_core::safetensors::load(dir.join(OPTIMIZER), device)?;
        let spath = dir.join(STATE);
        let text = fs::read(&spath).map_err(|e| io_err(&spath, e))?;
        let state = serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
            path: spath,
            reason: format!("unreadable state: {e}"),
        })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            weights,
            optimizer,
            state,
        })
    }

    /// The newest intact checkpoint, if any; damaged ones are skipped with a warning.
    pub fn load_latest(&self, device: &Device) -> Result<Option<Checkpoint>> {
        for (_, dir) in self.step_dirs()?.into_iter().rev() {
            match Self::load(&dir, device) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => tracing::warn!("skipping damaged checkpoint {}: {e}", dir.display()),
            }
        }
        Ok(None)
    }
}
