//! Motion gating: run the model only when something moves.
//!
//! Most cameras at a line, a bay or a gate look at a still scene most of the
//! time. A cheap detector on a small grayscale copy of each frame (about 160
//! pixels wide, sampled straight from the RGB frame: a few microseconds, no
//! allocation after the first frame) compares the frame with a slowly adapting
//! background. Inference runs when enough of the picture changed; otherwise
//! the frame is skipped, except that one frame is inferred at least every
//! `max_interval_s` while tracks are alive (so a parked car or a part on the
//! station stays tracked: the interval is shorter than the tracker's
//! `max_missing_s`) and every `idle_interval_s` when nothing is tracked.
//!
//! ```text
//!  frame ─▶ 160-px gray ─▶ |gray − background| > threshold ─▶ changed share ≥ min_area ─▶ infer
//!                                   ▲ background += (gray − background) / 4
//!
//! The background adapts fast (an object that stops is background after about
//! ten frames): a stopped object costs a few inferences, not seconds of them,
//! and the intervals keep it tracked.
//! ```

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `[cameras.motion]`: when to skip inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionConfig {
    /// Skip inference on still frames. Default: on for detectors, off for
    /// classifiers and anomaly models (an inspection looks at every part,
    /// moving or not).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How much a pixel's brightness (0..255) must differ from the
    /// background to count as changed.
    #[serde(default = "d_threshold")]
    pub threshold: u8,
    /// Share of the picture (0..1) that must change to count as motion.
    #[serde(default = "d_min_area")]
    pub min_area: f32,
    /// While objects are tracked, infer at least this often (seconds). Must
    /// be below the tracker's `max_missing_s`, or still objects would end.
    #[serde(default = "d_max_interval")]
    pub max_interval_s: f64,
    /// With nothing tracked, infer at least this often (seconds): catches
    /// what appears without moving (lights switched on, a slow drift).
    #[serde(default = "d_idle_interval")]
    pub idle_interval_s: f64,
    /// Run the detector on the moving part of the frame only (Frigate's
    /// regions): on a frame with motion, the smallest square that holds the
    /// moving region and every tracked object, at least the model's input
    /// size, cropped at full resolution; the whole frame when that square is
    /// not clearly smaller. Small or distant objects in high-resolution
    /// cameras are then seen at their own size instead of scaled down.
    /// Forced and interval inferences still see the whole frame.
    #[serde(default)]
    pub regions: bool,
}

fn d_threshold() -> u8 {
    20
}
fn d_min_area() -> f32 {
    0.002
}
fn d_max_interval() -> f64 {
    0.5
}
fn d_idle_interval() -> f64 {
    2.0
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            enabled: None,
            threshold: d_threshold(),
            min_area: d_min_area(),
            max_interval_s: d_max_interval(),
            idle_interval_s: d_idle_interval(),
            regions: false,
        }
    }
}

/// A square of the frame to run the detector on, in pixels (even origin,
/// as an I420 crop needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

/// The region the detector should see on a frame with motion: the square
/// around `moving` (normalised `[x1, y1, x2, y2]`) and the `tracked` boxes
/// (pixels), with a margin, at least `model_side` pixels so nothing is
/// scaled down. `None` (the whole frame) when that square would cover more
/// than three quarters of the frame's shorter side: little would be gained,
/// and objects near the edges would be cut.
pub fn detection_region(
    frame: (u32, u32),
    model_side: u32,
    moving: [f32; 4],
    tracked: &[vigil_inference::BBox],
) -> Option<Region> {
    let (fw, fh) = (frame.0 as f32, frame.1 as f32);
    let (mut x1, mut y1, mut x2, mut y2) = (moving[0] * fw, moving[1] * fh, moving[2] * fw, moving[3] * fh);
    for b in tracked {
        (x1, y1, x2, y2) = (x1.min(b.x1), y1.min(b.y1), x2.max(b.x2), y2.max(b.y2));
    }
    // The motion grid is coarse (a cell is 1/160 of the width) and a moving
    // object's edges may not have changed: a margin of a tenth plus 16 px.
    let margin_x = (x2 - x1) * 0.1 + 16.0;
    let margin_y = (y2 - y1) * 0.1 + 16.0;
    let (x1, y1, x2, y2) = (
        (x1 - margin_x).max(0.0),
        (y1 - margin_y).max(0.0),
        (x2 + margin_x).min(fw),
        (y2 + margin_y).min(fh),
    );
    let side = (x2 - x1).max(y2 - y1).max(model_side as f32).ceil();
    if side > 0.75 * fw.min(fh) {
        return None;
    }
    let side = side as u32 + (side as u32 & 1);
    let centred = |lo: f32, hi: f32, limit: u32| -> u32 {
        let start = ((lo + hi) / 2.0 - side as f32 / 2.0).round().max(0.0) as u32;
        start.min(limit - side) & !1
    };
    Some(Region { x: centred(x1, x2, frame.0), y: centred(y1, y2, frame.1), side })
}

