//! The config check and the conversions `vigil run` makes: any config that
//! `check` accepts must convert without a panic (a negative age, NaN, a
//! count that overflows in bytes...). Two kinds of input: numbers put into
//! every numeric field of an otherwise valid config (where the bugs live),
//! and arbitrary text (the parser and its error messages must not panic).
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use vigil_pipeline::LoadedConfig;
use vigil_pipeline::settings::{RunSettings, fuzzing};

#[derive(Debug, Arbitrary)]
enum Input {
    /// (field, value): the field modulo the number of fields; the value
    /// either any f64 or one of the edges the checks have.
    Numbers(Vec<(u8, Value)>),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Any(f64),
    Edge(u8),
    Int(i64),
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let text = match input {
        Input::Numbers(picks) => {
            let picks: Vec<(usize, f64)> = picks
                .into_iter()
                .take(32)
                .map(|(f, v)| {
                    let v = match v {
                        Value::Any(v) => v,
                        Value::Edge(i) => fuzzing::EDGES[usize::from(i) % fuzzing::EDGES.len()],
                        Value::Int(i) => i as f64,
                    };
                    (usize::from(f), v)
                })
                .collect();
            fuzzing::config_text(model, &picks)
        }
        Input::Text(t) => t,
    };
    if let Ok(loaded) = LoadedConfig::from_str(&text, Path::new("/fuzz/vigil.toml"), Path::new("/fuzz")) {
        let settings = RunSettings::new(&loaded, 4);
        assert!(settings.max_upload_bytes > 0);
    }
});
