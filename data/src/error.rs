//! The one error type of `platter-data`.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, converting or generating data.
///
/// Each variant says what was expected, what was found and where (file, line, sample id).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two masks (or a mask and an image) that must have the same size do not.
    #[error(
        "{what}: size mismatch, expected {expected_w}x{expected_h} (WxH), found {found_w}x{found_h}"
    )]
    SizeMismatch {
        /// What was being compared.
        what: String,
        /// Expected width.
        expected_w: u32,
        /// Expected height.
        expected_h: u32,
        /// Found width.
        found_w: u32,
        /// Found height.
        found_h: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image or mask could not be decoded or encoded.
    #[error("{what}: cannot decode or encode image: {source}")]
    Image {
        /// The file or buffer.
        what: String,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// An image header claims more pixels than the configured limits (decompression bomb guard).
    #[error(
        "{what}: image is {width}x{height}, over the limit of {max_side} px per side or {max_pixels} pixels"
    )]
    ImageTooLarge {
        /// The file or buffer.
        what: String,
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// Limit per side.
        max_side: u32,
        /// Limit on width × height.
        max_pixels: u64,
    },
    /// An image has a pixel format we cannot interpret for this purpose.
    #[error("{what}: expected {expected}, found {found}")]
    Format {
        /// The file or buffer.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A COCO run-length encoding is malformed.
    #[error("invalid COCO RLE: {0}")]
    Rle(String),
    /// A JSON or JSONL file has a malformed record.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for whole-file JSON).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A dataset is inconsistent (unknown class, empty target, bad split, ...).
    #[error("{0}")]
    Dataset(String),
    /// A problem with one sample: wraps the cause with the sample id.
    #[error("sample {id}: {source}")]
    Sample {
        /// The sample id.
        id: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// Invalid arguments or configuration.
    #[error("invalid config: {0}")]
    Config(String),
}

impl Error {
    /// Wrap `self` with the id of the sample it concerns.
    #[must_use]
    pub fn in_sample(self, id: impl Into<String>) -> Error {
        Error::Sample {
            id: id.into(),
            source: Box::new(self),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