/// Width of the grayscale copy the detector works on.
const GRID_WIDTH: u32 = 160;
/// The background is kept x16 (fixed point) ...
const BG_SHIFT: u32 = 4;
/// ... and moves 1/4 of the way to each frame.
const ALPHA_SHIFT: u32 = 2;

/// What the detector saw in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    /// Share of the picture that changed (0..1).
    pub changed: f32,
    /// Bounding box of the changed cells, normalised `[x1, y1, x2, y2]`.
    pub region: Option<[f32; 4]>,
}

/// A background model over a downscaled grayscale copy of the frames.
#[derive(Debug, Default)]
pub struct MotionDetector {
    grid_w: u32,
    grid_h: u32,
    /// For the frame size the grid was made for.
    frame_size: (u32, u32),
    /// Background brightness, x16 fixed point.
    background: Vec<u16>,
    gray: Vec<u8>,
}

impl MotionDetector {
    /// Measures motion in an RGB frame (`stride` bytes a row) and folds the
    /// frame into the background. The first frame (and a frame of a new
    /// size) only sets the background and counts as full motion.
    pub fn measure(&mut self, rgb: &[u8], width: u32, height: u32, stride: usize, threshold: u8) -> Motion {
        self.measure_picture(Picture::Rgb { data: rgb, stride }, width, height, threshold)
    }

    /// [`MotionDetector::measure`] on a frame as it comes: packed RGB, or the
    /// luma plane of a YUV frame (read as is: no conversion at all).
    pub fn measure_picture(
        &mut self,
        picture: Picture<'_>,
        width: u32,
        height: u32,
        threshold: u8,
    ) -> Motion {
        if width == 0 || height == 0 {
            return Motion { changed: 0.0, region: None };
        }
        let fresh = self.frame_size != (width, height) || self.background.is_empty();
        if fresh {
            self.frame_size = (width, height);
            self.grid_w = GRID_WIDTH.min(width);
            self.grid_h = ((u64::from(height) * u64::from(self.grid_w)) / u64::from(width)).max(1) as u32;
            let n = (self.grid_w * self.grid_h) as usize;
            self.background = vec![0; n];
            self.gray = vec![0; n];
        }
        self.sample(picture, width, height);
        if fresh {
            for (b, &g) in self.background.iter_mut().zip(&self.gray) {
                *b = u16::from(g) << BG_SHIFT;
            }
            return Motion { changed: 1.0, region: Some([0.0, 0.0, 1.0, 1.0]) };
        }
        let thr = i32::from(threshold) << BG_SHIFT;
        let (gw, gh) = (self.grid_w as usize, self.grid_h as usize);
        let (mut n, mut x1, mut y1, mut x2, mut y2) = (0usize, gw, gh, 0usize, 0usize);
        for y in 0..gh {
            let row = y * gw;
            for x in 0..gw {
                let i = row + x;
                let g = i32::from(self.gray[i]) << BG_SHIFT;
                let b = i32::from(self.background[i]);
                let d = g - b;
                if d.abs() > thr {
                    n += 1;
                    x1 = x1.min(x);
                    y1 = y1.min(y);
                    x2 = x2.max(x + 1);
                    y2 = y2.max(y + 1);
                }
                // b + d/4, in the x16 domain: stays in 0..=255*16.
                self.background[i] = (b + (d >> ALPHA_SHIFT)) as u16;
            }
        }
        let changed = n as f32 / (gw * gh) as f32;
        let region = (n > 0).then(|| {
            [x1 as f32 / gw as f32, y1 as f32 / gh as f32, x2 as f32 / gw as f32, y2 as f32 / gh as f32]
        });
        Motion { changed, region }
    }

