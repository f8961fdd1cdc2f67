//! How many threads each part gets, from the core count.
//!
//! The work on a CPU box is inference (ONNX Runtime's intra-op pool) and
//! video decoding (libav's frame threads), both able to use every core. Left
//! to their defaults, N cameras and M models ask for (N + M) x cores threads,
//! and the scheduler's time slicing then stretches every inference run. The
//! plan:
//! - the models that cameras use split the cores between them; one model
//!   gets them all;
//! - on the CPU, a model with several cameras runs as several copies of its
//!   session side by side, one per camera up to its share of the cores, each
//!   with share / copies threads: single-threaded runs waste nothing on
//!   synchronisation (on two cores, two one-thread copies give more frames
//!   per second than one two-thread copy), at the price of the weights
//!   held twice and a longer run per frame. GPUs get one copy and batches;
//! - with several cameras, each decoder gets cores / cameras threads (at
//!   least one): the cameras decode in parallel with each other already;
//! - a CPU model with one camera and at least two threads gets two lanes:
//!   a frame that finds the model idle runs with every thread (the
//!   shortest run, what a live camera's latency wants), and when frames
//!   queue two run side by side on half the threads each (more frames per
//!   second: YOLOv8n on two cores, 40.7 runs/s against 36.4), at the price
//!   of two more copies of the session;
//! - the camera workers only preprocess and track; they wait on the runner
//!   otherwise, and need no share.
//!
//! `models[].threads`, `models[].sessions` and `models[].lanes` override the
//! plan for a model.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadPlan {
    pub cores: usize,
    /// ONNX Runtime intra-op threads per session of each model.
    pub model_threads: BTreeMap<String, usize>,
    /// Copies of each model's session running side by side.
    pub model_sessions: BTreeMap<String, usize>,
    /// Side-by-side lanes of each model, for a camera faster than a run with every thread (0: none).
    pub model_lanes: BTreeMap<String, usize>,
    /// libav `max-threads` per camera decoder; `None`: the decoder's default
    /// (one per core).
    pub decode_threads: Option<u32>,
}

impl ThreadPlan {
    pub fn new(config: &Config, cores: usize) -> ThreadPlan {
        let cores = cores.max(1);
        let used: Vec<&str> = config
            .models
            .iter()
            .filter(|m| config.cameras.iter().any(|c| c.model.as_ref() == Some(&m.name)))
            .map(|m| m.name.as_str())
            .collect();
        let share = (cores / used.len().max(1)).max(1);
        let mut model_threads = BTreeMap::new();
        let mut model_sessions = BTreeMap::new();
        let mut model_lanes = BTreeMap::new();
        for m in &config.models {
            let cameras = config.cameras.iter().filter(|c| c.model.as_ref() == Some(&m.name)).count();
            // A model no camera uses yet (API swaps only) gets one thread.
            let share = if cameras > 0 { share } else { 1 };
            let cpu = m.provider == vigil_inference::Provider::Cpu;
            let (threads, sessions) = match (m.threads, m.sessions) {
                (0, Some(s)) => ((share / s).max(1), s),
                (t, Some(s)) => (t, s),
                (0, None) if cpu && cameras > 1 => {
                    let s = cameras.min(share);
                    ((share / s).max(1), s)
                }
                (0, None) => (share, 1),
                (t, None) => (t, 1),
            };
            let lanes = match m.lanes {
                Some(n) if n > 1 => n,
                Some(_) => 0,
                None if cpu && cameras == 1 && m.sessions.is_none() && threads >= 2 => 2,
                None => 0,
            };
            model_threads.insert(m.name.clone(), threads);
            model_sessions.insert(m.name.clone(), sessions);
            model_lanes.insert(m.name.clone(), lanes);
        }
        let cameras = config.cameras.len();
        let decode_threads = (cameras > 1).then(|| (cores / cameras).max(1) as u32);
        ThreadPlan { cores, model_threads, model_sessions, model_lanes, decode_threads }
    }

