//! Picture of a sample for humans: GT mask tinted, object boxes and points drawn.

use image::{Rgb, RgbImage, imageops};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_circle_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use crate::coords::{ImageSize, PolicySpace};
use crate::error::{Error, Result};
use crate::gt::GtObject;
use crate::mask::Mask;

const COLOURS: [[u8; 3]; 6] = [
    [0, 230, 120],
    [255, 200, 0],
    [0, 180, 255],
    [255, 80, 200],
    [160, 255, 60],
    [255, 120, 40],
];

/// Draw `mask` (tinted) and `objects` (given in `space`, mapped back to the image as SAM2
/// would see them) over `image`, enlarged by the integer factor `zoom` (nearest neighbour).
pub fn overlay(
    image: &RgbImage,
    mask: &Mask,
    objects: &[GtObject],
    space: &PolicySpace,
    zoom: u32,
) -> Result<RgbImage> {
    if (mask.width(), mask.height()) != image.dimensions() {
        return Err(Error::SizeMismatch {
            what: "overlay mask against the image".to_owned(),
            expected_w: image.width(),
            expected_h: image.height(),
            found_w: mask.width(),
            found_h: mask.height(),
        });
    }
    let zoom = zoom.clamp(1, 8);
    let mut out = image.clone();
    for (x, y) in mask.iter_on() {
        let p = out.get_pixel_mut(x, y);
        for (c, t) in p.0.iter_mut().zip([0u8, 230, 120]) {
            *c = ((u16::from(*c) + u16::from(t)) / 2) as u8;
        }
    }
    let mut out = imageops::resize(
        &out,
        out.width() * zoom,
        out.height() * zoom,
        imageops::FilterType::Nearest,
    );
    let size = ImageSize {
        width: image.width(),
        height: image.height(),
    };
    let z = zoom as f64;
    for (i, o) in objects.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        let b = space
            .box_to_original(crate::coords::PolicyBox(o.bbox_2d), size)
            .0;
        let p = space
            .point_to_original(crate::coords::PolicyPoint(o.point_2d), size)
            .0;
        if b.iter().chain(p.iter()).any(|v| !v.is_finite()) {
            continue;
        }
        let (x0, y0) = (b[0].min(b[2]) * z, b[1].min(b[3]) * z);
        let (x1, y1) = ((b[0].max(b[2]) + 1.0) * z, (b[1].max(b[3]) + 1.0) * z);
        let (w, h) = ((x1 - x0).max(1.0) as u32, (y1 - y0).max(1.0) as u32);
        for t in 0..zoom.min(2) as i32 {
            let r =
                Rect::at(x0 as i32 - t, y0 as i32 - t).of_size(w + 2 * t as u32, h + 2 * t as u32);
            draw_hollow_rect_mut(&mut out, r, colour);
        }
        let c = (((p[0] + 0.5) * z) as i32, ((p[1] + 0.5) * z) as i32);
        let r = (2 * zoom) as i32;
        draw_filled_circle_mut(&mut out, c, r, Rgb([230, 30, 30]));
        draw_hollow_circle_mut(&mut out, c, r + 1, Rgb([255, 255, 255]));
    }
    Ok(out)
}