    /// Fills `gray` with the frame's luma at each grid cell: the mean of a
    /// 2x2 block at the cell's centre (enough to calm sensor noise).
    fn sample(&mut self, picture: Picture<'_>, width: u32, height: u32) {
        let (gw, gh) = (self.grid_w as usize, self.grid_h as usize);
        let (w, h) = (width as usize, height as usize);
        let (data, stride, bpp) = match picture {
            Picture::Rgb { data, stride } => (data, stride, 3),
            Picture::Luma { data, stride } => (data, stride, 1),
        };
        let luma = |o: usize| -> u32 {
            match bpp {
                1 => data.get(o).map_or(0, |&v| u32::from(v)),
                _ => data.get(o..o + 3).map_or(0, |p| {
                    (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2])) >> 8
                }),
            }
        };
        for gy in 0..gh {
            let y = ((2 * gy + 1) * h / (2 * gh)).min(h.saturating_sub(2));
            for gx in 0..gw {
                let x = ((2 * gx + 1) * w / (2 * gw)).min(w.saturating_sub(2));
                let o = y * stride + x * bpp;
                let s = luma(o) + luma(o + bpp) + luma(o + stride) + luma(o + stride + bpp);
                self.gray[gy * gw + gx] = (s / 4) as u8;
            }
        }
    }
}

/// The pixels motion is measured on.
#[derive(Debug, Clone, Copy)]
pub enum Picture<'a> {
    /// Packed RGB, `stride` bytes a row.
    Rgb { data: &'a [u8], stride: usize },
    /// One byte of luma per pixel (a YUV frame's Y plane).
    Luma { data: &'a [u8], stride: usize },
}

/// Why a frame was or was not inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Motion,
    /// The interval since the last inference ran out.
    Interval,
    /// Asked for (an inspection command).
    Forced,
    Skip,
}

/// Per camera: the detector plus the intervals.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionConfig,
    detector: MotionDetector,
    last_inference: Option<SystemTime>,
}

impl MotionGate {
    pub fn new(config: MotionConfig) -> MotionGate {
        MotionGate { config, detector: MotionDetector::default(), last_inference: None }
    }

    /// Whether a frame with motion is inferred on its moving region only.
    pub fn regions(&self) -> bool {
        self.config.regions
    }

