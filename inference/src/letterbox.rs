//! Ultralytics' letterbox, bit for bit.
//!
//! Ultralytics resizes with `cv2.resize(img, size, interpolation=INTER_LINEAR)`.
//! For 8-bit images OpenCV does not compute bilinear weights in floating
//! point: it rounds them to 11-bit fixed point (`INTER_RESIZE_COEF_BITS`),
//! sums the horizontal pass in 32-bit integers, and for the vertical pass its
//! SIMD kernel pre-shifts by 4 bits, keeps the high half of a 16x16-bit
//! product, and rounds by 2 bits, while the scalar tail of a row rounds the
//! exact 22-bit sum instead. An exact 2x downscale is turned into INTER_AREA
//! (2x2 averages). A "close enough" resampler shifts input values by a few
//! levels, which moves scores and boxes visibly (see shared/SETUP-NOTES.md),
//! so this module reproduces all of that and is tested byte for byte against
//! cv2 itself (inference/tests/parity.rs). That test also showed that the
//! whole row, tail included, follows the SIMD formula in OpenCV 4.x builds.

use crate::ImageView;

/// Fixed-point scale of OpenCV's bilinear weights (`INTER_RESIZE_COEF_SCALE`).
const COEF_SCALE: f32 = 2048.0;

/// Geometry of a letterbox from a source image into a model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub src_w: u32,
    pub src_h: u32,
    pub dst_w: u32,
    pub dst_h: u32,
    /// Size of the resized image inside the padding.
    pub new_w: u32,
    pub new_h: u32,
    /// Padding before the image, in model pixels.
    pub left: u32,
    pub top: u32,
    /// `min(dst_h / src_h, dst_w / src_w)`.
    pub gain: f64,
}

impl Letterbox {
    /// Ultralytics `LetterBox(auto=False, scaleup=True, center=True)`.
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Letterbox {
        let (sw, sh, dw, dh) = (f64::from(src_w), f64::from(src_h), f64::from(dst_w), f64::from(dst_h));
        debug_assert!(sw > 0.0 && sh > 0.0);
        let gain = (dh / sh).min(dw / sw);
        // Python's round() rounds halves to even.
        let new_w = (sw * gain).round_ties_even() as u32;
        let new_h = (sh * gain).round_ties_even() as u32;
        let half_w = f64::from(dst_w - new_w) / 2.0;
        let half_h = f64::from(dst_h - new_h) / 2.0;
        let left = (half_w - 0.1).round_ties_even() as u32;
        let top = (half_h - 0.1).round_ties_even() as u32;
        Letterbox { src_w, src_h, dst_w, dst_h, new_w, new_h, left, top, gain }
    }

    /// Maps a point from model-input pixels back to source pixels, clipped to
    /// the source image, as Ultralytics' `scale_boxes` + `clip_boxes` do
    /// (8.4): subtract the padding where the letterbox really put the image
    /// (`left`, `top`), then divide by each axis's own gain from the rounded
    /// size (`new_w / src_w`, `new_h / src_h`). The older single-gain formula
    /// is off by up to a pixel when rounding moved the image.
    #[inline]
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let gx = f64::from(self.new_w) / f64::from(self.src_w);
        let gy = f64::from(self.new_h) / f64::from(self.src_h);
        let sx = ((f64::from(x) - f64::from(self.left)) / gx).clamp(0.0, f64::from(self.src_w));
        let sy = ((f64::from(y) - f64::from(self.top)) / gy).clamp(0.0, f64::from(self.src_h));
        (sx as f32, sy as f32)
    }
}

/// Buffers reused across frames by the resizer.
#[derive(Debug, Default)]
pub(crate) struct ResizeScratch {
    xofs: Vec<usize>,
    alpha: Vec<[i32; 2]>,
    rows: [Vec<i32>; 2],
    row_ids: [Option<usize>; 2],
    out_row: Vec<u8>,
    plan: Option<(u32, u32, usize, usize, usize)>,
    /// Every horizontal weight pair is (2048, 0): columns are pure picks.
    x_is_pick: bool,
}

