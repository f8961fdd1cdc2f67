//! Zones (polygons) and lines on a camera's image, in normalised coordinates
//! (0..1 of the frame's width and height, so they survive a resolution
//! change), and the per-track bookkeeping that turns positions into
//! `zone.enter` / `zone.exit` (with dwell) and `line.cross` (with direction).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vigil_inference::BBox;

use crate::event::Direction;

/// Which point of a box stands for the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// Middle of the bottom edge: where a person's feet or a car's wheels
    /// touch the ground, which is what floor zones are drawn around.
    #[default]
    Bottom,
    Center,
}

impl Anchor {
    pub fn point(self, b: &BBox, frame_w: f32, frame_h: f32) -> (f32, f32) {
        let x = (b.x1 + b.x2) / 2.0 / frame_w;
        let y = match self {
            Anchor::Bottom => b.y2,
            Anchor::Center => (b.y1 + b.y2) / 2.0,
        } / frame_h;
        (x, y)
    }
}

/// A polygon zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    /// Corners `[[x, y], ...]`, fractions of the frame, at least three.
    pub polygon: Vec<[f32; 2]>,
    /// Only these labels count; empty: every label.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Seconds an object must stay inside before `zone.enter` fires (and
    /// brief passes through do not count).
    #[serde(default)]
    pub min_dwell_s: f64,
    #[serde(default)]
    pub anchor: Anchor,
}

/// A counting line, crossed from one side to the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    /// Start and end, fractions of the frame. Looking from `from` to `to`,
    /// an object that crosses to the left counts as `left`, to the right as `right`.
    pub from: [f32; 2],
    pub to: [f32; 2],
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub anchor: Anchor,
}

/// Checks a polygon; the error says what is wrong and how to fix it.
pub fn validate_polygon(p: &[[f32; 2]]) -> Result<(), String> {
    if p.len() < 3 {
        return Err(format!("has {} corner(s); a zone needs at least 3 [x, y] pairs", p.len()));
    }
    if let Some(c) = p.iter().find(|c| !c.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v))) {
        return Err(format!("corner {c:?} is outside the frame; use fractions between 0 and 1"));
    }
    let area: f32 = (0..p.len())
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % p.len()]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum::<f32>()
        / 2.0;
    if area.abs() < 1e-6 {
        return Err("has no area (its corners are on one line)".into());
    }
    let n = p.len();
    for i in 0..n {
        for j in i + 1..n {
            // Neighbouring edges share a corner; skip them.
            if j == i + 1 || (i == 0 && j == n - 1) {
                continue;
            }
            if segments_cross(p[i], p[(i + 1) % n], p[j], p[(j + 1) % n]) {
                return Err(format!(
                    "edges {}-{} and {}-{} cross each other; list the corners in order around the zone",
                    i,
                    (i + 1) % n,
                    j,
                    (j + 1) % n
                ));
            }
        }
    }
    Ok(())
}

