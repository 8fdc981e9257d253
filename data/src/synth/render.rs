//! Procedural drawing of plates, trays and foods. Every food instance is painted into the RGB
//! image, the class label map and an instance map at the same time, so masks are exact and
//! occlusion (later items cover earlier ones) is consistent across all three.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::knowledge::{Food, Shape, Texture};

/// Deterministic per-pixel noise in [0, 1) from integer coordinates and a salt.
fn hash_noise(x: i64, y: i64, salt: u64) -> f32 {
    let mut z = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ salt.wrapping_mul(0x1656_67B1_9E37_79F9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn scale(c: [u8; 3], f: f32) -> Rgb<u8> {
    Rgb(c.map(|v| (f32::from(v) * f).clamp(0.0, 255.0) as u8))
}

/// The canvases one scene is painted into.
pub struct Canvas {
    /// The picture.
    pub rgb: RgbImage,
    /// Class id per pixel (0 background, 103 other ingredients).
    pub labels: GrayImage,
    /// Instance index + 1 per pixel (0 none).
    pub instances: GrayImage,
}

// The pixel buffers are too big to print.
impl std::fmt::Debug for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canvas({}x{})", self.rgb.width(), self.rgb.height())
    }
}

/// A region the foods are placed in.
#[derive(Debug, Clone, Copy)]
pub enum Container {
    /// Elliptical plate: centre and radii.
    Plate { cx: f32, cy: f32, rx: f32, ry: f32 },
    /// Rectangular tray: corners; `cells` compartments side by side (bento when > 1).
    Tray {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        cells: u32,
    },
}

impl Container {
    /// Word used in questions.
    pub fn noun(&self) -> &'static str {
        match self {
            Container::Plate { .. } => "plate",
            Container::Tray { cells, .. } if *cells > 1 => "bento box",
            Container::Tray { .. } => "tray",
        }
    }

    /// A random point well inside the container.
    pub fn sample_point(&self, rng: &mut ChaCha8Rng, margin: f32) -> (f32, f32) {
        match *self {
            Container::Plate { cx, cy, rx, ry } => {
                let a = rng.random_range(0.0..std::f32::consts::TAU);
                let r = rng.random_range(0.0f32..1.0).sqrt();
                let (rx, ry) = ((rx - margin).max(1.0), (ry - margin).max(1.0));
                (cx + r * rx * a.cos(), cy + r * ry * a.sin())
            }
            Container::Tray { x0, y0, x1, y1, .. } => {
                let (lo_x, hi_x) = (x0 + margin, (x1 - margin).max(x0 + margin + 1.0));
                let (lo_y, hi_y) = (y0 + margin, (y1 - margin).max(y0 + margin + 1.0));
                (rng.random_range(lo_x..hi_x), rng.random_range(lo_y..hi_y))
            }
        }
    }
}

/// One food instance to paint.
#[derive(Debug, Clone)]
pub struct Item {
    /// What it is.
    pub food: &'static Food,
    /// Centre in pixels.
    pub cx: f32,
    /// Centre in pixels.
    pub cy: f32,
    /// Radius in pixels.
    pub r: f32,
    /// Rotation in radians.
    pub angle: f32,
    /// Blob lobes (offsets in units of `r`, radius), used by [`Shape::Blob`].
    pub lobes: [(f32, f32, f32); 4],
    /// Noise salt.
    pub salt: u64,
}

impl Item {
    /// A new instance with random rotation and lobes.
    pub fn new(food: &'static Food, cx: f32, cy: f32, r: f32, rng: &mut ChaCha8Rng) -> Item {
        let mut lobes = [(0.0, 0.0, 0.0); 4];
        for (i, l) in lobes.iter_mut().enumerate() {
            let a = i as f32 * 1.57 + rng.random_range(-0.5f32..0.5);
            let d = rng.random_range(0.2f32..0.45);
            *l = (d * a.cos(), d * a.sin(), rng.random_range(0.45f32..0.6));
        }
        Item {
            food,
            cx,
            cy,
            r,
            angle: rng.random_range(0.0..std::f32::consts::TAU),
            lobes,
            salt: rng.random(),
        }
    }

    /// Whether local coordinates (u, v), in units of `r` and rotated, lie on the food.
    fn inside(&self, u: f32, v: f32) -> bool {
        let rr = u * u + v * v;
        match self.food.shape {
            Shape::Round => rr <= 1.0,
            Shape::Oval => u * u + (v / 0.65) * (v / 0.65) <= 1.0,
            Shape::Rect => u.abs() <= 1.0 && v.abs() <= 0.68,
            Shape::Wedge => (-1.0..=1.0).contains(&u) && v.abs() <= 0.55 * (u + 1.0) * 0.8,
            Shape::Stick => u.abs() <= 1.0 && v.abs() <= 0.17,
            Shape::Capsule => {
                let du = (u.abs() - 0.7).max(0.0);
                du * du + v * v <= 0.09
            }
            Shape::Blob => self
                .lobes
                .iter()
                .any(|&(ou, ov, lr)| (u - ou).powi(2) + (v - ov).powi(2) <= lr * lr),
            Shape::Ring => (0.2..=1.0).contains(&rr),
            Shape::Crescent => rr <= 1.0 && (u - 0.45).powi(2) + v * v > 0.56,
        }
    }