/// Resizes packed RGB like `cv2.resize(src, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)`,
/// writing packed RGB into `dst` (`dst_w * dst_h * 3` bytes).
pub fn resize_bilinear_cv(src: &ImageView<'_>, dst_w: usize, dst_h: usize, dst: &mut [u8]) {
    assert_eq!(dst.len(), dst_w * dst_h * 3);
    let mut scratch = ResizeScratch::default();
    resize_rows(src, dst_w, dst_h, &mut scratch, |y, row| {
        dst[y * dst_w * 3..(y + 1) * dst_w * 3].copy_from_slice(row);
    });
}

/// Produces the resized image one packed RGB row at a time.
pub(crate) fn resize_rows(
    src: &ImageView<'_>,
    dst_w: usize,
    dst_h: usize,
    scratch: &mut ResizeScratch,
    emit: impl FnMut(usize, &[u8]),
) {
    let plane = Plane { data: src.data, width: src.width, height: src.height, stride: src.stride };
    resize_plane_rows::<3>(&plane, dst_w, dst_h, scratch, emit);
}

/// An 8-bit image of `C` interleaved channels: packed RGB (C = 3) or one
/// plane of a YUV frame (C = 1). Rows start `stride` bytes apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plane<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) stride: usize,
}

impl<'a> Plane<'a> {
    #[inline]
    fn row<const C: usize>(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width as usize * C]
    }
}

