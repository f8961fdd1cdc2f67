use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer_video as gst_video;
use parking_lot::{Condvar, Mutex};

/// One decoded frame: packed RGB, or YUV 4:2:0 in three planes (I420) as
/// video decoders produce it.
///
/// Cloning is cheap: the pixels are the GStreamer buffer itself, mapped
/// read-only and shared, never copied. An I420 frame is preprocessed for the
/// model from its planes ([`Frame::i420`]); the RGB picture that snapshots
/// and previews draw on ([`Frame::data`]) is converted on first use only.
#[derive(Clone)]
pub struct Frame {
    inner: Arc<FrameInner>,
}

struct FrameInner {
    camera: Arc<str>,
    seq: u64,
    captured_at: SystemTime,
    captured_instant: Instant,
    pts: Option<Duration>,
    /// From the source's timestamp to the frame leaving the appsink (decode,
    /// conversion, queues), for live sources whose timestamps are running time.
    source_latency: Option<Duration>,
    width: u32,
    height: u32,
    layout: Layout,
    /// Shared by a frame and its crops: cropping never copies pixels.
    pixels: Arc<Pixels>,
    /// An I420 frame's RGB picture, made on first use.
    rgb: OnceLock<Vec<u8>>,
}

/// Where the pixels are in the buffer (byte offsets of the first pixel,
/// bytes between rows).
#[derive(Debug, Clone, Copy)]
enum Layout {
    Rgb { offset: usize, stride: usize },
    I420 { planes: [(usize, usize); 3], matrix: YuvMatrix, full_range: bool },
}

enum Pixels {
    Gst(gst::MappedBuffer<gst::buffer::Readable>),
    Owned(Vec<u8>),
}

impl Pixels {
    fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Gst(b) => b.as_slice(),
            Pixels::Owned(v) => v,
        }
    }
}

/// The YUV -> RGB matrix of the video's colorimetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvMatrix {
    Bt601,
    Bt709,
    Bt2020,
}

/// The planes of an I420 frame: each is (bytes from the first pixel,
/// bytes between rows); U and V are half the width and height, rounded up.
#[derive(Debug, Clone, Copy)]
pub struct I420Planes<'a> {
    pub y: (&'a [u8], usize),
    pub u: (&'a [u8], usize),
    pub v: (&'a [u8], usize),
    pub matrix: YuvMatrix,
    /// Luma 0-255 (JPEG) rather than 16-235 (video).
    pub full_range: bool,
}

/// Strided RGB rows (`stride` bytes apart) as one packed copy, `width * 3`
/// bytes a row.
pub fn packed_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        rgb.extend_from_slice(&data[y * stride..y * stride + w * 3]);
    }
    rgb
}

