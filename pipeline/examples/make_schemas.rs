//! Writes the JSON Schema of every message Vigil publishes into `schemas/`
//! (or the folder given), generated from the Rust types in
//! `vigil_pipeline::event`.
//!
//! Run: `cargo run -p vigil-pipeline --example make_schemas [DIR]`
//! The test `committed_schemas_are_the_generated_ones` fails until the
//! committed files match what this writes.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas"));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in vigil_pipeline::event::schema::files() {
        std::fs::write(dir.join(&name), text)?;
        println!("{}", dir.join(&name).display());
    }
    Ok(())
}
