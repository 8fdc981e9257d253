//! A published policy version: its weights as one safetensors blob, and the chunking used by
//! the learner's `SubscribeWeights` stream.

use std::sync::Arc;

use crate::v1::WeightChunk;

/// The weights of one policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyWeights {
    /// Policy version (0 = the initial policy).
    pub version: u64,
    /// The tensors, safetensors-encoded.
    pub safetensors: Arc<Vec<u8>>,
}

impl PolicyWeights {
    /// Splits into stream chunks of at most `chunk_bytes` (at least one chunk, even when empty).
    pub fn to_chunks(&self, chunk_bytes: usize) -> Vec<WeightChunk> {
        let size = chunk_bytes.max(1);
        let parts: Vec<&[u8]> = if self.safetensors.is_empty() {
            vec![&[]]
        } else {
            self.safetensors.chunks(size).collect()
        };
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        parts
            .into_iter()
            .enumerate()
            .map(|(i, d)| WeightChunk {
                version: self.version,
                index: u32::try_from(i).unwrap_or(u32::MAX),
                count,
                data: prost::bytes::Bytes::copy_from_slice(d),
            })
            .collect()
    }

    /// Reassembles chunks of one version, checking order and count; the error says what broke.
    pub fn from_chunks(chunks: &[WeightChunk]) -> Result<Self, String> {
        let first = chunks.first().ok_or("no weight chunks")?;
        if chunks.len() != first.count as usize {
            return Err(format!(
                "version {}: expected {} chunks, found {}",
                first.version,
                first.count,
                chunks.len()
            ));
        }
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if c.version != first.version || c.index as usize != i {
                return Err(format!(
                    "chunk {i}: expected version {} index {i}, found version {} index {}",
                    first.version, c.version, c.index
                ));
            }
            out.extend_from_slice(&c.data);
        }
        Ok(Self {
            version: first.version,
            safetensors: Arc::new(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip() {
        let w = PolicyWeights {
            version: 3,
            safetensors: Arc::new((0..10u8).collect()),
        };
        let chunks = w.to_chunks(4);
        assert_eq!(chunks.len(), 3);
        assert_eq!(PolicyWeights::from_chunks(&chunks).unwrap(), w);
        assert!(PolicyWeights::from_chunks(&chunks[..2]).is_err());
    }
}
