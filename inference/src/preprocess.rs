//! Frame -> input tensor, for every input convention in docs/model-families.md.
//!
//! One pass: resized rows come out of the cv2-exact resizer and are written
//! straight into the tensor in its layout and element type, with the same
//! IEEE float operations numpy does (`v / 255`, then `(x - mean) / std`), so
//! the tensor matches the reference bit for bit.

use crate::ImageView;
use crate::image::{I420View, YuvToRgb};
use crate::letterbox::{Letterbox, Plane, ResizeScratch, resize_plane_rows, resize_rows};
use crate::manifest::{ColorOrder, Layout, PixelScale, ResizeMode};

/// Element type of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    Float32,
    Float16,
    Uint8,
}

/// How frames become the model's input: everything the preprocessing needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputPlan {
    pub name: String,
    pub layout: Layout,
    pub dtype: InputType,
    /// Fixed input size; `None` for dynamic inputs fed at the frame's size.
    pub size: Option<(u32, u32)>,
    pub resize: ResizeMode,
    pub color: ColorOrder,
    pub scale: PixelScale,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_value: u8,
}

/// Where the frame landed in the input: what box mapping needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Geometry {
    Letterbox(Letterbox),
    Stretch { frame_w: u32, frame_h: u32, in_w: u32, in_h: u32 },
    Identity { frame_w: u32, frame_h: u32 },
}

impl Geometry {
    pub fn input_size(&self) -> (u32, u32) {
        match *self {
            Geometry::Letterbox(lb) => (lb.dst_w, lb.dst_h),
            Geometry::Stretch { in_w, in_h, .. } => (in_w, in_h),
            Geometry::Identity { frame_w, frame_h } => (frame_w, frame_h),
        }
    }

    pub fn frame_size(&self) -> (u32, u32) {
        match *self {
            Geometry::Letterbox(lb) => (lb.src_w, lb.src_h),
            Geometry::Stretch { frame_w, frame_h, .. } | Geometry::Identity { frame_w, frame_h } => {
                (frame_w, frame_h)
            }
        }
    }

    /// A point in input pixels to frame pixels, clipped to the frame.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        match *self {
            Geometry::Letterbox(lb) => lb.to_source(x, y),
            Geometry::Stretch { frame_w, frame_h, in_w, in_h } => {
                let fx = f64::from(x) * f64::from(frame_w) / f64::from(in_w);
                let fy = f64::from(y) * f64::from(frame_h) / f64::from(in_h);
                (fx.clamp(0.0, f64::from(frame_w)) as f32, fy.clamp(0.0, f64::from(frame_h)) as f32)
            }
            Geometry::Identity { frame_w, frame_h } => {
                (x.clamp(0.0, frame_w as f32), y.clamp(0.0, frame_h as f32))
            }
        }
    }

    /// A point normalised to 0..1 of the frame, to frame pixels, clipped.
    pub fn normalised_to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        let (w, h) = self.frame_size();
        ((x * w as f32).clamp(0.0, w as f32), (y * h as f32).clamp(0.0, h as f32))
    }
}

/// Tensor storage reused across frames; only the vector matching the input
/// type is used.
#[derive(Debug, Default)]
pub(crate) struct InputBuffers {
    pub(crate) f32: Vec<f32>,
    pub(crate) f16: Vec<half::f16>,
    pub(crate) u8: Vec<u8>,
    pub(crate) resize: Resizers,
    /// What the padding in the buffer was last filled for. The image area is
    /// rewritten every frame but the padding only changes with the geometry
    /// or the plan, so it is filled once, not per frame (at 1080p into 640,
    /// that is 40 % of the tensor).
    padded: Option<PadKey>,
}

/// The resizer's reused state: one for packed RGB, one per plane of I420
/// (each keeps its own plan), and the resized planes.
#[derive(Debug, Default)]
pub(crate) struct Resizers {
    rgb: ResizeScratch,
    planes: [ResizeScratch; 3],
    resized: [Vec<u8>; 3],
    /// One converted row of I420, red, green and blue apart.
    rgb_rows: [Vec<u8>; 3],
}

