//! Line charts as PNG, drawn with the `image` crate and a built-in 5×7 bitmap font (uppercase
//! letters, digits and a few symbols), so `platter run` can write its curves without a plotting
//! library or a font file.

use image::{Rgb, RgbImage};

/// One curve of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: [u8; 3],
}

/// One chart: a title, an x-axis label and its curves.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// Colours for successive series (readable on white).
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];

const SCALE: u32 = 2;
const GLYPH_W: u32 = 6 * SCALE; // 5 columns + 1 spacing
const GLYPH_H: u32 = 7 * SCALE;

/// Rows of a glyph, top to bottom, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        ' ' => [0; 7],
        // Anything else: a small box, so a missing glyph is visible rather than silent.
        _ => [0x00, 0x1F, 0x11, 0x11, 0x11, 0x1F, 0x00],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// Width in pixels of `text` drawn with [`draw_text`].
pub fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * GLYPH_W
}

/// Draws `text` with its top-left corner at `(x, y)`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, c: [u8; 3]) {
    for (i, ch) in text.chars().enumerate() {
        let rows = glyph(ch);
        let gx = x + (i as u32 * GLYPH_W) as i64;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            put(
                                img,
                                gx + (col * SCALE + dx) as i64,
                                y + (r as u32 * SCALE + dy) as i64,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A line from `a` to `b`, `width` pixels thick (Bresenham with a square pen).
fn draw_line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), c: [u8; 3], width: i64) {
    let (mut x0, mut y0) = a;
    let (x1, y1) = b;
    let dx = (x1 - x0).abs();
    let dy = -(y1 - y0).abs();
    let sx = if x0 < x1 { 1 } else { -1 };
    let sy = if y0 < y1 { 1 } else { -1 };
    let mut err = dx + dy;
    let half = width / 2;
    loop {
        for ox in -half..=(width - 1 - half) {
            for oy in -half..=(width - 1 - half) {
                put(img, x0 + ox, y0 + oy, c);
            }
        }
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// Tick label for `v` on an axis whose ticks are `step` apart: enough decimals to tell
/// neighbouring ticks apart, no trailing zeros.
fn tick_label(v: f64, step: f64) -> String {
    let a = v.abs().max(step.abs());
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = if step > 0.0 && step.is_finite() {
        (-step.log10()).ceil().max(0.0) as usize + 1
    } else {
        3
    }
    .min(6);
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    if s == "-0" { "0".to_owned() } else { s }
}

/// Data range padded by 5 % (a flat series gets ±0.5 around its value).
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    if hi - lo < 1e-12 {
        return Some((lo - 0.5, hi + 0.5));
    }
    let pad = (hi - lo) * 0.05;
    Some((lo - pad, hi + pad))
}

fn draw_panel(img: &mut RgbImage, ox: u32, oy: u32, w: u32, h: u32, panel: &Panel) {
    const INK: [u8; 3] = [40, 40, 40];
    const GRID: [u8; 3] = [225, 225, 225];
    let left = ox as i64 + 90;
    let right = (ox + w) as i64 - 20;
    let top = oy as i64 + 40;
    let legend_rows = panel.series.len() as i64;
    let bottom = (oy + h) as i64 - 50 - legend_rows * (GLYPH_H as i64 + 4);
    draw_text(img, left, oy as i64 + 12, &panel.title, INK);
    let pts = || panel.series.iter().flat_map(|s| s.points.iter());
    let (Some((x0, x1)), Some((y0, y1))) = (
        range(pts().filter(|p| p.1.is_finite()).map(|p| p.0)),
        range(pts().filter(|p| p.0.is_finite()).map(|p| p.1)),
    ) else {
        draw_text(img, left, (top + bottom) / 2, "NO DATA", INK);
        return;
    };
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y - y0) / (y1 - y0) * (bottom - top) as f64).round() as i64;
    for i in 0..=4 {
        let t = i as f64 / 4.0;
        let yv = y0 + t * (y1 - y0);
        let y = py(yv);
        draw_line(img, (left, y), (right, y), GRID, 1);
        let label = tick_label(yv, (y1 - y0) / 4.0);
        draw_text(
            img,
            left - 8 - text_width(&label) as i64,
            y - GLYPH_H as i64 / 2,
            &label,
            INK,
        );
        let xv = x0 + t * (x1 - x0);
        let x = px(xv);
        draw_line(img, (x, top), (x, bottom), GRID, 1);
        let label = tick_label(xv, (x1 - x0) / 4.0);
        draw_text(
            img,
            x - text_width(&label) as i64 / 2,
            bottom + 8,
            &label,
            INK,
        );
    }
    draw_line(img, (left, top), (left, bottom), INK, 1);
    draw_line(img, (left, bottom), (right, bottom), INK, 1);
    draw_text(
        img,
        (left + right) / 2 - text_width(&panel.x_label) as i64 / 2,
        bottom + 12 + GLYPH_H as i64,
        &panel.x_label,
        INK,
    );
    for (k, s) in panel.series.iter().enumerate() {
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in &s.points {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = (px(x), py(y));
            match prev {
                Some(q) => draw_line(img, q, p, s.color, 2),
                None => draw_line(img, p, p, s.color, 4),
            }
            if s.points.len() <= 30 {
                draw_line(img, p, p, s.color, 5);
            }
            prev = Some(p);
        }
        let ly = bottom + 20 + GLYPH_H as i64 * 2 + k as i64 * (GLYPH_H as i64 + 4);
        draw_line(
            img,
            (left, ly + GLYPH_H as i64 / 2),
            (left + 24, ly + GLYPH_H as i64 / 2),
            s.color,
            3,
        );
        draw_text(img, left + 32, ly, &s.name, INK);
    }
}

