//! Platter's data layer: the binary [`Mask`] used everywhere, COCO RLE, coordinate spaces, the
//! [`Segmenter`] interface, ground-truth objects, the JSONL manifest, the FoodReasonSeg reader and
//! a synthetic food world. See `docs/data.md`.

pub mod coords;
pub mod error;
pub mod foodreasonseg;
pub mod gt;
pub mod imageio;
pub mod manifest;
pub mod mask;
pub mod overlay;
pub mod rle;
pub mod segment;
pub mod stats;
pub mod synth;

pub use coords::{ImageSize, OriginalBox, OriginalPoint, PolicyBox, PolicyPoint, PolicySpace};
pub use error::{Error, Result};
pub use gt::{FilterStats, GtObject, GtRegion, inscribed_circle_center};
pub use imageio::ImageLimits;
pub use manifest::{
    LoadedSample, ManifestRecord, MaskSource, PrecomputedObjects, Split, read_manifest,
    write_manifest,
};
pub use mask::{Mask, PixelBox};
pub use rle::{CocoRle, RleCounts};
pub use segment::{BoxSegmenter, ObjectPrompt, PromptPoint, SegmentError, Segmenter, merge_masks};