impl Frame {
    /// A frame over a mapped GStreamer buffer of the format `info` describes
    /// (RGB or I420; anything else is refused). Plane offsets and strides
    /// come from the buffer's video meta when it has one, else from `info`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_gst(
        camera: Arc<str>,
        seq: u64,
        captured_at: SystemTime,
        captured_instant: Instant,
        pts: Option<Duration>,
        source_latency: Option<Duration>,
        info: &gst_video::VideoInfo,
        buffer: gst::MappedBuffer<gst::buffer::Readable>,
    ) -> Option<Frame> {
        let (offsets, strides): (Vec<usize>, Vec<usize>) =
            match buffer.buffer().meta::<gst_video::VideoMeta>() {
                Some(meta) => (meta.offset().to_vec(), meta.stride().iter().map(|&s| s as usize).collect()),
                None => (info.offset().to_vec(), info.stride().iter().map(|&s| s as usize).collect()),
            };
        let layout = match info.format() {
            gst_video::VideoFormat::Rgb => Layout::Rgb { offset: offsets[0], stride: strides[0] },
            gst_video::VideoFormat::I420 if offsets.len() == 3 => {
                let c = info.colorimetry();
                let matrix = match c.matrix() {
                    gst_video::VideoColorMatrix::Bt601 => YuvMatrix::Bt601,
                    gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
                    _ => YuvMatrix::Bt709,
                };
                Layout::I420 {
                    planes: [(offsets[0], strides[0]), (offsets[1], strides[1]), (offsets[2], strides[2])],
                    matrix,
                    full_range: c.range() == gst_video::VideoColorRange::Range0_255,
                }
            }
            _ => return None,
        };
        Some(Frame {
            inner: Arc::new(FrameInner {
                camera,
                seq,
                captured_at,
                captured_instant,
                pts,
                source_latency,
                width: info.width(),
                height: info.height(),
                layout,
                pixels: Arc::new(Pixels::Gst(buffer)),
                rgb: OnceLock::new(),
            }),
        })
    }

    /// A frame from packed RGB bytes, for tools (`vigil infer` on images) and tests.
    pub fn from_rgb(camera: &str, seq: u64, width: u32, height: u32, rgb: Vec<u8>) -> Frame {
        assert_eq!(rgb.len(), width as usize * height as usize * 3, "packed RGB size");
        Frame::owned(camera, seq, width, height, Layout::Rgb { offset: 0, stride: width as usize * 3 }, rgb)
    }

    /// A frame from tightly packed I420 bytes (Y, then U, then V; chroma
    /// planes half size rounded up), for tests and tools.
    pub fn from_i420(
        camera: &str,
        seq: u64,
        width: u32,
        height: u32,
        yuv: Vec<u8>,
        matrix: YuvMatrix,
    ) -> Frame {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        assert_eq!(yuv.len(), w * h + 2 * cw * ch, "packed I420 size");
        let planes = [(0, w), (w * h, cw), (w * h + cw * ch, cw)];
        Frame::owned(camera, seq, width, height, Layout::I420 { planes, matrix, full_range: false }, yuv)
    }

    /// A frame over bytes of its own, captured now.
    fn owned(camera: &str, seq: u64, width: u32, height: u32, layout: Layout, bytes: Vec<u8>) -> Frame {
        Frame {
            inner: Arc::new(FrameInner {
                camera: camera.into(),
                seq,
                captured_at: SystemTime::now(),
                captured_instant: Instant::now(),
                pts: None,
                source_latency: None,
                width,
                height,
                layout,
                pixels: Arc::new(Pixels::Owned(bytes)),
                rgb: OnceLock::new(),
            }),
        }
    }

    /// The same pixels as `other`, as frame `seq` captured at `at`: for
    /// benchmarks and tests that replay one image over time.
    pub fn from_rgb_at(camera: &str, seq: u64, other: &Frame, at: SystemTime) -> Frame {
        let i = &other.inner;
        Frame {
            inner: Arc::new(FrameInner {
                camera: camera.into(),
                seq,
                captured_at: at,
                captured_instant: Instant::now(),
                pts: None,
                source_latency: None,
                width: i.width,
                height: i.height,
                layout: i.layout,
                pixels: i.pixels.clone(),
                rgb: OnceLock::new(),
            }),
        }
    }

    pub fn camera(&self) -> &str {
        &self.inner.camera
    }
    /// Position of this frame in the camera's stream since Vigil started it.
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }
    /// Wall-clock time at which the frame left the decoder.
    pub fn captured_at(&self) -> SystemTime {
        self.inner.captured_at
    }
    /// Monotonic twin of `captured_at`, for latency measurements.
    pub fn captured_instant(&self) -> Instant {
        self.inner.captured_instant
    }
    /// Presentation timestamp from the stream, when it has one.
    pub fn pts(&self) -> Option<Duration> {
        self.inner.pts
    }
    /// Source timestamp to appsink; `None` when the source has no usable timestamps.
    pub fn source_latency(&self) -> Option<Duration> {
        self.inner.source_latency
    }
    pub fn width(&self) -> u32 {
        self.inner.width
    }
    pub fn height(&self) -> u32 {
        self.inner.height
    }
    /// Bytes between the starts of two rows of [`Frame::data`]; can exceed
    /// `width * 3`.
    pub fn stride(&self) -> usize {
        match self.inner.layout {
            Layout::Rgb { stride, .. } => stride,
            Layout::I420 { .. } => self.inner.width as usize * 3,
        }
    }
    /// The picture as packed RGB: `height` rows of `stride` bytes (the last
    /// row may end at `width * 3`), starting at the frame's first pixel. For
    /// an I420 frame this converts it once and keeps the result with the frame.
    pub fn data(&self) -> &[u8] {
        match self.inner.layout {
            Layout::Rgb { offset, .. } => &self.inner.pixels.bytes()[offset..],
            Layout::I420 { .. } => self.rgb(),
        }
    }

    /// The picture as a packed RGB copy (`width * 3` bytes a row) that the
    /// caller may draw on. An I420 frame is converted straight into it and
    /// keeps no RGB of its own: a snapshot or a preview costs one picture,
    /// freed with it, instead of two, one of which lived as long as the frame.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.inner.width as usize, self.inner.height as usize);
        match (self.inner.layout, self.inner.rgb.get()) {
            (Layout::Rgb { stride, .. }, _) => {
                packed_rgb(self.data(), self.inner.width, self.inner.height, stride)
            }
            (Layout::I420 { .. }, Some(rgb)) => rgb.clone(),
            (Layout::I420 { .. }, None) => {
                let mut rgb = vec![0u8; w * h * 3];
                if let Some(p) = self.i420() {
                    i420_to_rgb(&p, w, h, &mut rgb);
                }
                rgb
            }
        }
    }

    /// The planes, for a frame that is I420; `None` for RGB.
    pub fn i420(&self) -> Option<I420Planes<'_>> {
        let Layout::I420 { planes, matrix, full_range } = self.inner.layout else {
            return None;
        };
        let bytes = self.inner.pixels.bytes();
        let plane = |(offset, stride): (usize, usize)| (bytes.get(offset..).unwrap_or_default(), stride);
        Some(I420Planes { y: plane(planes[0]), u: plane(planes[1]), v: plane(planes[2]), matrix, full_range })
    }

    fn rgb(&self) -> &[u8] {
        self.inner.rgb.get_or_init(|| {
            let (w, h) = (self.inner.width as usize, self.inner.height as usize);
            let mut rgb = vec![0u8; w * h * 3];
            if let Some(p) = self.i420() {
                i420_to_rgb(&p, w, h, &mut rgb);
            }
            rgb
        })
    }

    /// A view of the rectangle `x, y, w, h` (pixels, clamped to the frame)
    /// over the same buffer: no pixel is copied. An I420 crop starts on an
    /// even column and row (chroma covers 2x2 pixels).
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Frame {
        let i = &self.inner;
        let (x, y) = match i.layout {
            Layout::Rgb { .. } => (x, y),
            Layout::I420 { .. } => (x & !1, y & !1),
        };
        let x = x.min(i.width.saturating_sub(1));
        let y = y.min(i.height.saturating_sub(1));
        let w = w.clamp(1, i.width - x);
        let h = h.clamp(1, i.height - y);
        let (xs, ys) = (x as usize, y as usize);
        let layout = match i.layout {
            Layout::Rgb { offset, stride } => Layout::Rgb { offset: offset + ys * stride + xs * 3, stride },
            Layout::I420 { planes: [(yo, yst), (uo, ust), (vo, vst)], matrix, full_range } => Layout::I420 {
                planes: [
                    (yo + ys * yst + xs, yst),
                    (uo + ys / 2 * ust + xs / 2, ust),
                    (vo + ys / 2 * vst + xs / 2, vst),
                ],
                matrix,
                full_range,
            },
        };
        Frame {
            inner: Arc::new(FrameInner {
                camera: i.camera.clone(),
                seq: i.seq,
                captured_at: i.captured_at,
                captured_instant: i.captured_instant,
                pts: i.pts,
                source_latency: i.source_latency,
                width: w,
                height: h,
                layout,
                pixels: i.pixels.clone(),
                rgb: OnceLock::new(),
            }),
        }
    }
}

