//! How many threads each part gets, from the core count.
//!
//! The work on a CPU box is inference (ONNX Runtime's intra-op pool) and
//! video decoding (libav's frame threads), both able to use every core. Left
//! to their defaults, N cameras and M models ask for (N + M) x cores threads,
//! and the scheduler's time slicing then stretches every inference run. The
//! plan:
//! - each model runs one batch at a time (its runner thread), so the models
//!   that cameras use split the cores between them; one model gets them all;
//! - with several cameras, each decoder gets cores / cameras threads (at
//!   least one): the cameras decode in parallel with each other already;
//! - the camera workers only preprocess and track; they wait on the runner
//!   otherwise, and need no share.
//!
//! `models[].threads` overrides a model's share.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadPlan {
    pub cores: usize,
    /// ONNX Runtime intra-op threads per model.
    pub model_threads: BTreeMap<String, usize>,
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
        let model_threads = config
            .models
            .iter()
            .map(|m| {
                let t = match m.threads {
                    0 if used.contains(&m.name.as_str()) => share,
                    // A model no camera uses yet (API swaps only): one thread.
                    0 => 1,
                    t => t,
                };
                (m.name.clone(), t)
            })
            .collect();
        let cameras = config.cameras.len();
        let decode_threads = (cameras > 1).then(|| (cores / cameras).max(1) as u32);
        ThreadPlan { cores, model_threads, decode_threads }
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
    fn one_model_gets_every_core_and_decoders_share_when_cameras_are_many() {
        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det")]), 8);
        assert_eq!(p.model_threads["det"], 8);
        assert_eq!(p.decode_threads, None);

        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det"); 4]), 2);
        assert_eq!(p.model_threads["det"], 2);
        assert_eq!(p.decode_threads, Some(1));

        let p = ThreadPlan::new(&config(&[("det", 0)], &[Some("det"); 4]), 16);
        assert_eq!(p.decode_threads, Some(4));
    }

    #[test]
    fn models_in_use_split_the_cores_and_an_explicit_count_wins() {
        let p = ThreadPlan::new(
            &config(
                &[("a", 0), ("b", 0), ("spare", 0), ("fixed", 3)],
                &[Some("a"), Some("b"), Some("fixed")],
            ),
            8,
        );
        assert_eq!(p.model_threads["a"], 2);
        assert_eq!(p.model_threads["b"], 2);
        assert_eq!(p.model_threads["spare"], 1);
        assert_eq!(p.model_threads["fixed"], 3);
        // Never zero, however many models share few cores.
        let p =
            ThreadPlan::new(&config(&[("a", 0), ("b", 0), ("c", 0)], &[Some("a"), Some("b"), Some("c")]), 2);
        assert!(p.model_threads.values().all(|&t| t == 1));
    }
}