    /// The cores this process may use (cgroup and affinity limits included).
    pub fn available_cores() -> usize {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[(&str, usize)], cameras: &[Option<&str>]) -> Config {
        let mut toml = String::new();
        for (name, threads) in models {
            toml += &format!("[[models]]\nname = \"{name}\"\npath = \"m.onnx\"\nthreads = {threads}\n");
        }
        for (i, model) in cameras.iter().enumerate() {
            toml += &format!("[[cameras]]\nname = \"c{i}\"\nsource = \"test://ball\"\n");
            if let Some(m) = model {
                toml += &format!("model = \"{m}\"\n");
            }
        }
        toml::from_str(&toml).expect("config")
    }

    #[test]
    fn one_camera_gets_every_core_in_one_session_and_two_lanes() {
        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det")]), 8);
        assert_eq!((p.model_threads["det"], p.model_sessions["det"], p.model_lanes["det"]), (8, 1, 2));
        assert_eq!(p.decode_threads, None);
        // One core: nothing to split.
        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det")]), 1);
        assert_eq!((p.model_threads["det"], p.model_lanes["det"]), (1, 0));
    }

    #[test]
    fn lanes_are_planned_only_for_one_cpu_camera_and_the_config_wins() {
        // (lanes, sessions, threads) as a config sets them, on one model.
        let lanes = |set: (Option<usize>, Option<usize>, usize), provider, cameras: usize, cores| {
            let mut c = config(&[("det", 0)], &vec![Some("det"); cameras]);
            (c.models[0].lanes, c.models[0].sessions, c.models[0].threads) = set;
            c.models[0].provider = provider;
            ThreadPlan::new(&c, cores).model_lanes["det"]
        };
        let cpu = vigil_inference::Provider::Cpu;
        assert_eq!(lanes((None, None, 0), cpu, 1, 2), 2);
        assert_eq!(lanes((None, None, 0), cpu, 4, 2), 0, "several cameras run side by side already");
        assert_eq!(lanes((None, None, 0), vigil_inference::Provider::Cuda, 1, 8), 0);
        assert_eq!(lanes((None, Some(1), 0), cpu, 1, 8), 0, "copies set by hand");
        assert_eq!(lanes((None, None, 1), cpu, 1, 8), 0, "one thread: nothing to split");
        assert_eq!(lanes((Some(0), None, 0), cpu, 1, 8), 0);
        assert_eq!(lanes((Some(4), None, 0), cpu, 1, 8), 4);
    }

    #[test]
    fn several_cameras_on_the_cpu_get_side_by_side_sessions_and_share_decoding() {
        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det"); 4]), 2);
        assert_eq!((p.model_threads["det"], p.model_sessions["det"]), (1, 2));
        assert_eq!(p.decode_threads, Some(1));

        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det"); 4]), 16);
        assert_eq!((p.model_threads["det"], p.model_sessions["det"]), (4, 4));
        assert_eq!(p.decode_threads, Some(4));

        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det"); 2]), 8);
        assert_eq!((p.model_threads["det"], p.model_sessions["det"]), (4, 2));
    }

    #[test]
    fn models_in_use_split_the_cores_and_explicit_settings_win() {
        let p = ThreadPlan::new(
            &config(
                &[("a", 0), ("b", 0), ("spare", 0), ("fixed", 3)],
                &[Some("a"), Some("b"), Some("fixed")],
            ),
            8,
        );
        assert_eq!((p.model_threads["a"], p.model_sessions["a"]), (2, 1));
        assert_eq!(p.model_threads["b"], 2);
        assert_eq!(p.model_threads["spare"], 1);
        assert_eq!((p.model_threads["fixed"], p.model_sessions["fixed"]), (3, 1));
        // Never zero, however many models share few cores.
        let p =
            ThreadPlan::new(&config(&[("a", 0), ("b", 0), ("c", 0)], &[Some("a"), Some("b"), Some("c")]), 2);
        assert!(p.model_threads.values().all(|&t| t == 1));
    }

    #[test]
    fn a_gpu_model_runs_one_session_with_batches() {
        let mut c = config(&[("det", 0)], &[Some("det"); 4]);
        c.models[0].provider = vigil_inference::Provider::Cuda;
        let p = ThreadPlan::new(&c, 8);
        assert_eq!(p.model_sessions["det"], 1);
    }
}