/// The whole picture to packed RGB, for what draws on frames (previews,
/// snapshots): rare next to inference, which reads the planes directly.
/// Chroma is repeated over its 2x2 pixels; integer BT.601/709/2020. The
/// model's preprocessing has its own, fused with resizing, in
/// vigil-inference: the two crates do not depend on each other.
fn i420_to_rgb(p: &I420Planes<'_>, w: usize, h: usize, rgb: &mut [u8]) {
    let (kr, kb) = match p.matrix {
        YuvMatrix::Bt601 => (0.299, 0.114),
        YuvMatrix::Bt709 => (0.2126, 0.0722),
        YuvMatrix::Bt2020 => (0.2627, 0.0593),
    };
    let kg = 1.0 - kr - kb;
    let (y0, yk, ck) = if p.full_range { (0, 1.0, 1.0) } else { (16, 255.0 / 219.0, 255.0 / 224.0) };
    let q = |v: f64| (v * 1024.0).round() as i32;
    let (yk, rv, gu, gv, bu) = (
        q(yk),
        q(2.0 * (1.0 - kr) * ck),
        q(2.0 * (1.0 - kb) * kb / kg * ck),
        q(2.0 * (1.0 - kr) * kr / kg * ck),
        q(2.0 * (1.0 - kb) * ck),
    );
    let px = |v: i32| ((v + 512) >> 10).clamp(0, 255) as u8;
    for row in 0..h {
        let (ys, us, vs) = (&p.y.0[row * p.y.1..], &p.u.0[row / 2 * p.u.1..], &p.v.0[row / 2 * p.v.1..]);
        for (x, out) in rgb[row * w * 3..(row + 1) * w * 3].chunks_exact_mut(3).enumerate() {
            let l = (i32::from(ys[x]) - y0) * yk;
            let (u, v) = (i32::from(us[x / 2]) - 128, i32::from(vs[x / 2]) - 128);
            out[0] = px(l + rv * v);
            out[1] = px(l - gu * u - gv * v);
            out[2] = px(l + bu * u);
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera", &self.inner.camera)
            .field("seq", &self.inner.seq)
            .field("width", &self.inner.width)
            .field("height", &self.inner.height)
            .field("layout", &self.inner.layout)
            .finish_non_exhaustive()
    }
}

/// A one-frame mailbox between a camera and its consumer: the newest frame wins.
///
/// Real time matters more than processing every frame: when the consumer is
/// slower than the camera, the frame it has not taken yet is replaced, and
/// the replacement is counted (`dropped`), never silent.
#[derive(Debug, Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// Signalled when the consumer takes a frame (for `put_wait`).
    taken: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct SlotState {
    frame: Option<Frame>,
    closed: bool,
    /// Set by `nudge`, cleared by the `take_or_nudged` it wakes.
    nudged: bool,
}

/// What [`FrameSlot::take_or_nudged`] woke up to.
#[derive(Debug)]
pub enum Taken {
    Frame(Frame),
    /// [`FrameSlot::nudge`] was called: something else the consumer waits
    /// for is there.
    Nudged,
    /// The time ran out, or the slot is closed and empty.
    Empty,
}

impl FrameSlot {
    pub fn new() -> Arc<FrameSlot> {
        Arc::new(FrameSlot::default())
    }

    /// Stores `frame`, replacing (and counting) one the consumer never took.
    pub fn put(&self, frame: Frame) {
        let mut st = self.state.lock();
        if st.frame.replace(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Stores `frame` once the consumer has taken the previous one: no frame
    /// is lost, the producer waits instead (recordings analysed as fast as
    /// the model allows, `realtime = false`). Gives up waiting, and replaces
    /// as `put` does, when the slot closes or `give_up` says so.
    pub fn put_wait(&self, frame: Frame, give_up: impl Fn() -> bool) {
        let mut st = self.state.lock();
        while st.frame.is_some() && !st.closed && !give_up() {
            self.taken.wait_for(&mut st, Duration::from_millis(100));
        }
        if st.frame.replace(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Waits up to `timeout` for a frame. `None` on timeout or once closed.
    pub fn take_timeout(&self, timeout: Duration) -> Option<Frame> {
        match self.wait(timeout, false) {
            Taken::Frame(f) => Some(f),
            Taken::Nudged | Taken::Empty => None,
        }
    }

    /// [`FrameSlot::take_timeout`] that also returns, without a frame, when
    /// [`FrameSlot::nudge`] is called: a consumer waiting for either a new
    /// frame or something else (its frames' inference answers) waits on one
    /// thing. A nudge made before the wait is not lost.
    pub fn take_or_nudged(&self, timeout: Duration) -> Taken {
        self.wait(timeout, true)
    }

    /// The wait behind both: a frame first; with `nudgeable`, a pending
    /// nudge next (spent); else until the deadline or the slot closes.
    fn wait(&self, timeout: Duration, nudgeable: bool) -> Taken {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            if let Some(f) = st.frame.take() {
                drop(st);
                self.taken.notify_one();
                return Taken::Frame(f);
            }
            if nudgeable && std::mem::take(&mut st.nudged) {
                return Taken::Nudged;
            }
            if st.closed || self.ready.wait_until(&mut st, deadline).timed_out() {
                return st.frame.take().map_or(Taken::Empty, Taken::Frame);
            }
        }
    }

    /// Wakes a consumer in [`FrameSlot::take_or_nudged`] without a frame.
    pub fn nudge(&self) {
        self.state.lock().nudged = true;
        self.ready.notify_all();
    }

    /// Wakes the consumer for good: after this `take_timeout` returns `None`
    /// as soon as the slot is empty.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Frames replaced before the consumer took them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame::from_rgb("t", seq, 2, 1, vec![0; 6])
    }

    #[test]
    fn keeps_the_newest_frame_and_counts_the_replaced_one() {
        let slot = FrameSlot::new();
        slot.put(frame(1));
        slot.put(frame(2));
        slot.put(frame(3));
        let got = slot.take_timeout(Duration::from_millis(1)).map(|f| f.seq());
        assert_eq!(got, Some(3));
        assert_eq!(slot.dropped(), 2);
        assert!(slot.take_timeout(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn wakes_a_waiting_consumer_when_a_frame_arrives() {
        let slot = FrameSlot::new();
        let producer = {
            let slot = slot.clone();
            std::thread::spawn(move || slot.put(frame(7)))
        };
        let got = slot.take_timeout(Duration::from_secs(10)).map(|f| f.seq());
        producer.join().expect("producer thread");
        assert_eq!(got, Some(7));
    }

    #[test]
    fn put_wait_loses_no_frame_and_waits_for_the_consumer() {
        let slot = FrameSlot::new();
        let producer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                for seq in 0..200 {
                    slot.put_wait(frame(seq), || false);
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 200 {
            if let Some(f) = slot.take_timeout(Duration::from_secs(10)) {
                got.push(f.seq());
            }
        }
        producer.join().expect("producer thread");
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert_eq!(slot.dropped(), 0);
        // Closing releases a producer that would wait for ever.
        slot.put_wait(frame(1000), || false);
        slot.close();
        slot.put_wait(frame(1001), || false);
        assert_eq!(slot.dropped(), 1);
    }

    #[test]
    fn a_crop_is_a_view_of_the_same_pixels() {
        // 4x3 frame; pixel (x, y) has red = 10 * y + x.
        let mut rgb = Vec::new();
        for y in 0..3u8 {
            for x in 0..4u8 {
                rgb.extend_from_slice(&[10 * y + x, 0, 0]);
            }
        }
        let f = Frame::from_rgb("c", 0, 4, 3, rgb);
        let c = f.crop(1, 1, 2, 2);
        assert_eq!((c.width(), c.height(), c.stride()), (2, 2, 12));
        let px = |fr: &Frame, x: usize, y: usize| fr.data()[y * fr.stride() + x * 3];
        assert_eq!([px(&c, 0, 0), px(&c, 1, 0), px(&c, 0, 1), px(&c, 1, 1)], [11, 12, 21, 22]);
        assert_eq!(c.data().as_ptr(), f.data()[12 + 3..].as_ptr(), "same memory");
        let clamped = f.crop(3, 2, 10, 10);
        assert_eq!((clamped.width(), clamped.height()), (1, 1));
    }

    #[test]
    fn an_i420_frame_gives_its_planes_crops_them_and_converts_to_rgb_on_demand() {
        // 6x4: luma (x, y) = 16 + 20 * x + y; chroma (cx, cy): U = 100 + cx, V = 150 + cy.
        let (w, h) = (6usize, 4usize);
        let mut yuv: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| (16 + 20 * x + y) as u8)).collect();
        yuv.extend((0..2).flat_map(|_| (0..3).map(|cx| 100 + cx as u8)));
        yuv.extend((0..2).flat_map(|cy| (0..3).map(move |_| 150 + cy as u8)));
        let f = Frame::from_i420("c", 0, w as u32, h as u32, yuv, YuvMatrix::Bt601);
        let p = f.i420().expect("planes");
        assert_eq!((p.y.1, p.u.1, p.v.1), (6, 3, 3));
        assert_eq!((p.y.0[6 + 2], p.u.0[2], p.v.0[3]), (16 + 40 + 1, 102, 151));
        // A crop starts on even pixels and points into the same planes.
        let c = f.crop(3, 1, 2, 2);
        let q = c.i420().expect("planes");
        assert_eq!((c.width(), c.height()), (2, 2));
        assert_eq!(q.y.0[0], 16 + 40, "column 2, row 0");
        assert_eq!((q.u.0[0], q.v.0[0]), (101, 150));
        assert_eq!(q.y.0.as_ptr(), p.y.0[2..].as_ptr(), "same memory");
        // RGB on demand: black and white in studio swing, a neutral grey.
        let grey = Frame::from_i420("c", 0, 2, 2, vec![16, 235, 126, 126, 128, 128], YuvMatrix::Bt709);
        assert_eq!(grey.stride(), 6);
        let d = grey.data();
        assert_eq!(&d[..6], &[0, 0, 0, 255, 255, 255]);
        assert!(d[6..12].iter().all(|&v| (127..=129).contains(&v)), "{:?}", &d[6..12]);
        // An RGB frame has no planes.
        assert!(Frame::from_rgb("c", 0, 1, 1, vec![1, 2, 3]).i420().is_none());
    }

    #[test]
    fn to_rgb_is_a_packed_copy_that_leaves_no_rgb_with_the_frame() {
        let grey = Frame::from_i420("c", 0, 2, 2, vec![16, 235, 126, 126, 128, 128], YuvMatrix::Bt709);
        let copy = grey.to_rgb();
        assert!(grey.inner.rgb.get().is_none(), "converting for a copy caches nothing");
        assert_eq!(copy, grey.data(), "the same pixels as the frame's own RGB");
        assert_eq!(grey.to_rgb(), copy, "and from the cached RGB once there is one");
        // A strided RGB crop comes out packed.
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|v| v as u8).collect();
        let crop = Frame::from_rgb("c", 0, 4, 2, rgb).crop(1, 0, 2, 2);
        assert_eq!(crop.to_rgb(), vec![3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn a_nudge_wakes_the_consumer_without_a_frame_and_is_never_lost() {
        let slot = FrameSlot::new();
        // Made before the wait: returned at once, then spent.
        slot.nudge();
        assert!(matches!(slot.take_or_nudged(Duration::from_secs(10)), Taken::Nudged));
        assert!(matches!(slot.take_or_nudged(Duration::from_millis(1)), Taken::Empty));
        // Made while the consumer waits: wakes it.
        let nudger = {
            let slot = slot.clone();
            std::thread::spawn(move || slot.nudge())
        };
        assert!(matches!(slot.take_or_nudged(Duration::from_secs(10)), Taken::Nudged));
        nudger.join().expect("nudger thread");
        // A frame comes first when both are there.
        slot.nudge();
        slot.put(frame(5));
        assert!(matches!(slot.take_or_nudged(Duration::from_secs(10)), Taken::Frame(f) if f.seq() == 5));
        assert!(matches!(slot.take_or_nudged(Duration::from_secs(10)), Taken::Nudged));
    }

    #[test]
    fn close_releases_the_consumer() {
        let slot = FrameSlot::new();
        let closer = {
            let slot = slot.clone();
            std::thread::spawn(move || slot.close())
        };
        assert!(slot.take_timeout(Duration::from_secs(10)).is_none());
        closer.join().expect("closer thread");
        assert!(slot.is_closed());
    }
}