    fn colour(&self, u: f32, v: f32, x: i64, y: i64) -> Rgb<u8> {
        let f = self.food;
        let n = hash_noise(x, y, self.salt);
        let rr = (u * u + v * v).min(1.0);
        // Slightly darker towards the edge reads as volume.
        let shade = 1.06 - 0.16 * rr;
        match f.texture {
            Texture::Plain => scale(f.rgb, shade * (0.93 + 0.12 * n)),
            Texture::Speckled => {
                if hash_noise(x, y, self.salt ^ 0xABCD) < 0.09 {
                    scale(f.rgb, 0.45)
                } else {
                    scale(f.rgb, shade * (0.94 + 0.1 * n))
                }
            }
            Texture::Striped => {
                let band = ((v * 9.0).sin() * 0.5 + 0.5) * 0.22;
                scale(f.rgb, shade * (0.86 + band + 0.06 * n))
            }
            Texture::Grill => {
                if ((u + v) * 3.0).rem_euclid(1.0) < 0.14 {
                    Rgb([52, 30, 22])
                } else {
                    scale(f.rgb, shade * (0.93 + 0.1 * n))
                }
            }
            Texture::Rim => {
                if rr > 0.62 {
                    if f.shape == Shape::Round {
                        Rgb([32, 44, 34])
                    } else {
                        scale(f.rgb, 0.62)
                    }
                } else {
                    scale(f.rgb, shade * (0.95 + 0.08 * n))
                }
            }
            Texture::Crumb => {
                let coarse = hash_noise(x / 2, y / 2, self.salt);
                scale(f.rgb, shade * (0.72 + 0.5 * coarse))
            }
            Texture::Yolk => {
                if (u - 0.12).powi(2) + v * v < 0.14 {
                    scale([250, 188, 30], 1.02 - 0.2 * rr)
                } else {
                    scale(f.rgb, 0.97 + 0.05 * n)
                }
            }
        }
    }

    /// Pixel extent (inclusive) of the item, clipped to `w` × `h`; `None` when off the image.
    fn extent(&self, w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
        let x0 = (self.cx - self.r - 1.0).floor().max(0.0);
        let y0 = (self.cy - self.r - 1.0).floor().max(0.0);
        let x1 = (self.cx + self.r + 1.0).ceil().min(w as f32 - 1.0);
        let y1 = (self.cy + self.r + 1.0).ceil().min(h as f32 - 1.0);
        (x0 <= x1 && y0 <= y1).then_some((x0 as u32, y0 as u32, x1 as u32, y1 as u32))
    }

    /// Paint the item with class `label` and instance `instance` (1-based).
    pub fn paint(&self, canvas: &mut Canvas, label: u8, instance: u8) {
        let (w, h) = canvas.rgb.dimensions();
        let Some((x0, y0, x1, y1)) = self.extent(w, h) else {
            return;
        };
        let (s, c) = self.angle.sin_cos();
        for y in y0..=y1 {
            for x in x0..=x1 {
                let dx = (x as f32 + 0.5 - self.cx) / self.r;
                let dy = (y as f32 + 0.5 - self.cy) / self.r;
                let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
                if self.inside(u, v) {
                    canvas
                        .rgb
                        .put_pixel(x, y, self.colour(u, v, i64::from(x), i64::from(y)));
                    canvas.labels.put_pixel(x, y, Luma([label]));
                    canvas.instances.put_pixel(x, y, Luma([instance]));
                }
            }
        }
    }
}

/// A blank canvas with a table surface.
pub fn table(w: u32, h: u32, rng: &mut ChaCha8Rng) -> Canvas {
    let palettes = [
        [150, 110, 75],
        [120, 85, 60],
        [200, 200, 205],
        [90, 110, 140],
        [180, 60, 60],
    ];
    let base = palettes[rng.random_range(0..palettes.len())];
    let checker = rng.random_bool(0.3);
    let salt: u64 = rng.random();
    let rgb = RgbImage::from_fn(w, h, |x, y| {
        let f = if checker {
            if ((x / 16) + (y / 16)) % 2 == 0 {
                1.0
            } else {
                0.8
            }
        } else {
            // Wood grain: slow bands plus fine noise.
            0.88 + 0.1 * ((y as f32 * 0.21 + (x as f32 * 0.03).sin() * 3.0).sin())
        };
        scale(
            base,
            f * (0.95 + 0.08 * hash_noise(i64::from(x), i64::from(y), salt)),
        )
    });
    Canvas {
        rgb,
        labels: GrayImage::new(w, h),
        instances: GrayImage::new(w, h),
    }
}