/// Renders `panels` in a grid of `cols` columns, each panel `panel_w` × `panel_h` pixels.
pub fn render(panels: &[Panel], cols: usize, panel_w: u32, panel_h: u32) -> RgbImage {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let mut img = RgbImage::from_pixel(
        panel_w * cols as u32,
        panel_h * rows as u32,
        Rgb([255, 255, 255]),
    );
    for (i, panel) in panels.iter().enumerate() {
        let (c, r) = ((i % cols) as u32, (i / cols) as u32);
        draw_panel(&mut img, c * panel_w, r * panel_h, panel_w, panel_h, panel);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink_in(img: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, c: [u8; 3]) -> usize {
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                if img.get_pixel(x, y).0 == c {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn rising_series_goes_from_bottom_left_to_top_right() {
        let panel = Panel {
            title: "REWARD".into(),
            x_label: "STEP".into(),
            series: vec![Series {
                name: "MEAN".into(),
                points: (0..50).map(|i| (i as f64, i as f64 * 0.1)).collect(),
                color: PALETTE[1],
            }],
        };
        let img = render(&[panel], 1, 400, 300);
        assert_eq!(img.dimensions(), (400, 300));
        let c = PALETTE[1];
        // The plot area spans x 90..380; the curve starts low on the left and ends high on the right.
        let bottom_left = ink_in(&img, 90, 150, 150, 230, c);
        let top_right = ink_in(&img, 320, 40, 380, 120, c);
        let top_left = ink_in(&img, 90, 40, 150, 100, c);
        assert!(
            bottom_left > 0 && top_right > 0,
            "{bottom_left} {top_right}"
        );
        assert_eq!(top_left, 0);
    }

    #[test]
    fn empty_and_non_finite_data_draw_without_panicking() {
        let panels = [
            Panel {
                title: "EMPTY".into(),
                x_label: "X".into(),
                series: vec![],
            },
            Panel {
                title: "NAN".into(),
                x_label: "X".into(),
                series: vec![Series {
                    name: "S".into(),
                    points: vec![(0.0, f64::NAN), (1.0, 2.0), (f64::INFINITY, 1.0)],
                    color: PALETTE[0],
                }],
            },
        ];
        let img = render(&panels, 2, 300, 200);
        assert_eq!(img.dimensions(), (600, 200));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.25, 0.25), "0.25");
        assert_eq!(tick_label(3.0, 1.0), "3");
        assert_eq!(tick_label(12.34, 5.0), "12.3");
        assert_eq!(tick_label(250.0, 50.0), "250");
        assert_eq!(tick_label(1.5e-5, 1e-6), "1.5e-5");
        // Ticks 0.0005 apart keep four decimals, so neighbours differ.
        assert_eq!(tick_label(0.0785, 0.0005), "0.0785");
        assert_eq!(tick_label(0.078, 0.0005), "0.078");
    }
}
