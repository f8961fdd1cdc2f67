use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use parking_lot::{Condvar, Mutex};

/// One decoded RGB frame (8 bits per channel, packed, rows `stride` bytes apart).
///
/// Cloning is cheap: the pixels are the GStreamer buffer itself, mapped
/// read-only and shared, never copied.
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
    stride: usize,
    /// Byte offset of the first pixel: non-zero for a cropped view.
    offset: usize,
    /// Shared by a frame and its crops: cropping never copies pixels.
    pixels: Arc<Pixels>,
}

enum Pixels {
    Gst(gst::MappedBuffer<gst::buffer::Readable>),
    Owned(Vec<u8>),
}

impl Frame {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_gst(
        camera: Arc<str>,
        seq: u64,
        captured_at: SystemTime,
        captured_instant: Instant,
        pts: Option<Duration>,
        source_latency: Option<Duration>,
        width: u32,
        height: u32,
        stride: usize,
        buffer: gst::MappedBuffer<gst::buffer::Readable>,
    ) -> Frame {
        Frame {
            inner: Arc::new(FrameInner {
                camera,
                seq,
                captured_at,
                captured_instant,
                pts,
                source_latency,
                width,
                height,
                stride,
                offset: 0,
                pixels: Arc::new(Pixels::Gst(buffer)),
            }),
        }
    }

    /// A frame from packed RGB bytes, for tools (`vigil infer` on images) and tests.
    pub fn from_rgb(camera: &str, seq: u64, width: u32, height: u32, rgb: Vec<u8>) -> Frame {
        assert_eq!(rgb.len(), width as usize * height as usize * 3, "packed RGB size");
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
                stride: width as usize * 3,
                offset: 0,
                pixels: Arc::new(Pixels::Owned(rgb)),
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
                stride: i.stride,
                offset: i.offset,
                pixels: i.pixels.clone(),
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
    /// Bytes between the starts of two rows; can exceed `width * 3`.
    pub fn stride(&self) -> usize {
        self.inner.stride
    }
    /// The pixels: `height` rows of `stride` bytes (the last row may end at
    /// `width * 3`), starting at the frame's first pixel.
    pub fn data(&self) -> &[u8] {
        let all: &[u8] = match &*self.inner.pixels {
            Pixels::Gst(b) => b.as_slice(),
            Pixels::Owned(v) => v,
        };
        &all[self.inner.offset..]
    }

    /// A view of the rectangle `x, y, w, h` (pixels, clamped to the frame)
    /// over the same buffer: no pixel is copied.
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Frame {
        let i = &self.inner;
        let x = x.min(i.width.saturating_sub(1));
        let y = y.min(i.height.saturating_sub(1));
        let w = w.clamp(1, i.width - x);
        let h = h.clamp(1, i.height - y);
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
                stride: i.stride,
                offset: i.offset + y as usize * i.stride + x as usize * 3,
                pixels: i.pixels.clone(),
            }),
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
            .field("stride", &self.inner.stride)
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
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            if let Some(f) = st.frame.take() {
                drop(st);
                self.taken.notify_one();
                return Some(f);
            }
            if st.closed || self.ready.wait_until(&mut st, deadline).timed_out() {
                return st.frame.take();
            }
        }
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
