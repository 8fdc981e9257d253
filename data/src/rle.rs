//! COCO run-length encoding, bit-compatible with pycocotools.
//!
//! Runs are taken in column-major (Fortran) order, alternate off/on and start with an off run
//! (possibly 0). `counts` is either the plain list or pycocotools' compressed string: each count
//! (from the fourth on, as a delta to the count two before it) is written in 5-bit groups, low
//! group first, as characters `48 + group`, with bit 0x20 meaning "more groups follow" and bit
//! 0x10 of the last group the sign.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::imageio::ImageLimits;
use crate::mask::Mask;

/// A COCO RLE object as stored in COCO JSON: `{"size": [h, w], "counts": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]` (COCO order).
    pub size: [u32; 2],
    /// The runs, plain or compressed.
    pub counts: RleCounts,
}

/// The two spellings of RLE counts pycocotools accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// Uncompressed: a list of run lengths.
    Uncompressed(Vec<u64>),
    /// Compressed: pycocotools' LEB128-like string.
    Compressed(String),
}

/// Column-major runs of `mask`, starting with an off run.
fn runs(mask: &Mask) -> Vec<u64> {
    let mut counts = Vec::new();
    let mut current = false;
    let mut run = 0u64;
    for x in 0..mask.width() {
        for y in 0..mask.height() {
            let v = mask.get(x, y);
            if v != current {
                counts.push(run);
                run = 0;
                current = v;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

/// pycocotools `rleToString`.
pub fn compress_counts(counts: &[u64]) -> String {
    let mut s = String::new();
    for (i, &c) in counts.iter().enumerate() {
        // Counts are bounded by h·w ≤ u32² < i64::MAX.
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = x & 0x1f;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push(char::from((ch + 48) as u8));
            if !more {
                break;
            }
        }
    }
    s
}

/// pycocotools `rleFrString`, with every malformed input an error instead of undefined behaviour.
pub fn decompress_counts(s: &str) -> Result<Vec<u64>> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u64> = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(Error::Rle(format!(
                    "compressed counts end inside a number at byte {p}"
                )));
            };
            if !(48..48 + 64).contains(&b) {
                return Err(Error::Rle(format!(
                    "byte {p} of compressed counts is {b:#04x}, expected a character in '0'..='o'"
                )));
            }
            let c = i64::from(b - 48);
            if k >= 12 {
                return Err(Error::Rle(format!("count ending at byte {p} is too long")));
            }
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            let more = c & 0x20 != 0;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x = x
                .checked_add(counts[m - 2] as i64)
                .ok_or_else(|| Error::Rle(format!("count {m} overflows")))?;
        }
        if x < 0 {
            return Err(Error::Rle(format!("count {m} is negative ({x})")));
        }
        counts.push(x as u64);
    }
    Ok(counts)
}

impl Mask {
    /// Encode as COCO RLE with compressed counts, exactly as `pycocotools.mask.encode`.
    pub fn to_coco_rle(&self) -> CocoRle {
        CocoRle {
            size: [self.height(), self.width()],
            counts: RleCounts::Compressed(compress_counts(&runs(self))),
        }
    }

    /// Encode as COCO RLE with the plain list of counts.
    pub fn to_coco_rle_uncompressed(&self) -> CocoRle {
        CocoRle {
            size: [self.height(), self.width()],
            counts: RleCounts::Uncompressed(runs(self)),
        }
    }

    /// Decode a COCO RLE (either spelling). The counts must cover exactly h·w pixels, and the
    /// size must fit [`ImageLimits::default`] (use [`Mask::from_coco_rle_with_limits`] to change).
    pub fn from_coco_rle(rle: &CocoRle) -> Result<Mask> {
        Mask::from_coco_rle_with_limits(rle, &ImageLimits::default())
    }