/// Even-odd rule: whether (x, y) is inside the polygon.
pub fn contains(poly: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut inside = false;
    let n = poly.len();
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = (poly[i][0], poly[i][1]);
        let (xj, yj) = (poly[j][0], poly[j][1]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Which side of a → b the point is on: > 0 left, < 0 right (image
/// coordinates, y down, as seen on screen).
fn side(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    // y grows downwards in images; flip it so "left" is left on screen.
    (b[0] - a[0]) * (a[1] - p[1]) - (a[1] - b[1]) * (p[0] - a[0])
}

fn segments_cross(a: [f32; 2], b: [f32; 2], c: [f32; 2], d: [f32; 2]) -> bool {
    let (d1, d2) = (side(a, b, c), side(a, b, d));
    let (d3, d4) = (side(c, d, a), side(c, d, b));
    d1 * d2 < 0.0 && d3 * d4 < 0.0
}

/// Something a track did with respect to zones and lines.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneEvent {
    Enter {
        zone: String,
        track: u64,
    },
    /// `dwell_s` from entering (the moment it was first inside) to leaving.
    Exit {
        zone: String,
        track: u64,
        dwell_s: f64,
    },
    Cross {
        line: String,
        track: u64,
        direction: Direction,
        count: u64,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Presence {
    inside_since: Option<f64>,
    entered: bool,
}

/// Zone and line state for one camera.
#[derive(Debug)]
pub struct ZoneState {
    zones: Vec<ZoneConfig>,
    lines: Vec<LineConfig>,
    presence: HashMap<(u64, usize), Presence>,
    last_point: HashMap<(u64, usize), [f32; 2]>,
    /// Per line: crossings to the left, to the right.
    counts: Vec<(u64, u64)>,
}

impl ZoneState {
    pub fn new(zones: Vec<ZoneConfig>, lines: Vec<LineConfig>) -> ZoneState {
        let n = lines.len();
        ZoneState {
            zones,
            lines,
            presence: HashMap::new(),
            last_point: HashMap::new(),
            counts: vec![(0, 0); n],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.lines.is_empty()
    }

    /// Names of the zones the track is in now (entered, dwell satisfied).
    pub fn zones_of(&self, track: u64) -> Vec<String> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(i, _)| self.presence.get(&(track, *i)).is_some_and(|p| p.entered))
            .map(|(_, z)| z.name.clone())
            .collect()
    }

    /// Crossing counts per line: (name, left, right).
    pub fn line_counts(&self) -> Vec<(String, u64, u64)> {
        self.lines.iter().zip(&self.counts).map(|(l, c)| (l.name.clone(), c.0, c.1)).collect()
    }

    /// A confirmed track was seen at `bbox` at time `t`.
    pub fn observe(
        &mut self,
        track: u64,
        label: &str,
        bbox: &BBox,
        frame: (f32, f32),
        t: f64,
        out: &mut Vec<ZoneEvent>,
    ) {
        for (i, z) in self.zones.iter().enumerate() {
            if !z.labels.is_empty() && !z.labels.iter().any(|l| l == label) {
                continue;
            }
            let (x, y) = z.anchor.point(bbox, frame.0, frame.1);
            let inside = contains(&z.polygon, x, y);
            let p = self.presence.entry((track, i)).or_default();
            match (inside, p.inside_since) {
                (true, None) => {
                    p.inside_since = Some(t);
                    if z.min_dwell_s <= 0.0 {
                        p.entered = true;
                        out.push(ZoneEvent::Enter { zone: z.name.clone(), track });
                    }
                }
                (true, Some(since)) if !p.entered && t - since >= z.min_dwell_s => {
                    p.entered = true;
                    out.push(ZoneEvent::Enter { zone: z.name.clone(), track });
                }
                (false, Some(since)) => {
                    if p.entered {
                        out.push(ZoneEvent::Exit { zone: z.name.clone(), track, dwell_s: t - since });
                    }
                    *p = Presence::default();
                }
                _ => {}
            }
        }
        for (i, l) in self.lines.iter().enumerate() {
            if !l.labels.is_empty() && !l.labels.iter().any(|x| x == label) {
                continue;
            }
            let (x, y) = l.anchor.point(bbox, frame.0, frame.1);
            let now = [x, y];
            if let Some(prev) = self.last_point.insert((track, i), now)
                && segments_cross(prev, now, l.from, l.to)
            {
                let (direction, count) = if side(l.from, l.to, now) > 0.0 {
                    self.counts[i].0 += 1;
                    (Direction::Left, self.counts[i].0)
                } else {
                    self.counts[i].1 += 1;
                    (Direction::Right, self.counts[i].1)
                };
                out.push(ZoneEvent::Cross { line: l.name.clone(), track, direction, count });
            }
        }
    }

    /// A track ended at `t`: it leaves every zone it was in.
    pub fn end(&mut self, track: u64, t: f64, out: &mut Vec<ZoneEvent>) {
        for (i, z) in self.zones.iter().enumerate() {
            if let Some(p) = self.presence.remove(&(track, i))
                && p.entered
                && let Some(since) = p.inside_since
            {
                out.push(ZoneEvent::Exit { zone: z.name.clone(), track, dwell_s: t - since });
            }
        }
        for i in 0..self.lines.len() {
            self.last_point.remove(&(track, i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> Vec<[f32; 2]> {
        vec![[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]
    }

    fn at(x: f32, y: f32) -> BBox {
        // A 10x10 box whose bottom centre is (x, y) in a 100x100 frame.
        BBox { x1: x * 100.0 - 5.0, y1: y * 100.0 - 10.0, x2: x * 100.0 + 5.0, y2: y * 100.0 }
    }

    #[test]
    fn validates_polygons_with_the_fix() {
        assert!(validate_polygon(&square()).is_ok());
        assert!(validate_polygon(&[[0.0, 0.0], [1.0, 1.0]]).unwrap_err().contains("at least 3"));
        assert!(
            validate_polygon(&[[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]])
                .unwrap_err()
                .contains("outside the frame")
        );
        assert!(validate_polygon(&[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]).unwrap_err().contains("no area"));
        let star = [[0.5, 0.0], [0.8, 1.0], [0.0, 0.35], [1.0, 0.35], [0.2, 1.0]];
        assert!(validate_polygon(&star).unwrap_err().contains("cross each other"));
    }

    #[test]
    fn point_in_polygon() {
        assert!(contains(&square(), 0.5, 0.5));
        assert!(!contains(&square(), 0.3, 0.5));
        let l_shape = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.2], [0.2, 0.2], [0.2, 1.0], [0.0, 1.0]];
        assert!(contains(&l_shape, 0.1, 0.9));
        assert!(!contains(&l_shape, 0.5, 0.5));
    }

    #[test]
    fn crossing_a_zone_gives_one_enter_and_one_exit_with_dwell() {
        let z = ZoneConfig {
            name: "bay".into(),
            polygon: square(),
            labels: vec![],
            min_dwell_s: 0.5,
            anchor: Anchor::Bottom,
        };
        let mut s = ZoneState::new(vec![z], vec![]);
        let mut ev = Vec::new();
        for i in 0..=20 {
            let x = 0.2 + 0.03 * i as f32;
            s.observe(7, "car", &at(x, 0.5), (100.0, 100.0), i as f64 * 0.1, &mut ev);
        }
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], ZoneEvent::Enter { zone: "bay".into(), track: 7 });
        let ZoneEvent::Exit { dwell_s, .. } = ev[1] else { panic!("{ev:?}") };
        // Inside from x = 0.41 (i = 7) to x = 0.59 (i = 13); it leaves at i = 14.
        assert!((dwell_s - 0.7).abs() < 1e-9, "{dwell_s}");
    }

    #[test]
    fn a_brief_pass_shorter_than_min_dwell_fires_nothing_and_labels_filter() {
        let z = ZoneConfig {
            name: "bay".into(),
            polygon: square(),
            labels: vec!["truck".into()],
            min_dwell_s: 0.0,
            anchor: Anchor::Bottom,
        };
        let mut s = ZoneState::new(vec![z.clone()], vec![]);
        let mut ev = Vec::new();
        s.observe(1, "car", &at(0.5, 0.5), (100.0, 100.0), 0.0, &mut ev);
        assert!(ev.is_empty());
        let z = ZoneConfig { labels: vec![], min_dwell_s: 5.0, ..z };
        let mut s = ZoneState::new(vec![z], vec![]);
        for i in 0..10 {
            s.observe(1, "car", &at(0.5, 0.5), (100.0, 100.0), i as f64 * 0.1, &mut ev);
        }
        s.observe(1, "car", &at(0.9, 0.9), (100.0, 100.0), 1.0, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn a_track_that_ends_inside_exits() {
        let z = ZoneConfig {
            name: "bay".into(),
            polygon: square(),
            labels: vec![],
            min_dwell_s: 0.0,
            anchor: Anchor::Bottom,
        };
        let mut s = ZoneState::new(vec![z], vec![]);
        let mut ev = Vec::new();
        s.observe(3, "car", &at(0.5, 0.5), (100.0, 100.0), 1.0, &mut ev);
        assert_eq!(s.zones_of(3), vec!["bay".to_string()]);
        s.end(3, 4.0, &mut ev);
        assert_eq!(ev.last(), Some(&ZoneEvent::Exit { zone: "bay".into(), track: 3, dwell_s: 3.0 }));
    }

    #[test]
    fn line_crossings_have_a_direction_and_a_count() {
        // A vertical line down the middle, drawn top to bottom. Looking from
        // its start to its end (down the screen), screen-right is on the left.
        let l = LineConfig {
            name: "door".into(),
            from: [0.5, 0.0],
            to: [0.5, 1.0],
            labels: vec![],
            anchor: Anchor::Center,
        };
        let mut s = ZoneState::new(vec![], vec![l]);
        let mut ev = Vec::new();
        for (i, x) in [0.3, 0.45, 0.55, 0.7].iter().enumerate() {
            s.observe(1, "person", &at(*x, 0.5), (100.0, 100.0), i as f64, &mut ev);
        }
        for (i, x) in [0.7, 0.4].iter().enumerate() {
            s.observe(2, "person", &at(*x, 0.5), (100.0, 100.0), i as f64, &mut ev);
        }
        assert_eq!(
            ev,
            vec![
                ZoneEvent::Cross { line: "door".into(), track: 1, direction: Direction::Left, count: 1 },
                ZoneEvent::Cross { line: "door".into(), track: 2, direction: Direction::Right, count: 1 },
            ]
        );
        assert_eq!(s.line_counts(), vec![("door".to_string(), 1, 1)]);
    }
}
