//! Drawing detections onto a frame and encoding it as JPEG, for the snapshot
//! endpoint. Runs only when someone asks for a picture, never per frame.

use vigil_inference::Prediction;

/// Box colours by class id: distinct, and readable with black text on them.
const PALETTE: [[u8; 3]; 8] = [
    [0, 255, 64],
    [255, 56, 56],
    [255, 157, 151],
    [255, 178, 29],
    [72, 249, 10],
    [0, 194, 255],
    [255, 55, 199],
    [134, 219, 61],
];

/// The colour boxes of `class_id` are drawn in.
pub fn class_colour(class_id: u32) -> [u8; 3] {
    PALETTE[class_id as usize % PALETTE.len()]
}

/// Copies a strided RGB frame into a packed buffer and draws on it (see [`draw_on`]).
pub fn draw(data: &[u8], width: u32, height: u32, stride: usize, prediction: &Prediction) -> Vec<u8> {
    let mut img = vigil_camera::packed_rgb(data, width, height, stride);
    draw_on(&mut img, width, height, prediction);
    img
}

/// The frame as packed RGB with its prediction drawn on (see [`draw_on`]).
pub fn annotated(frame: &vigil_camera::Frame, prediction: &Prediction) -> Vec<u8> {
    let mut img = frame.to_rgb();
    draw_on(&mut img, frame.width(), frame.height(), prediction);
    img
}

/// Draws each detection on packed RGB (`width * 3` bytes a row): a 3 px box
/// and a filled label tab with "label 0.93", and for classifiers and anomaly
/// models a banner with the top class or the verdict.
pub fn draw_on(img: &mut [u8], width: u32, height: u32, prediction: &Prediction) {
    let (w, h) = (width as usize, height as usize);
    let mut canvas = Canvas { px: img, w, h };
    let scale = if h >= 720 { 2 } else { 1 };
    let banner = match (prediction.classes.first(), prediction.anomaly) {
        (_, Some(a)) => {
            Some((format!("{} {:.3}", if a.is_anomalous { "NG" } else { "OK" }, a.score), a.is_anomalous))
        }
        (Some(c), None) => Some((format!("{} {:.2}", c.label, c.score), false)),
        _ => None,
    };
    if let Some((text, bad)) = banner {
        let colour = if bad { [255, 56, 56] } else { [0, 255, 64] };
        let (tw, th) = (text.chars().count() as i64 * 8 * scale + 8, 8 * scale + 8);
        canvas.fill(0, 0, tw, th, colour);
        canvas.text(4, 4, &text, scale, [0, 0, 0]);
    }
    for d in &prediction.detections {
        let c = class_colour(d.class_id);
        let b = d.bbox;
        let (x1, y1) = (b.x1.round() as i64, b.y1.round() as i64);
        let (x2, y2) = (b.x2.round() as i64 - 1, b.y2.round() as i64 - 1);
        for t in 0..3 {
            canvas.rect_outline(x1 - t, y1 - t, x2 + t, y2 + t, c);
        }
        let text = format!("{} {:.2}", d.label, d.score);
        let (tw, th) = (text.chars().count() as i64 * 8 * scale + 4, 8 * scale + 4);
        let ty = if y1 - 3 - th >= 0 { y1 - 3 - th } else { y1 + 3 };
        // Keep the tab inside the frame so the label stays readable at the edges.
        let tx = (x1 - 2).min(w as i64 - tw).max(0);
        canvas.fill(tx, ty, tx + tw, ty + th, c);
        canvas.text(tx + 2, ty + 2, &text, scale, [0, 0, 0]);
    }
}

/// JPEG-encodes packed RGB.
pub fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let (w, h) = (
        u16::try_from(width).map_err(|_| "frame too wide for JPEG".to_string())?,
        u16::try_from(height).map_err(|_| "frame too tall for JPEG".to_string())?,
    );
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

struct Canvas<'a> {
    px: &'a mut [u8],
    w: usize,
    h: usize,
}

impl Canvas<'_> {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect_outline(&mut self, x1: i64, y1: i64, x2: i64, y2: i64, c: [u8; 3]) {
        for x in x1..=x2 {
            self.set(x, y1, c);
            self.set(x, y2, c);
        }
        for y in y1..=y2 {
            self.set(x1, y, c);
            self.set(x2, y, c);
        }
    }

    fn fill(&mut self, x1: i64, y1: i64, x2: i64, y2: i64, c: [u8; 3]) {
        for y in y1..y2 {
            for x in x1..x2 {
                self.set(x, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            // ASCII glyphs; anything else draws as '?'.
            let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (gy, row) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if row & (1 << gx) != 0 {
                        let (px, py) = (x + (i as i64 * 8 + gx) * scale, y + gy as i64 * scale);
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(px + dx, py + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_inference::{BBox, Detection};

    #[test]
    fn draws_the_box_in_its_class_colour_and_leaves_the_rest() {
        let (w, h) = (64u32, 48u32);
        let stride = 64 * 3 + 8;
        let frame = vec![10u8; stride * 48];
        let det = Detection {
            class_id: 0,
            label: "ball".into(),
            score: 0.9,
            bbox: BBox { x1: 20.0, y1: 20.0, x2: 40.0, y2: 40.0 },
        };
        let pred = Prediction { detections: vec![det], ..Prediction::default() };
        let img = draw(&frame, w, h, stride, &pred);
        assert_eq!(img.len(), (w * h * 3) as usize);
        let at = |x: usize, y: usize| &img[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
        assert_eq!(at(20, 30), class_colour(0));
        assert_eq!(at(30, 30), [10, 10, 10], "inside the box untouched");
        assert_eq!(at(5, 45), [10, 10, 10]);
    }

    #[test]
    fn encodes_a_jpeg() {
        let rgb = vec![128u8; 32 * 16 * 3];
        let jpeg = encode_jpeg(&rgb, 32, 16, 80).expect("encode");
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xff, 0xd9]);
    }
}