    /// Decides for one frame. `tracking`: objects are alive on this camera;
    /// `forced`: infer regardless. The caller runs the model unless `Skip`.
    pub fn decide(
        &mut self,
        frame: &vigil_camera::Frame,
        tracking: bool,
        forced: bool,
    ) -> (Decision, Motion) {
        let picture = match frame.i420() {
            Some(p) => Picture::Luma { data: p.y.0, stride: p.y.1 },
            None => Picture::Rgb { data: frame.data(), stride: frame.stride() },
        };
        let motion =
            self.detector.measure_picture(picture, frame.width(), frame.height(), self.config.threshold);
        let now = frame.captured_at();
        let since = self
            .last_inference
            .and_then(|t| now.duration_since(t).ok())
            .map_or(f64::INFINITY, |d| d.as_secs_f64());
        let interval = if tracking { self.config.max_interval_s } else { self.config.idle_interval_s };
        let decision = if forced {
            Decision::Forced
        } else if motion.changed >= self.config.min_area {
            Decision::Motion
        } else if since >= interval {
            Decision::Interval
        } else {
            Decision::Skip
        };
        if decision != Decision::Skip {
            self.last_inference = Some(now);
        }
        (decision, motion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, square: Option<(u32, u32, u32)>, base: u8) -> Vec<u8> {
        let mut rgb = vec![base; (w * h * 3) as usize];
        if let Some((sx, sy, s)) = square {
            for y in sy..(sy + s).min(h) {
                for x in sx..(sx + s).min(w) {
                    let o = ((y * w + x) * 3) as usize;
                    rgb[o..o + 3].fill(255);
                }
            }
        }
        rgb
    }

    #[test]
    fn a_still_scene_has_no_motion_and_a_moving_square_has_it_where_it_is() {
        let (w, h) = (640, 480);
        let mut d = MotionDetector::default();
        let still = frame(w, h, None, 40);
        assert_eq!(
            d.measure(&still, w, h, w as usize * 3, 20).changed,
            1.0,
            "first frame sets the background"
        );
        for _ in 0..5 {
            let m = d.measure(&still, w, h, w as usize * 3, 20);
            assert_eq!(m, Motion { changed: 0.0, region: None });
        }
        // A 64-px square at (320, 240): 1/75 of the picture.
        let moved = frame(w, h, Some((320, 240, 64)), 40);
        let m = d.measure(&moved, w, h, w as usize * 3, 20);
        assert!((m.changed - 1.0 / 75.0).abs() < 0.004, "{m:?}");
        let r = m.region.expect("a region");
        assert!((r[0] - 0.5).abs() < 0.01 && (r[1] - 0.5).abs() < 0.01, "{r:?}");
        assert!((r[2] - 0.6).abs() < 0.01 && (r[3] - 0.633).abs() < 0.01, "{r:?}");
    }

    #[test]
    fn noise_and_slow_light_changes_are_not_motion_and_a_stopped_object_fades_into_the_background() {
        let (w, h) = (320, 240);
        let mut d = MotionDetector::default();
        d.measure(&frame(w, h, None, 100), w, h, w as usize * 3, 20);
        // Brightness drifting by 1 a frame, and +-8 pixel noise.
        for i in 0..60u32 {
            let mut f = frame(w, h, None, 100 + (i / 2) as u8);
            for (j, p) in f.iter_mut().enumerate() {
                *p = p
                    .wrapping_add(((j as u32).wrapping_mul(2654435761).wrapping_add(i) >> 27) as u8 % 17)
                    .wrapping_sub(8);
            }
            let m = d.measure(&f, w, h, w as usize * 3, 20);
            assert!(m.changed < 0.002, "frame {i}: {m:?}");
        }
        // An object that arrives and stays is motion at first, then background.
        let parked = frame(w, h, Some((100, 100, 40)), 130);
        assert!(d.measure(&parked, w, h, w as usize * 3, 20).changed > 0.01);
        let mut frames = 1;
        while d.measure(&parked, w, h, w as usize * 3, 20).changed > 0.0 {
            frames += 1;
            assert!(frames < 30, "never absorbed");
        }
        assert!(frames >= 3, "absorbed too fast: {frames} frames");
    }

    #[test]
    fn the_gate_infers_on_motion_and_at_the_intervals() {
        let (w, h) = (160, 120);
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let at = |ms: u64, square: Option<(u32, u32, u32)>| {
            let f = vigil_camera::Frame::from_rgb("t", 0, w, h, frame(w, h, square, 30));
            vigil_camera::Frame::from_rgb_at("t", 0, &f, t0 + std::time::Duration::from_millis(ms))
        };
        let mut g = MotionGate::new(MotionConfig::default());
        assert_eq!(g.decide(&at(0, None), false, false).0, Decision::Motion, "first frame");
        assert_eq!(g.decide(&at(100, None), false, false).0, Decision::Skip);
        assert_eq!(g.decide(&at(100, None), false, true).0, Decision::Forced);
        // Idle: every 2 s; tracking: every 0.5 s.
        assert_eq!(g.decide(&at(1_000, None), false, false).0, Decision::Skip);
        assert_eq!(g.decide(&at(2_100, None), false, false).0, Decision::Interval);
        assert_eq!(g.decide(&at(2_400, None), true, false).0, Decision::Skip);
        assert_eq!(g.decide(&at(2_600, None), true, false).0, Decision::Interval);
        assert_eq!(g.decide(&at(2_700, Some((40, 40, 20))), true, false).0, Decision::Motion);
    }

    #[test]
    fn the_detector_region_holds_what_moves_and_what_is_tracked_at_model_size_or_more() {
        use vigil_inference::BBox;
        // 1920x1080, a 640 model: motion in the top-left corner.
        let r = detection_region((1920, 1080), 640, [0.05, 0.05, 0.1, 0.1], &[]).expect("a region");
        assert_eq!(r.side, 640, "never smaller than the model's input");
        assert_eq!((r.x, r.y), (0, 0), "clamped into the frame");
        // In the middle: centred on the motion, on even pixels.
        let r = detection_region((1920, 1080), 640, [0.5, 0.5, 0.52, 0.54], &[]).expect("a region");
        let (cx, cy) = (0.51 * 1920.0, 0.52 * 1080.0);
        assert!((r.x as f32 + 320.0 - cx).abs() <= 2.0 && (r.y as f32 + 320.0 - cy).abs() <= 2.0, "{r:?}");
        assert_eq!((r.x % 2, r.y % 2), (0, 0));
        // A tracked object far from the motion widens the square past the model's size.
        let parked = BBox { x1: 1700.0, y1: 600.0, x2: 1760.0, y2: 680.0 };
        let r = detection_region((1920, 1080), 640, [0.6, 0.5, 0.62, 0.54], &[parked]).expect("a region");
        assert!(r.side > 640 && r.x as f32 <= 0.6 * 1920.0 && (r.x + r.side) as f32 >= 1760.0, "{r:?}");
        assert!(r.y + r.side <= 1080 && r.x + r.side <= 1920);
        // Motion over most of the frame, or a frame hardly bigger than the model: the whole frame.
        assert_eq!(detection_region((1920, 1080), 640, [0.1, 0.1, 0.9, 0.9], &[]), None);
        assert_eq!(detection_region((640, 480), 640, [0.4, 0.4, 0.5, 0.5], &[]), None);
    }
}