/// [`resize_rows`] for any channel count: the same OpenCV arithmetic,
/// channel by channel.
pub(crate) fn resize_plane_rows<const C: usize>(
    src: &Plane<'_>,
    dst_w: usize,
    dst_h: usize,
    scratch: &mut ResizeScratch,
    emit: impl FnMut(usize, &[u8]),
) {
    crate::simd::dispatch!(
        resize_plane_rows_avx2::<C>(src, dst_w, dst_h, scratch, emit),
        resize_plane_rows_portable::<C>(src, dst_w, dst_h, scratch, emit)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn resize_plane_rows_avx2<const C: usize>(
    src: &Plane<'_>,
    dst_w: usize,
    dst_h: usize,
    scratch: &mut ResizeScratch,
    emit: impl FnMut(usize, &[u8]),
) {
    resize_plane_rows_portable::<C>(src, dst_w, dst_h, scratch, emit)
}

#[inline(always)]
fn resize_plane_rows_portable<const C: usize>(
    src: &Plane<'_>,
    dst_w: usize,
    dst_h: usize,
    scratch: &mut ResizeScratch,
    mut emit: impl FnMut(usize, &[u8]),
) {
    let (sw, sh) = (src.width as usize, src.height as usize);
    if dst_w == 0 || dst_h == 0 {
        return;
    }
    if sw == dst_w && sh == dst_h {
        for y in 0..sh {
            emit(y, src.row::<C>(y));
        }
        return;
    }
    scratch.out_row.resize(dst_w * C, 0);
    if sw == 2 * dst_w && sh == 2 * dst_h {
        // cv::resize turns an exact 2x INTER_LINEAR downscale into INTER_AREA.
        for y in 0..dst_h {
            let (r0, r1) = (src.row::<C>(2 * y), src.row::<C>(2 * y + 1));
            for x in 0..dst_w {
                for c in 0..C {
                    let i = 2 * C * x + c;
                    let sum =
                        u32::from(r0[i]) + u32::from(r0[i + C]) + u32::from(r1[i]) + u32::from(r1[i + C]);
                    scratch.out_row[C * x + c] = ((sum + 2) >> 2) as u8;
                }
            }
            emit(y, &scratch.out_row);
        }
        return;
    }
    plan_horizontal::<C>(scratch, src.width, src.height, dst_w, dst_h);
    scratch.row_ids = [None, None];
    let scale_y = sh as f64 / dst_h as f64;
    if scratch.x_is_pick && (0..dst_h).all(|dy| vertical_coefs(dy, scale_y).1 == [COEF_SCALE as i32, 0]) {
        // Every weight is (2048, 0) on both axes (e.g. an exact 3x downscale,
        // 1920x1080 -> 640x360): OpenCV's arithmetic then returns the source
        // byte unchanged, ((((v * 2048) >> 4) * 2048) >> 16 + 2) >> 2 == v,
        // so picking the pixel is the same result without the integer passes.
        for dy in 0..dst_h {
            let (sy, _) = vertical_coefs(dy, scale_y);
            let row = src.row::<C>(sy.clamp(0, sh as isize - 1) as usize);
            for (o, &sx) in scratch.out_row.chunks_exact_mut(C).zip(&scratch.xofs) {
                o.copy_from_slice(&row[sx * C..sx * C + C]);
            }
            emit(dy, &scratch.out_row);
        }
        return;
    }
    for dy in 0..dst_h {
        let (sy, [b0, b1]) = vertical_coefs(dy, scale_y);
        let r0 = sy.clamp(0, sh as isize - 1) as usize;
        let r1 = (sy + 1).clamp(0, sh as isize - 1) as usize;
        let (i0, i1) = horizontal_rows::<C>(scratch, src, r0, r1);
        let (s0, s1) = (&scratch.rows[i0], &scratch.rows[i1]);
        let out = &mut scratch.out_row;
        for ((o, &a), &b) in out.iter_mut().zip(s0.iter()).zip(s1.iter()) {
            // OpenCV's VResizeLinearVec_32s8u: (S >> 4) as i16, high half of
            // the product with the 16-bit coefficient, add, round-shift by 2.
            let v = (((a >> 4) * b0) >> 16) + (((b >> 4) * b1) >> 16);
            *o = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
        emit(dy, out);
    }
}

/// Source row and fixed-point weights of output row `dy` (no clamping: rows
/// outside the image are clamped when read, weights stay as computed).
fn vertical_coefs(dy: usize, scale_y: f64) -> (isize, [i32; 2]) {
    let fy_full = ((dy as f64 + 0.5) * scale_y - 0.5) as f32;
    let sy = fy_full.floor();
    let fy = fy_full - sy;
    (sy as isize, [round_coef(1.0 - fy), round_coef(fy)])
}

/// `saturate_cast<short>(v * INTER_RESIZE_COEF_SCALE)`: float32 product,
/// rounded half to even like cvRound.
#[inline]
fn round_coef(v: f32) -> i32 {
    (v * COEF_SCALE).round_ties_even() as i32
}

fn plan_horizontal<const C: usize>(
    s: &mut ResizeScratch,
    src_w: u32,
    src_h: u32,
    dst_w: usize,
    dst_h: usize,
) {
    let key = (src_w, src_h, dst_w, dst_h, C);
    if s.plan == Some(key) {
        return;
    }
    let sw = src_w as usize;
    let scale_x = sw as f64 / dst_w as f64;
    s.xofs.clear();
    s.alpha.clear();
    for dx in 0..dst_w {
        let fx_full = ((dx as f64 + 0.5) * scale_x - 0.5) as f32;
        let mut sx = fx_full.floor() as isize;
        let mut fx = fx_full - fx_full.floor();
        if sx < 0 {
            sx = 0;
            fx = 0.0;
        }
        if sx >= sw as isize - 1 {
            sx = sw as isize - 1;
            fx = 0.0;
        }
        s.xofs.push(sx as usize);
        s.alpha.push([round_coef(1.0 - fx), round_coef(fx)]);
    }
    for r in &mut s.rows {
        r.resize(dst_w * C, 0);
    }
    s.x_is_pick = s.alpha.iter().all(|a| *a == [COEF_SCALE as i32, 0]);
    s.plan = Some(key);
}

/// Makes sure the horizontally resized source rows `r0` and `r1` are in the
/// two-row cache (each source row serves about two output rows) and returns
/// their cache indices.
#[inline(always)]
fn horizontal_rows<const C: usize>(
    s: &mut ResizeScratch,
    src: &Plane<'_>,
    r0: usize,
    r1: usize,
) -> (usize, usize) {
    let find = |s: &mut ResizeScratch, r: usize, avoid: Option<usize>| -> usize {
        if let Some(i) = s.row_ids.iter().position(|&id| id == Some(r)) {
            return i;
        }
        let i = match avoid {
            Some(a) => 1 - a,
            None => usize::from(s.row_ids[0].is_some() && s.row_ids[1].is_none()),
        };
        hresize::<C>(src.row::<C>(r), &s.xofs, &s.alpha, &mut s.rows[i]);
        s.row_ids[i] = Some(r);
        i
    };
    let i0 = find(s, r0, None);
    let i1 = find(s, r1, Some(i0));
    (i0, i1)
}

/// Horizontal pass for one source row: `out[dx*C + c] = S[sx*C + c] * a0 + S[sx*C + C + c] * a1`.
/// Output columns whose left neighbour is the last source pixel take it with
/// weight 1 (OpenCV's `xmax` split), so the main loop has no branch.
#[inline(always)]
fn hresize<const C: usize>(row: &[u8], xofs: &[usize], alpha: &[[i32; 2]], out: &mut [i32]) {
    let last = row.len() / C - 1;
    // xofs is non-decreasing: every column from `split` on sits on the last pixel.
    let split = xofs.partition_point(|&sx| sx < last);
    for ((o, &sx), a) in out.chunks_exact_mut(C).zip(&xofs[..split]).zip(&alpha[..split]) {
        let p = &row[sx * C..sx * C + 2 * C];
        for c in 0..C {
            o[c] = i32::from(p[c]) * a[0] + i32::from(p[C + c]) * a[1];
        }
    }
    let p = &row[last * C..last * C + C];
    for o in out[split * C..].chunks_exact_mut(C) {
        for c in 0..C {
            o[c] = i32::from(p[c]) * COEF_SCALE as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_geometry_matches_ultralytics() {
        // 640x480 into 640x640: no resize, 80 px bars top and bottom.
        let lb = Letterbox::new(640, 480, 640, 640);
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (640, 480, 0, 80));
        // 1920x1080: gain 1/3, 640x360, bars of 140.
        let lb = Letterbox::new(1920, 1080, 640, 640);
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (640, 360, 0, 140));
        // An odd padding: Ultralytics puts the extra row at the bottom.
        let lb = Letterbox::new(100, 51, 64, 64);
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (64, 33, 0, 15));
    }

    #[test]
    fn maps_model_points_back_to_source_pixels() {
        let lb = Letterbox::new(1920, 1080, 640, 640);
        let (x, y) = lb.to_source(320.0, 140.0 + 180.0);
        assert!((x - 960.0).abs() < 1e-3 && (y - 540.0).abs() < 1e-3, "{x},{y}");
        // Points in the padding clip to the image edge.
        assert_eq!(lb.to_source(-5.0, 10.0), (0.0, 0.0));
    }

    #[test]
    fn resizing_a_flat_image_keeps_its_value() {
        let src = vec![77u8; 37 * 23 * 3];
        let view = ImageView::new(&src, 37, 23, 37 * 3).expect("view");
        let mut dst = vec![0u8; 20 * 11 * 3];
        resize_bilinear_cv(&view, 20, 11, &mut dst);
        assert!(dst.iter().all(|&v| v == 77));
        let mut up = vec![0u8; 81 * 50 * 3];
        resize_bilinear_cv(&view, 81, 50, &mut up);
        assert!(up.iter().all(|&v| v == 77));
    }

    #[test]
    fn respects_row_stride() {
        // Two identical images, one with 5 bytes of padding per row.
        let (w, h) = (9usize, 7usize);
        let packed: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut padded = Vec::new();
        for row in packed.chunks(w * 3) {
            padded.extend_from_slice(row);
            padded.extend_from_slice(&[255; 5]);
        }
        let a = ImageView::new(&packed, w as u32, h as u32, w * 3).expect("view");
        let b = ImageView::new(&padded, w as u32, h as u32, w * 3 + 5).expect("view");
        let (mut da, mut db) = (vec![0u8; 5 * 4 * 3], vec![0u8; 5 * 4 * 3]);
        resize_bilinear_cv(&a, 5, 4, &mut da);
        resize_bilinear_cv(&b, 5, 4, &mut db);
        assert_eq!(da, db);
    }
}