/// Draw the container (background class) and return its shape.
pub fn container(canvas: &mut Canvas, rng: &mut ChaCha8Rng) -> Container {
    let (w, h) = canvas.rgb.dimensions();
    let (wf, hf) = (w as f32, h as f32);
    let kind = rng.random_range(0..10);
    if kind < 6 {
        let (cx, cy) = (
            wf * rng.random_range(0.47..0.53),
            hf * rng.random_range(0.47..0.53),
        );
        let (rx, ry) = (
            wf * rng.random_range(0.4..0.47),
            hf * rng.random_range(0.4..0.47),
        );
        let plate = [[246, 246, 242], [236, 232, 220], [220, 232, 240]][rng.random_range(0..3)];
        for y in 0..h {
            for x in 0..w {
                let d = ((x as f32 - cx) / rx).powi(2) + ((y as f32 - cy) / ry).powi(2);
                if d <= 1.0 {
                    let f = if d > 0.8 { 0.9 } else { 1.0 };
                    canvas.rgb.put_pixel(x, y, scale(plate, f));
                }
            }
        }
        Container::Plate { cx, cy, rx, ry }
    } else {
        let cells = if kind == 9 {
            rng.random_range(2..=3)
        } else {
            1
        };
        let (x0, y0) = (
            wf * rng.random_range(0.04..0.1),
            hf * rng.random_range(0.05..0.12),
        );
        let (x1, y1) = (
            wf * rng.random_range(0.9..0.96),
            hf * rng.random_range(0.88..0.95),
        );
        let tray = [[60, 62, 70], [200, 180, 140], [230, 230, 230]][rng.random_range(0..3)];
        for y in y0 as u32..=(y1 as u32).min(h - 1) {
            for x in x0 as u32..=(x1 as u32).min(w - 1) {
                let cell_w = (x1 - x0) / cells as f32;
                let in_divider =
                    cells > 1 && ((x as f32 - x0) % cell_w) < 2.0 && x as f32 > x0 + 2.0;
                let f = if in_divider { 0.7 } else { 1.0 };
                canvas.rgb.put_pixel(x, y, scale(tray, f));
            }
        }
        Container::Tray {
            x0,
            y0,
            x1,
            y1,
            cells,
        }
    }
}

/// Scene lighting of `strength` (0 = none): a warm light on the left and a cool one at the
/// top. Red falls off from left to right, blue from top to bottom and green with both, by up to
/// `strength` of the value, so a patch's colour balance tells where in the picture it lies.
/// Only the picture changes, never the labels.
pub fn light(canvas: &mut Canvas, strength: f32) {
    if strength <= 0.0 {
        return;
    }
    let (w, h) = canvas.rgb.dimensions();
    let (wf, hf) = ((w.max(2) - 1) as f32, (h.max(2) - 1) as f32);
    for (x, y, px) in canvas.rgb.enumerate_pixels_mut() {
        let (u, v) = (x as f32 / wf, y as f32 / hf);
        let gains = [
            1.0 - strength * u,
            1.0 - strength * 0.5 * (u + v),
            1.0 - strength * v,
        ];
        for (c, g) in px.0.iter_mut().zip(gains) {
            *c = (f32::from(*c) * g).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Label FoodSeg103 uses for pixels to ignore.
pub const IGNORE: u8 = 255;

/// A fork or knife lying at the side: a distractor, labelled "ignore" (255) like FoodSeg103's
/// unlabelled regions, never a target.
pub fn cutlery(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let (w, h) = canvas.rgb.dimensions();
    let x = if rng.random_bool(0.5) {
        w as f32 * 0.04
    } else {
        w as f32 * 0.93
    };
    let len = h as f32 * rng.random_range(0.5..0.8);
    let y0 = (h as f32 - len) / 2.0;
    let metal = [190, 192, 198];
    for y in y0 as u32..(y0 + len) as u32 {
        for dx in 0..4u32 {
            let px = (x as u32 + dx).min(w - 1);
            canvas
                .rgb
                .put_pixel(px, y.min(h - 1), scale(metal, 0.9 + 0.05 * dx as f32));
            canvas.labels.put_pixel(px, y.min(h - 1), Luma([IGNORE]));
        }
    }
}

/// A sauce smear labelled "other ingredients" (excluded from targets).
pub fn sauce(canvas: &mut Canvas, c: &Container, rng: &mut ChaCha8Rng, class: u8) {
    let (cx, cy) = c.sample_point(rng, 10.0);
    let r = canvas.rgb.width().min(canvas.rgb.height()) as f32 * rng.random_range(0.05..0.09);
    let colour = [[150, 30, 20], [90, 50, 20], [230, 200, 60]][rng.random_range(0..3)];
    let (w, h) = canvas.rgb.dimensions();
    for y in (cy - r).max(0.0) as u32..((cy + r) as u32).min(h) {
        for x in (cx - r * 1.4).max(0.0) as u32..((cx + r * 1.4) as u32).min(w) {
            let d = ((x as f32 - cx) / (r * 1.4)).powi(2) + ((y as f32 - cy) / r).powi(2);
            if d <= 1.0 {
                canvas.rgb.put_pixel(x, y, scale(colour, 0.95));
                canvas.labels.put_pixel(x, y, Luma([class]));
            }
        }
    }
}