    /// [`Mask::from_coco_rle`] with explicit size limits, checked before allocating.
    pub fn from_coco_rle_with_limits(rle: &CocoRle, limits: &ImageLimits) -> Result<Mask> {
        let [h, w] = rle.size;
        limits.check("COCO RLE", w, h)?;
        let counts = match &rle.counts {
            RleCounts::Uncompressed(c) => c.clone(),
            RleCounts::Compressed(s) => decompress_counts(s)?,
        };
        let total = u64::from(h) * u64::from(w);
        let sum = counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c))
            .ok_or_else(|| Error::Rle("counts overflow".to_owned()))?;
        if sum != total {
            return Err(Error::Rle(format!(
                "counts cover {sum} pixels, expected h*w = {h}*{w} = {total}"
            )));
        }
        let mut mask = Mask::new(w, h);
        let mut pos = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if i % 2 == 1 {
                for j in pos..pos + c {
                    // Column-major: index j is column j / h, row j % h (h > 0 since c > 0).
                    let (x, y) = ((j / u64::from(h)) as u32, (j % u64::from(h)) as u32);
                    mask.set(x, y, true);
                }
            }
            pos += c;
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_runs() {
        // 3 (h) x 2 (w) mask, on at (x=0,y=1), (x=1,y=1), (x=1,y=2).
        // Column-major order: (0,0)=0 (0,1)=1 (0,2)=0 (1,0)=0 (1,1)=1 (1,2)=1
        // Runs: 1 off, 1 on, 2 off, 2 on -> [1, 1, 2, 2].
        let m = Mask::from_fn(2, 3, |x, y| (x, y) == (0, 1) || (x == 1 && y >= 1));
        let rle = m.to_coco_rle_uncompressed();
        assert_eq!(rle.size, [3, 2]);
        assert_eq!(rle.counts, RleCounts::Uncompressed(vec![1, 1, 2, 2]));
        // Compressed: 1 -> '1', 1 -> '1', 2 -> '2', then 2 - counts[1] = 1 -> '1'.
        assert_eq!(m.to_coco_rle().counts, RleCounts::Compressed("1121".into()));
        assert_eq!(Mask::from_coco_rle(&m.to_coco_rle()).unwrap(), m);
        assert_eq!(Mask::from_coco_rle(&rle).unwrap(), m);
    }

    #[test]
    fn mask_starting_on_has_leading_zero_run() {
        let m = Mask::from_fn(1, 2, |_, y| y == 0);
        assert_eq!(
            m.to_coco_rle_uncompressed().counts,
            RleCounts::Uncompressed(vec![0, 1, 1])
        );
    }

    #[test]
    fn multi_group_and_negative_delta() {
        // 100 = 0b11_00100: low group 4 (0x04) with more -> 4|0x20 = 36 -> 'T';
        // remaining 3: group 3, no sign bit -> '3'. So 100 -> "T3".
        assert_eq!(compress_counts(&[100]), "T3");
        // Fourth count 1 after second count 5: delta -4 = ...11100: group 0x1c has the sign bit
        // and x >> 5 = -1, so it ends: 0x1c + 48 = 76 = 'L'.
        let s = compress_counts(&[0, 5, 3, 1]);
        assert_eq!(s, "053L");
        assert_eq!(decompress_counts(&s).unwrap(), vec![0, 5, 3, 1]);
    }

    #[test]
    fn malformed_rle_is_an_error() {
        let bad = |size, counts| Mask::from_coco_rle(&CocoRle { size, counts }).unwrap_err();
        assert!(
            bad([2, 2], RleCounts::Uncompressed(vec![1, 2]))
                .to_string()
                .contains("expected h*w")
        );
        assert!(
            bad([2, 2], RleCounts::Compressed("1 2".into()))
                .to_string()
                .contains("byte 1")
        );
        assert!(
            bad([2, 2], RleCounts::Compressed("T".into()))
                .to_string()
                .contains("end inside")
        );
        assert!(
            bad([2, 2], RleCounts::Compressed("oooooooooooooooooo".into()))
                .to_string()
                .contains("too long")
        );
        // Delta that makes a count negative: counts [0, 1, 1, 1 - 2].
        assert!(
            bad([2, 2], RleCounts::Compressed("011N".into()))
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn json_spellings() {
        let rle: CocoRle = serde_json::from_str(r#"{"size":[3,2],"counts":"1121"}"#).unwrap();
        assert_eq!(rle.counts, RleCounts::Compressed("1121".into()));
        let rle: CocoRle = serde_json::from_str(r#"{"size":[3,2],"counts":[1,1,2,2]}"#).unwrap();
        assert_eq!(Mask::from_coco_rle(&rle).unwrap().count(), 3);
    }
}
