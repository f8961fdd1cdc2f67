//! Multi-object tracking: stable ids for the objects a model sees frame after
//! frame. ByteTrack's recipe (two-stage association: confident detections
//! first, then the weak ones to keep existing tracks alive through occlusion)
//! with a constant-velocity Kalman filter per track.
//!
//! The filter: ByteTrack's 8-state filter over (cx, cy, w, h) and their
//! velocities uses diagonal process and measurement noise and a motion model
//! that only couples each coordinate with its own velocity. It therefore
//! splits exactly into four independent 2-state filters (position, velocity),
//! one per coordinate, each with a closed-form 2x2 update: the same estimates
//! for a fraction of the arithmetic.
//!
//! Time is the frames' capture time in seconds, so a camera that skips frames
//! (newest frame wins) predicts motion over the real gap.

use std::sync::Arc;

use vigil_inference::{BBox, Detection};

/// How tracks are made, confirmed and ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerConfig {
    /// Detections at or above this start tracks and are matched first.
    #[serde(default = "d_high")]
    pub high_score: f32,
    /// Detections between this and `high_score` only keep existing tracks alive.
    #[serde(default = "d_low")]
    pub low_score: f32,
    /// Smallest IoU between a track's predicted box and a detection to match them.
    #[serde(default = "d_iou")]
    pub match_iou: f32,
    /// A track is confirmed (and `object.start` sent) after this many matched frames...
    #[serde(default = "d_hits")]
    pub min_hits: u32,
    /// ...or as soon as the median of its scores reaches this, if set.
    #[serde(default)]
    pub confirm_score: Option<f32>,
    /// A track not seen for this many seconds ends (`object.end`).
    #[serde(default = "d_missing")]
    pub max_missing_s: f64,
}

fn d_high() -> f32 {
    0.5
}
fn d_low() -> f32 {
    0.1
}
fn d_iou() -> f32 {
    0.2
}
fn d_hits() -> u32 {
    3
}
fn d_missing() -> f64 {
    1.0
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high_score: d_high(),
            low_score: d_low(),
            match_iou: d_iou(),
            min_hits: d_hits(),
            confirm_score: None,
            max_missing_s: d_missing(),
        }
    }
}

/// One coordinate's position and velocity, with its 2x2 covariance.
#[derive(Debug, Clone, Copy)]
struct Axis {
    p: f64,
    v: f64,
    // Covariance [[pp, pv], [pv, vv]].
    pp: f64,
    pv: f64,
    vv: f64,
}

impl Axis {
    fn new(p: f64, std_p: f64, std_v: f64) -> Axis {
        Axis { p, v: 0.0, pp: std_p * std_p, pv: 0.0, vv: std_v * std_v }
    }

    /// x = F x, P = F P F' + Q with F = [[1, dt], [0, 1]], Q = diag(qp, qv).
    fn predict(&mut self, dt: f64, qp: f64, qv: f64) {
        self.p += self.v * dt;
        let pp = self.pp + dt * (2.0 * self.pv + dt * self.vv) + qp;
        let pv = self.pv + dt * self.vv;
        self.pp = pp;
        self.pv = pv;
        self.vv += qv;
    }

    /// Kalman update with a direct measurement `z` of variance `r`.
    fn update(&mut self, z: f64, r: f64) {
        let s = self.pp + r;
        let (k0, k1) = (self.pp / s, self.pv / s);
        let y = z - self.p;
        self.p += k0 * y;
        self.v += k1 * y;
        let (pp, pv, vv) = (self.pp, self.pv, self.vv);
        self.pp = (1.0 - k0) * pp;
        self.pv = (1.0 - k0) * pv;
        self.vv = vv - k1 * pv;
    }
}

/// Kalman state of a box: centre x, centre y, width, height.
#[derive(Debug, Clone, Copy)]
struct Motion {
    axes: [Axis; 4],
}

// ByteTrack's noise weights, relative to the box height, per frame at the
// 30 fps it was tuned for. Velocities here are in pixels per second, so
// velocity terms are scaled by that frame rate, and noise accrues per
// 1/30 s of elapsed time.
const W_POS: f64 = 1.0 / 20.0;
const W_VEL: f64 = 1.0 / 160.0;
const REF_FPS: f64 = 30.0;

