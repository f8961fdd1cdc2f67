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
mod tests;