/// One row of the resized image: packed RGB (from RGB frames), or red,
/// green and blue apart (from I420 frames: an NCHW tensor takes them as
/// they are).
#[derive(Debug, Clone, Copy)]
enum Pixels<'a> {
    Packed(&'a [u8]),
    Planar([&'a [u8]; 3]),
}

/// Where a YUV plane's rows come from during one fill.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// The frame's own plane; output row y reads source row y >> shift.
    Source { shift: usize },
    /// The plane resized to the model's size, in `Resizers::resized`.
    Resized,
}

/// Everything that decides the padding's values and place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PadKey {
    layout: Layout,
    dtype: InputType,
    swap: bool,
    pad_value: u8,
    scale: PixelScale,
    mean: [u32; 3],
    std: [u32; 3],
    rect: [u32; 6],
}

impl InputPlan {
    /// The input size for a frame of `frame_w x frame_h`.
    pub fn input_size_for(&self, frame_w: u32, frame_h: u32) -> (u32, u32) {
        match (self.resize, self.size) {
            (ResizeMode::None, _) | (_, None) => (frame_w, frame_h),
            (_, Some(s)) => s,
        }
    }

    /// The tensor shape for one frame.
    pub fn shape(&self, in_w: u32, in_h: u32) -> [usize; 4] {
        let (w, h) = (in_w as usize, in_h as usize);
        match self.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        }
    }

    /// Writes `img` into `buf` (resized to the plan's input) and returns where it landed.
    pub(crate) fn fill(&self, img: &ImageView<'_>, buf: &mut InputBuffers) -> Geometry {
        self.fill_with(img.width, img.height, buf, |new_w, new_h, r, emit| {
            resize_rows(img, new_w, new_h, &mut r.rgb, |y, row| emit(y, Pixels::Packed(row)));
        })
    }

    /// [`InputPlan::fill`] from a YUV 4:2:0 frame. Each plane is resized
    /// straight to the model's size (chroma from half size, which also
    /// upsamples it), with the same arithmetic as RGB, and only the model's
    /// pixels are converted to RGB: at 1280x720 into 640x360 that converts a
    /// quarter of the pixels a whole-frame conversion would, and no RGB frame
    /// is ever stored. Resizing before converting rather than after differs
    /// by rounding only (both steps are linear): 3 levels at worst.
    pub(crate) fn fill_i420(&self, img: &I420View<'_>, buf: &mut InputBuffers) -> Geometry {
        let convert = YuvToRgb::new(img.matrix, img.full_range);
        self.fill_with(img.width, img.height, buf, |new_w, new_h, r, emit| {
            let (w, h) = (img.width, img.height);
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let planes = [
                Plane { data: img.y, width: w, height: h, stride: img.y_stride },
                Plane { data: img.u, width: cw, height: ch, stride: img.u_stride },
                Plane { data: img.v, width: cw, height: ch, stride: img.v_stride },
            ];
            // How each plane's row for output row y is found: the source row
            // itself when the plane is already at the model's size (or, for
            // chroma, exactly half of it: each sample then covers its 2x2
            // pixels, as the decoder meant), else a resized copy.
            let mut how = [Rows::Resized; 3];
            for (i, ((plane, scratch), out)) in
                planes.iter().zip(&mut r.planes).zip(&mut r.resized).enumerate()
            {
                let (pw, ph) = (plane.width as usize, plane.height as usize);
                if (pw, ph) == (new_w, new_h) {
                    how[i] = Rows::Source { shift: 0 };
                } else if i > 0 && (2 * pw, 2 * ph) == (new_w, new_h) {
                    how[i] = Rows::Source { shift: 1 };
                } else {
                    out.resize(new_w * new_h, 0);
                    resize_plane_rows::<1>(plane, new_w, new_h, scratch, |y, row| {
                        out[y * new_w..(y + 1) * new_w].copy_from_slice(row);
                    });
                }
            }
            let row = |i: usize, y: usize| -> &[u8] {
                match how[i] {
                    Rows::Source { shift } => {
                        let p = &planes[i];
                        let start = (y >> shift) * p.stride;
                        &p.data[start..start + p.width as usize]
                    }
                    Rows::Resized => &r.resized[i][y * new_w..(y + 1) * new_w],
                }
            };
            let half_chroma = matches!(how[1], Rows::Source { shift: 1 });
            let mut rgb_rows = std::mem::take(&mut r.rgb_rows);
            for plane in &mut rgb_rows {
                plane.resize(new_w, 0);
            }
            for y in 0..new_h {
                let [red, green, blue] = &mut rgb_rows;
                let out = [&mut red[..], &mut green[..], &mut blue[..]];
                if half_chroma {
                    convert.planes::<1>(row(0, y), row(1, y), row(2, y), out);
                } else {
                    convert.planes::<0>(row(0, y), row(1, y), row(2, y), out);
                }
                emit(y, Pixels::Planar([&rgb_rows[0], &rgb_rows[1], &rgb_rows[2]]));
            }
            r.rgb_rows = rgb_rows;
        })
    }

    /// The geometry, padding and tensor writing shared by both pixel
    /// formats; `rows` produces the resized RGB rows.
    fn fill_with(
        &self,
        width: u32,
        height: u32,
        buf: &mut InputBuffers,
        rows: impl FnOnce(usize, usize, &mut Resizers, &mut dyn FnMut(usize, Pixels<'_>)),
    ) -> Geometry {
        let (in_w, in_h) = self.input_size_for(width, height);
        let geometry = match self.resize {
            _ if (in_w, in_h) == (width, height) && self.resize != ResizeMode::Letterbox => {
                Geometry::Identity { frame_w: width, frame_h: height }
            }
            ResizeMode::Letterbox => Geometry::Letterbox(Letterbox::new(width, height, in_w, in_h)),
            ResizeMode::Stretch => Geometry::Stretch { frame_w: width, frame_h: height, in_w, in_h },
            ResizeMode::None => Geometry::Identity { frame_w: width, frame_h: height },
        };
        // Where the resized image sits in the canvas and how big it is.
        let (left, top, new_w, new_h) = match geometry {
            Geometry::Letterbox(lb) => (lb.left, lb.top, lb.new_w, lb.new_h),
            _ => (0, 0, in_w, in_h),
        };
        let n = 3 * in_w as usize * in_h as usize;
        let swap = self.color == ColorOrder::Bgr;
        let sink = Sink { layout: self.layout, w: in_w as usize, h: in_h as usize, swap };
        let key = PadKey {
            layout: self.layout,
            dtype: self.dtype,
            swap,
            pad_value: self.pad_value,
            scale: self.scale,
            mean: self.mean.map(f32::to_bits),
            std: self.std.map(f32::to_bits),
            rect: [in_w, in_h, left, top, new_w, new_h],
        };
        let pad_needed = buf.padded != Some(key);
        buf.padded = Some(key);
        let (new_w, new_h) = (new_w as usize, new_h as usize);
        let (left, top) = (left as usize, top as usize);
        match self.dtype {
            InputType::Uint8 => {
                buf.u8.resize(n, 0);
                let out = &mut buf.u8[..];
                let px = [self.pad_value; 3];
                if pad_needed {
                    sink.pad(out, left as u32, top as u32, new_w as u32, new_h as u32, px);
                }
                rows(new_w, new_h, &mut buf.resize, &mut |y, row| {
                    sink.row(out, left, top + y, row, |_, v| v);
                });
            }
            InputType::Float32 | InputType::Float16 => {
                let norm = self.normaliser();
                let pad = [0, 1, 2].map(|c| norm.apply(c, self.pad_value));
                buf.f32.resize(n, 0.0);
                let out = &mut buf.f32[..];
                if pad_needed {
                    sink.pad(out, left as u32, top as u32, new_w as u32, new_h as u32, pad);
                }
                rows(new_w, new_h, &mut buf.resize, &mut |y, row| {
                    sink.row(out, left, top + y, row, |c, v| norm.apply(c, v));
                });
                if self.dtype == InputType::Float16 {
                    buf.f16.clear();
                    buf.f16.extend(buf.f32.iter().map(|&v| half::f16::from_f32(v)));
                }
            }
        }
        geometry
    }

    fn normaliser(&self) -> Normaliser {
        Normaliser {
            divisor: match self.scale {
                PixelScale::Unit => 255.0,
                PixelScale::Raw => 1.0,
            },
            mean: self.mean,
            std: self.std,
            identity: self.mean == [0.0; 3] && self.std == [1.0; 3],
        }
    }
}

/// `((v / 255) - mean) / std` in float32: the same IEEE operations numpy
/// performs, so the tensor matches the reference bit for bit. Plain arithmetic
/// rather than a lookup table: it vectorises, a table gather does not.
#[derive(Debug, Clone, Copy)]
struct Normaliser {
    divisor: f32,
    mean: [f32; 3],
    std: [f32; 3],
    identity: bool,
}

impl Normaliser {
    #[inline(always)]
    fn apply(&self, c: usize, v: u8) -> f32 {
        let x = f32::from(v) / self.divisor;
        if self.identity { x } else { (x - self.mean[c]) / self.std[c] }
    }
}

/// Writes pixels into a tensor of layout `layout`.
struct Sink {
    layout: Layout,
    w: usize,
    h: usize,
    swap: bool,
}

impl Sink {
    #[inline]
    fn channel(&self, c: usize) -> usize {
        if self.swap { 2 - c } else { c }
    }

    /// Fills everything outside the `new_w x new_h` image at (left, top):
    /// whole rows above and below, and the two side strips of the rows between.
    fn pad<T: Copy>(&self, out: &mut [T], left: u32, top: u32, new_w: u32, new_h: u32, px: [T; 3]) {
        let (left, top, nw, nh) = (left as usize, top as usize, new_w as usize, new_h as usize);
        if nw == self.w && nh == self.h {
            return;
        }
        let (w, h) = (self.w, self.h);
        let right = left + nw;
        match self.layout {
            Layout::Nchw => {
                let plane = w * h;
                for (c, &v) in px.iter().enumerate() {
                    let p = &mut out[self.channel(c) * plane..(self.channel(c) + 1) * plane];
                    p[..top * w].fill(v);
                    p[(top + nh) * w..].fill(v);
                    for y in top..top + nh {
                        p[y * w..y * w + left].fill(v);
                        p[y * w + right..(y + 1) * w].fill(v);
                    }
                }
            }
            Layout::Nhwc => {
                let mut pixel = px;
                if self.swap {
                    pixel.reverse();
                }
                let mut fill = |from: usize, to: usize| {
                    for d in out[from * 3..to * 3].chunks_exact_mut(3) {
                        d.copy_from_slice(&pixel);
                    }
                };
                fill(0, top * w);
                fill((top + nh) * w, h * w);
                for y in top..top + nh {
                    fill(y * w, y * w + left);
                    fill(y * w + right, (y + 1) * w);
                }
            }
        }
    }

    /// Writes one row of pixels at (left, y), converting each byte with `f`.
    #[inline]
    fn row<T: Copy>(
        &self,
        out: &mut [T],
        left: usize,
        y: usize,
        row: Pixels<'_>,
        f: impl Fn(usize, u8) -> T,
    ) {
        crate::simd::dispatch!(self.row_avx2(out, left, y, row, f), self.row_portable(out, left, y, row, f))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_avx2<T: Copy>(
        &self,
        out: &mut [T],
        left: usize,
        y: usize,
        row: Pixels<'_>,
        f: impl Fn(usize, u8) -> T,
    ) {
        self.row_portable(out, left, y, row, f)
    }

    #[inline(always)]
    fn row_portable<T: Copy>(
        &self,
        out: &mut [T],
        left: usize,
        y: usize,
        row: Pixels<'_>,
        f: impl Fn(usize, u8) -> T,
    ) {
        match (self.layout, row) {
            (Layout::Nchw, _) => {
                let plane = self.w * self.h;
                let at = y * self.w + left;
                for c in 0..3 {
                    let ch = self.channel(c);
                    match row {
                        Pixels::Packed(row) => {
                            let dst = &mut out[ch * plane + at..ch * plane + at + row.len() / 3];
                            for (d, px) in dst.iter_mut().zip(row.chunks_exact(3)) {
                                *d = f(c, px[c]);
                            }
                        }
                        Pixels::Planar(planes) => {
                            let src = planes[c];
                            let dst = &mut out[ch * plane + at..ch * plane + at + src.len()];
                            for (d, &v) in dst.iter_mut().zip(src) {
                                *d = f(c, v);
                            }
                        }
                    }
                }
            }
            (Layout::Nhwc, Pixels::Packed(row)) => {
                let at = (y * self.w + left) * 3;
                let dst = &mut out[at..at + row.len()];
                for (d, px) in dst.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                    for c in 0..3 {
                        d[self.channel(c)] = f(c, px[c]);
                    }
                }
            }
            (Layout::Nhwc, Pixels::Planar([r, g, b])) => {
                let n = r.len().min(g.len()).min(b.len());
                let at = (y * self.w + left) * 3;
                let dst = &mut out[at..at + n * 3];
                for (i, d) in dst.chunks_exact_mut(3).enumerate() {
                    for (c, v) in [r[i], g[i], b[i]].into_iter().enumerate() {
                        d[self.channel(c)] = f(c, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(layout: Layout, dtype: InputType, resize: ResizeMode, color: ColorOrder) -> InputPlan {
        InputPlan {
            name: "x".into(),
            layout,
            dtype,
            size: Some((4, 4)),
            resize,
            color,
            scale: PixelScale::Unit,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad_value: 114,
        }
    }

    /// A 4x2 image whose pixel (x, y) is (10x + y, 100 + x, 200 + y).
    fn image() -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..2u8 {
            for x in 0..4u8 {
                v.extend_from_slice(&[10 * x + y, 100 + x, 200 + y]);
            }
        }
        v
    }

    #[test]
    fn letterboxes_into_nchw_and_nhwc_alike() {
        let data = image();
        let img = ImageView::new(&data, 4, 2, 12).expect("view");
        let mut a = InputBuffers::default();
        let mut b = InputBuffers::default();
        plan(Layout::Nchw, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut a);
        plan(Layout::Nhwc, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut b);
        // Rows 0 and 3 are padding, rows 1-2 hold the image.
        for y in 0..4 {
            for x in 0..4 {
                for c in 0..3 {
                    let nchw = a.u8[c * 16 + y * 4 + x];
                    let nhwc = b.u8[(y * 4 + x) * 3 + c];
                    assert_eq!(nchw, nhwc);
                    let want = if y == 0 || y == 3 { 114 } else { data[((y - 1) * 4 + x) * 3 + c] };
                    assert_eq!(nchw, want, "({x},{y}) channel {c}");
                }
            }
        }
    }

    #[test]
    fn a_reused_buffer_is_repadded_when_the_geometry_changes() {
        let p = plan(Layout::Nchw, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb);
        let mut buf = InputBuffers::default();
        // Landscape 4x2: rows 0 and 3 are padding.
        let wide = vec![7u8; 4 * 2 * 3];
        p.fill(&ImageView::new(&wide, 4, 2, 12).expect("view"), &mut buf);
        assert_eq!(&buf.u8[..4], &[114; 4]);
        // Same geometry again: still right (padding kept, image rewritten).
        let wide2 = vec![9u8; 4 * 2 * 3];
        p.fill(&ImageView::new(&wide2, 4, 2, 12).expect("view"), &mut buf);
        assert_eq!((&buf.u8[..4], buf.u8[4]), (&[114u8; 4][..], 9));
        // Portrait 2x4: columns 0 and 3 are padding, rows 0 and 3 are image now.
        let tall = vec![50u8; 2 * 4 * 3];
        p.fill(&ImageView::new(&tall, 2, 4, 6).expect("view"), &mut buf);
        for y in 0..4 {
            let row = &buf.u8[y * 4..y * 4 + 4];
            assert_eq!(row, &[114, 50, 50, 114], "row {y}");
        }
    }

    #[test]
    fn swaps_to_bgr_and_normalises_with_mean_and_std() {
        let data = image();
        let img = ImageView::new(&data, 4, 2, 12).expect("view");
        let mut p = plan(Layout::Nchw, InputType::Float32, ResizeMode::Stretch, ColorOrder::Bgr);
        p.size = Some((4, 2));
        p.mean = [0.485, 0.456, 0.406];
        p.std = [0.229, 0.224, 0.225];
        let mut buf = InputBuffers::default();
        let g = p.fill(&img, &mut buf);
        assert!(matches!(g, Geometry::Identity { .. }));
        // Tensor channel 0 is blue (frame channel 2), normalised with the blue mean/std.
        let v = 200u8;
        let want = (v as f32 / 255.0 - 0.406) / 0.225;
        assert_eq!(buf.f32[0], want);
        let want_r = (0f32 / 255.0 - 0.485) / 0.229;
        assert_eq!(buf.f32[2 * 8], want_r);
    }

    #[test]
    fn converts_to_float16() {
        let data = vec![255u8; 4 * 2 * 3];
        let img = ImageView::new(&data, 4, 2, 12).expect("view");
        let mut buf = InputBuffers::default();
        plan(Layout::Nchw, InputType::Float16, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut buf);
        assert_eq!(buf.f16.len(), 48);
        assert_eq!(buf.f16[4 + 1].to_f32(), 1.0);
        assert_eq!(buf.f16[0], half::f16::from_f32(114.0 / 255.0));
    }

    #[test]
    fn maps_points_back_for_each_geometry() {
        let g = Geometry::Stretch { frame_w: 1000, frame_h: 500, in_w: 100, in_h: 100 };
        assert_eq!(g.to_frame(50.0, 50.0), (500.0, 250.0));
        assert_eq!(g.to_frame(200.0, -3.0), (1000.0, 0.0));
        let g = Geometry::Identity { frame_w: 10, frame_h: 10 };
        assert_eq!(g.normalised_to_frame(0.5, 1.2), (5.0, 10.0));
    }

    /// I420 planes of a smooth, colourful w x h picture (chroma from 2x2
    /// means), BT.709 limited range like HD video.
    fn i420_picture(w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let rgb = |x: usize, y: usize| -> [f64; 3] {
            let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
            [255.0 * fx, 255.0 * (1.0 - fy), 127.0 + 100.0 * (6.0 * fx + 4.0 * fy).sin()]
        };
        let (kr, kb) = (0.2126, 0.0722);
        let yuv = |p: [f64; 3]| {
            let l = kr * p[0] + (1.0 - kr - kb) * p[1] + kb * p[2];
            let u = (p[2] - l) / (2.0 * (1.0 - kb));
            let v = (p[0] - l) / (2.0 * (1.0 - kr));
            [16.0 + l * 219.0 / 255.0, 128.0 + u * 224.0 / 255.0, 128.0 + v * 224.0 / 255.0]
        };
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut y_plane = vec![0u8; w * h];
        let (mut u_plane, mut v_plane) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
        for y in 0..h {
            for x in 0..w {
                y_plane[y * w + x] = yuv(rgb(x, y))[0].round() as u8;
            }
        }
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut u, mut v) = (0.0, 0.0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = yuv(rgb((2 * cx + dx).min(w - 1), (2 * cy + dy).min(h - 1)));
                    u += p[1] / 4.0;
                    v += p[2] / 4.0;
                }
                u_plane[cy * cw + cx] = u.round() as u8;
                v_plane[cy * cw + cx] = v.round() as u8;
            }
        }
        (y_plane, u_plane, v_plane)
    }

    /// Tightly packed I420 planes of a w x h frame, read as HD video is
    /// (BT.709, limited range).
    fn hd_view<'a>(y: &'a [u8], u: &'a [u8], v: &'a [u8], w: usize, h: usize) -> I420View<'a> {
        let cw = w.div_ceil(2);
        I420View::new((y, w), (u, cw), (v, cw), w as u32, h as u32, crate::YuvMatrix::Bt709, false)
            .expect("view")
    }

    #[test]
    fn yuv_conversion_hits_the_reference_colours() {
        let limited = YuvToRgb::new(crate::YuvMatrix::Bt601, false);
        let mut rgb = [0u8; 12];
        // Black, white, BT.601 red and blue (studio swing).
        limited.row::<0>(&[16, 235, 81, 41], &[128, 128, 90, 240], &[128, 128, 240, 110], &mut rgb);
        let want = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]];
        for (got, want) in rgb.chunks(3).zip(want) {
            for c in 0..3 {
                assert!((i32::from(got[c]) - want[c]).abs() <= 2, "{got:?} vs {want:?}");
            }
        }
        let full = YuvToRgb::new(crate::YuvMatrix::Bt709, true);
        full.row::<0>(&[0, 255, 128], &[128, 128, 128], &[128, 128, 128], &mut rgb[..9]);
        assert_eq!(&rgb[..9], &[0, 0, 0, 255, 255, 255, 128, 128, 128]);
    }

    /// The AVX2 and the portable compilations of the per-pixel loops
    /// (resizing, YUV to RGB, tensor writing) fill bit-identical tensors,
    /// from I420 and RGB, at exact and arbitrary scales.
    #[test]
    fn vector_and_portable_loops_fill_identical_tensors() {
        let mut seed = 0x9e37_79b9_u32;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect()
        };
        for (w, h) in [(1280usize, 720usize), (640, 480), (641, 479), (1920, 1080), (333, 517)] {
            let rgb = noise(w * h * 3);
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let (y, u, v) = (noise(w * h), noise(cw * ch), noise(cw * ch));
            let i420 = hd_view(&y, &u, &v, w, h);
            let packed = ImageView::new(&rgb, w as u32, h as u32, w * 3).expect("rgb");
            for (layout, dtype) in [(Layout::Nchw, InputType::Float32), (Layout::Nhwc, InputType::Uint8)] {
                let mut p = plan(layout, dtype, ResizeMode::Letterbox, ColorOrder::Rgb);
                p.size = Some((640, 640));
                let fill_both = |buf: &mut InputBuffers| {
                    p.fill(&packed, buf);
                    let from_rgb = (buf.f32.clone(), buf.u8.clone());
                    p.fill_i420(&i420, buf);
                    (from_rgb, (buf.f32.clone(), buf.u8.clone()))
                };
                let vector = fill_both(&mut InputBuffers::default());
                let portable = crate::simd::portable_only(|| fill_both(&mut InputBuffers::default()));
                let bits = |t: &(Vec<f32>, Vec<u8>)| {
                    (t.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), t.1.clone())
                };
                assert!(
                    bits(&vector.0) == bits(&portable.0),
                    "{w}x{h} RGB, {layout:?}: the two loops differ"
                );
                assert!(
                    bits(&vector.1) == bits(&portable.1),
                    "{w}x{h} I420, {layout:?}: the two loops differ"
                );
            }
        }
    }

    /// Resizing the planes and then converting gives the tensor that
    /// converting the whole frame and then resizing gives, within the
    /// rounding of the two orders (3 levels at worst, under half a level on
    /// average), for a letterbox and a stretch,
    /// odd sizes included.
    #[test]
    fn i420_frames_fill_the_tensor_as_their_rgb_conversion_does() {
        for (w, h, resize, size) in [
            (1280usize, 720usize, ResizeMode::Letterbox, (640u32, 640u32)),
            (640, 480, ResizeMode::Letterbox, (640, 640)),
            (641, 479, ResizeMode::Letterbox, (320, 320)),
            (800, 600, ResizeMode::Stretch, (224, 224)),
        ] {
            let (y, u, v) = i420_picture(w, h);
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let view = hd_view(&y, &u, &v, w, h);
            // The whole frame converted to RGB, chroma upsampled bilinearly
            // first, as a colour converter hands it over.
            let conv = YuvToRgb::new(crate::YuvMatrix::Bt709, false);
            let upsample = |plane: &[u8]| {
                let mut full = vec![0u8; w * h];
                let src = Plane { data: plane, width: cw as u32, height: ch as u32, stride: cw };
                resize_plane_rows::<1>(&src, w, h, &mut ResizeScratch::default(), |row, px| {
                    full[row * w..(row + 1) * w].copy_from_slice(px);
                });
                full
            };
            let (uf, vf) = (upsample(&u), upsample(&v));
            let mut rgb = vec![0u8; w * h * 3];
            for row in 0..h {
                let span = row * w..(row + 1) * w;
                conv.row::<0>(
                    &y[span.clone()],
                    &uf[span.clone()],
                    &vf[span],
                    &mut rgb[row * w * 3..(row + 1) * w * 3],
                );
            }
            // Packed (NHWC) and planar (NCHW, which I420 fills channel by
            // channel), in either colour order.
            for (layout, color) in [
                (Layout::Nhwc, ColorOrder::Rgb),
                (Layout::Nchw, ColorOrder::Rgb),
                (Layout::Nchw, ColorOrder::Bgr),
            ] {
                let mut p = plan(layout, InputType::Uint8, resize, color);
                p.size = Some(size);
                let (mut from_rgb, mut from_yuv) = (InputBuffers::default(), InputBuffers::default());
                let g1 =
                    p.fill(&ImageView::new(&rgb, w as u32, h as u32, w * 3).expect("rgb"), &mut from_rgb);
                let g2 = p.fill_i420(&view, &mut from_yuv);
                assert_eq!(g1, g2);
                let what = format!("{w}x{h} {resize:?} {layout:?} {color:?}");
                let worst = from_rgb
                    .u8
                    .iter()
                    .zip(&from_yuv.u8)
                    .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                    .max();
                assert!(worst.is_some_and(|d| d <= 3), "{what}: differs by up to {worst:?} levels");
                let mean =
                    from_rgb.u8.iter().zip(&from_yuv.u8).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
                        / from_rgb.u8.len() as f64;
                assert!(mean < 0.5, "{what}: differs by {mean} levels on average");
            }
        }
    }
}