impl Motion {
    fn new(b: &BBox) -> Motion {
        let (cx, cy, w, h) = cxcywh(b);
        let s = h.max(1.0);
        Motion {
            axes: [
                Axis::new(cx, 2.0 * W_POS * s, 10.0 * W_VEL * s * REF_FPS),
                Axis::new(cy, 2.0 * W_POS * s, 10.0 * W_VEL * s * REF_FPS),
                Axis::new(w, 2.0 * W_POS * s, 10.0 * W_VEL * s * REF_FPS),
                Axis::new(h, 2.0 * W_POS * s, 10.0 * W_VEL * s * REF_FPS),
            ],
        }
    }

    fn predict(&mut self, dt: f64) {
        let s = self.axes[3].p.max(1.0);
        let k = (dt * REF_FPS).max(1e-3);
        let (qp, qv) = ((W_POS * s).powi(2) * k, (W_VEL * s * REF_FPS).powi(2) * k);
        for a in &mut self.axes {
            a.predict(dt, qp, qv);
        }
    }

    fn update(&mut self, b: &BBox) {
        let (cx, cy, w, h) = cxcywh(b);
        let r = (W_POS * h.max(1.0)).powi(2);
        for (a, z) in self.axes.iter_mut().zip([cx, cy, w, h]) {
            a.update(z, r);
        }
    }

    fn bbox(&self) -> BBox {
        let [cx, cy, w, h] = self.axes.map(|a| a.p);
        let (w, h) = (w.max(1.0), h.max(1.0));
        BBox {
            x1: (cx - w / 2.0) as f32,
            y1: (cy - h / 2.0) as f32,
            x2: (cx + w / 2.0) as f32,
            y2: (cy + h / 2.0) as f32,
        }
    }
}

fn cxcywh(b: &BBox) -> (f64, f64, f64, f64) {
    let (x1, y1, x2, y2) = (f64::from(b.x1), f64::from(b.y1), f64::from(b.x2), f64::from(b.y2));
    ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1)
}

/// A tracked object.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    pub class_id: u32,
    pub label: Arc<str>,
    /// The latest measured box (the detection it matched).
    pub bbox: BBox,
    pub score: f32,
    pub best_score: f32,
    pub confirmed: bool,
    pub first_seen: f64,
    pub last_seen: f64,
    hits: u32,
    scores: Vec<f32>,
    motion: Motion,
    last_t: f64,
}

impl Track {
    /// Where the filter expects the object now.
    pub fn predicted(&self) -> BBox {
        self.motion.bbox()
    }

    pub fn hits(&self) -> u32 {
        self.hits
    }

    fn median_score(&self) -> f32 {
        let mut s = self.scores.clone();
        s.sort_by(f32::total_cmp);
        s[s.len() / 2]
    }
}

/// What one frame changed.
#[derive(Debug, Default)]
pub struct TrackerUpdate {
    /// Tracks confirmed in this frame (send `object.start`).
    pub started: Vec<u64>,
    /// Confirmed tracks matched in this frame.
    pub seen: Vec<u64>,
    /// Confirmed tracks that ended (not seen for `max_missing_s`), as they last were.
    pub ended: Vec<Track>,
}

/// All tracks of one camera.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker { cfg, tracks: Vec::new(), next_id: 1 }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn get(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Feeds one frame's detections, captured at `t` seconds.
    pub fn update(&mut self, detections: &[Detection], t: f64) -> TrackerUpdate {
        let mut out = TrackerUpdate::default();
        for tr in &mut self.tracks {
            tr.motion.predict((t - tr.last_t).max(0.0));
            tr.last_t = t;
        }
        let (high, low): (Vec<usize>, Vec<usize>) = (0..detections.len())
            .filter(|&i| detections[i].score >= self.cfg.low_score)
            .partition(|&i| detections[i].score >= self.cfg.high_score);

        // Stage 1: every track against the confident detections.
        let all: Vec<usize> = (0..self.tracks.len()).collect();
        let (m1, unmatched_tracks, unmatched_high) =
            self.associate(&all, &high, detections, self.cfg.match_iou);
        // Stage 2: confirmed tracks left over against the weak detections,
        // with a stricter overlap (ByteTrack's second round).
        let confirmed_left: Vec<usize> =
            unmatched_tracks.iter().copied().filter(|&i| self.tracks[i].confirmed).collect();
        let (m2, _, _) = self.associate(&confirmed_left, &low, detections, self.cfg.match_iou.max(0.5));

        for &(ti, di) in m1.iter().chain(&m2) {
            let d = &detections[di];
            let tr = &mut self.tracks[ti];
            tr.motion.update(&d.bbox);
            tr.bbox = d.bbox;
            tr.score = d.score;
            tr.best_score = tr.best_score.max(d.score);
            tr.last_seen = t;
            tr.hits += 1;
            if tr.scores.len() < 64 {
                tr.scores.push(d.score);
            }
            if !tr.confirmed {
                let by_score = self.cfg.confirm_score.is_some_and(|c| tr.median_score() >= c);
                if tr.hits >= self.cfg.min_hits || by_score {
                    tr.confirmed = true;
                    out.started.push(tr.id);
                }
            }
            if tr.confirmed {
                out.seen.push(tr.id);
            }
        }

        // New tracks from confident detections nobody claimed.
        for di in unmatched_high {
            let d = &detections[di];
            let mut tr = Track {
                id: self.next_id,
                class_id: d.class_id,
                label: d.label.clone(),
                bbox: d.bbox,
                score: d.score,
                best_score: d.score,
                confirmed: false,
                first_seen: t,
                last_seen: t,
                hits: 1,
                scores: vec![d.score],
                motion: Motion::new(&d.bbox),
                last_t: t,
            };
            self.next_id += 1;
            let by_score = self.cfg.confirm_score.is_some_and(|c| d.score >= c);
            if self.cfg.min_hits <= 1 || by_score {
                tr.confirmed = true;
                out.started.push(tr.id);
                out.seen.push(tr.id);
            }
            self.tracks.push(tr);
        }

        // Tentative tracks must be matched in every frame; confirmed ones may
        // go missing for up to `max_missing_s`.
        let max_missing = self.cfg.max_missing_s;
        let mut kept = Vec::with_capacity(self.tracks.len());
        for tr in self.tracks.drain(..) {
            let missing = t - tr.last_seen;
            if tr.confirmed && missing > max_missing {
                out.ended.push(tr);
            } else if tr.confirmed || missing <= 0.0 {
                kept.push(tr);
            }
        }
        self.tracks = kept;
        out
    }

    /// Ends every confirmed track (camera stopped or switched off).
    pub fn finish(&mut self) -> Vec<Track> {
        self.tracks.drain(..).filter(|t| t.confirmed).collect()
    }

    /// Greedy matching by highest IoU, same class only. Returns the matches
    /// (track, detection) and what was left on each side.
    fn associate(
        &self,
        tracks: &[usize],
        dets: &[usize],
        detections: &[Detection],
        min_iou: f32,
    ) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
        let mut pairs = Vec::new();
        for &ti in tracks {
            let pred = self.tracks[ti].predicted();
            for &di in dets {
                if detections[di].class_id != self.tracks[ti].class_id {
                    continue;
                }
                // Where the object was last seen counts as well as where
                // constant velocity puts it: an object that stopped during a
                // gap (frames skipped because nothing moved, or dropped)
                // is where it was, not where its old speed would carry it.
                let iou = pred.iou(&detections[di].bbox).max(self.tracks[ti].bbox.iou(&detections[di].bbox));
                if iou >= min_iou {
                    pairs.push((iou, ti, di));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut t_used, mut d_used) = (vec![false; self.tracks.len()], vec![false; detections.len()]);
        let mut matches = Vec::new();
        for (_, ti, di) in pairs {
            if !t_used[ti] && !d_used[di] {
                t_used[ti] = true;
                d_used[di] = true;
                matches.push((ti, di));
            }
        }
        let left_t = tracks.iter().copied().filter(|&t| !t_used[t]).collect();
        let left_d = dets.iter().copied().filter(|&d| !d_used[d]).collect();
        (matches, left_t, left_d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, score: f32) -> Detection {
        Detection {
            class_id: 0,
            label: "car".into(),
            score,
            bbox: BBox { x1: x, y1: y, x2: x + 40.0, y2: y + 30.0 },
        }
    }

    #[test]
    fn one_moving_object_keeps_one_id_from_start_to_end() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut started = Vec::new();
        let mut ended = Vec::new();
        for f in 0..30 {
            let t = f as f64 / 10.0;
            let u = tr.update(&[det(10.0 + 8.0 * f as f32, 50.0, 0.9)], t);
            started.extend(u.started);
            ended.extend(u.ended.into_iter().map(|t| t.id));
        }
        assert_eq!(started, vec![1], "confirmed once, after min_hits");
        assert!(ended.is_empty());
        // Gone: ends once, after max_missing_s.
        for f in 30..50 {
            let u = tr.update(&[], f as f64 / 10.0);
            ended.extend(u.ended.into_iter().map(|t| t.id));
        }
        assert_eq!(ended, vec![1]);
    }

    #[test]
    fn a_short_occlusion_keeps_the_id_and_the_filter_bridges_the_gap() {
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..10 {
            tr.update(&[det(10.0 + 10.0 * f as f32, 50.0, 0.9)], f as f64 / 10.0);
        }
        // Hidden for 5 frames, then seen where constant velocity puts it.
        for f in 10..15 {
            tr.update(&[], f as f64 / 10.0);
        }
        let u = tr.update(&[det(160.0, 50.0, 0.9)], 1.5);
        assert_eq!(u.seen, vec![1], "same track after the gap");
        assert!(u.started.is_empty());
    }

    #[test]
    fn an_object_that_stops_during_a_gap_keeps_its_id() {
        // Moving at 100 px/s, then stopped; seen again 0.5 s later (frames
        // skipped by the motion gate), where it stopped, not 50 px further.
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..10 {
            tr.update(&[det(10.0 + 10.0 * f as f32, 50.0, 0.9)], f as f64 / 10.0);
        }
        let u = tr.update(&[det(100.0, 50.0, 0.9)], 1.4);
        assert_eq!(u.seen, vec![1], "same track after the gap");
        assert!(u.started.is_empty() && u.ended.is_empty());
    }

    #[test]
    fn weak_detections_keep_a_track_alive_but_never_start_one() {
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..5 {
            tr.update(&[det(100.0, 100.0, 0.9)], f as f64 / 10.0);
        }
        for f in 5..40 {
            let u = tr.update(&[det(100.0, 100.0, 0.2)], f as f64 / 10.0);
            assert!(u.ended.is_empty(), "frame {f}");
        }
        let mut fresh = Tracker::new(TrackerConfig::default());
        for f in 0..10 {
            let u = fresh.update(&[det(300.0, 100.0, 0.2)], f as f64 / 10.0);
            assert!(u.started.is_empty());
        }
        assert!(fresh.tracks().is_empty());
    }

    #[test]
    fn two_crossing_objects_keep_their_ids() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // One moves right, one left; they overlap fully at frame 20.
        let id_at =
            |tr: &Tracker, x: f32| tr.tracks().iter().find(|t| (t.bbox.x1 - x).abs() < 1.0).map(|t| t.id);
        let (mut right_mover, mut left_mover) = (None, None);
        for f in 0..40 {
            let x = 8.0 * f as f32;
            let u = tr.update(&[det(x, 100.0, 0.9), det(320.0 - x, 100.0, 0.85)], f as f64 / 15.0);
            assert!(u.ended.is_empty());
            if f == 10 {
                right_mover = id_at(&tr, x);
                left_mover = id_at(&tr, 320.0 - x);
            }
        }
        let x = 8.0 * 39.0;
        assert!(right_mover.is_some() && left_mover.is_some() && right_mover != left_mover);
        assert_eq!(id_at(&tr, x), right_mover, "the object moving right kept its id through the crossing");
        assert_eq!(id_at(&tr, 320.0 - x), left_mover, "the object moving left kept its id");
    }

    #[test]
    fn a_confident_object_can_be_confirmed_at_once_by_score() {
        let cfg = TrackerConfig { confirm_score: Some(0.8), ..TrackerConfig::default() };
        let mut tr = Tracker::new(cfg);
        let u = tr.update(&[det(0.0, 0.0, 0.95)], 0.0);
        assert_eq!(u.started, vec![1]);
    }

    #[test]
    fn the_filter_learns_velocity() {
        let mut m = Motion::new(&BBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 });
        for i in 1..20 {
            m.predict(0.1);
            let x = 5.0 * i as f32;
            m.update(&BBox { x1: x, y1: 0.0, x2: x + 10.0, y2: 10.0 });
        }
        let v = m.axes[0].v;
        assert!((v - 50.0).abs() < 5.0, "velocity {v} px/s");
        m.predict(0.1);
        assert!((m.bbox().x1 - 100.0).abs() < 2.0, "{:?}", m.bbox());
    }
}
