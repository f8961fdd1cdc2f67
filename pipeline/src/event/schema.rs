//! The JSON Schemas of the messages, generated from their types: one
//! self-contained file per message type (draft 2020-12), the files in
//! `schemas/` at the repository root.
//!
//! Write them with `cargo run -p vigil-pipeline --example make_schemas`; the
//! test `committed_schemas_are_the_generated_ones` fails when they differ.
//! The pieces below are the constraints serde types cannot say (patterns,
//! ranges); the fields that carry them name them with `schema_with`.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::{Detections, Envelope, KINDS, Stamp};

const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

pub(crate) fn timestamp() -> Schema {
    json_schema!({ "type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$" })
}

pub(crate) fn schema_version(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "const": super::SCHEMA_VERSION })
}

pub(crate) fn uuid_v7(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
    })
}

/// Device, camera, zone, line and rule names: what the config allows.
pub(crate) fn name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": NAME_PATTERN })
}

pub(crate) fn name_or_null(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "oneOf": [{ "type": "string", "pattern": NAME_PATTERN }, { "type": "null" }] })
}

pub(crate) fn sha256(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": SHA256_PATTERN })
}

pub(crate) fn sha256_or_null(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "oneOf": [{ "type": "string", "pattern": SHA256_PATTERN }, { "type": "null" }] })
}

pub(crate) fn score(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "number", "minimum": 0, "maximum": 1 })
}

/// Durations: seconds or milliseconds, never negative.
pub(crate) fn seconds(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "number", "minimum": 0 })
}

pub(crate) fn pixels(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "array", "minItems": 4, "maxItems": 4, "items": { "type": "number", "minimum": 0 } })
}

pub(crate) fn normalised(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 4,
        "maxItems": 4,
        "items": { "type": "number", "minimum": 0, "maximum": 1 },
    })
}

pub(crate) fn snapshot(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Path of the annotated JPEG on the local API (GET it from the device), or null.",
        "oneOf": [
            { "type": "string", "pattern": "^/api/v1/snapshots/[A-Za-z0-9._-]+\\.jpg$" },
            { "type": "null" },
        ],
    })
}

/// Serialised messages: what is required is what is always written, and
/// everything is inlined so each file stands alone.
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
}

/// `properties` and `required` of an object schema.
fn parts(s: Schema) -> (serde_json::Map<String, Value>, Vec<Value>) {
    let mut v = s.to_value();
    let props = match v.get_mut("properties").map(Value::take) {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let required = match v.get_mut("required").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    (props, required)
}

fn description_of(s: &Schema) -> String {
    s.get("description").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn document(kind: &str, title: String, description: String, body: Value) -> Value {
    let mut doc = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("https://vigil.dev/schemas/{kind}.v1.schema.json"),
        "title": title,
        "description": description,
    });
    if let (Value::Object(d), Value::Object(b)) = (&mut doc, body) {
        d.extend(b);
    }
    doc
}

/// The schema of one event type: envelope, payload and the publish stamp.
fn event_schema(kind: &str, from_frame: bool, payload: fn(&mut SchemaGenerator) -> Schema) -> Value {
    let mut g = generator();
    let (mut props, mut required) = parts(g.root_schema_for::<Envelope>());
    if from_frame {
        required.extend([json!("camera"), json!("frame")]);
    } else {
        props.remove("camera");
        props.remove("frame");
    }
    let p = payload(&mut g);
    let description = description_of(&p);
    let (p_props, p_required) = parts(p);
    let (s_props, s_required) = parts(g.root_schema_for::<Stamp>());
    props.insert("type".into(), json!({ "const": kind }));
    required.push(json!("type"));
    props.extend(p_props);
    props.extend(s_props);
    required.extend(p_required);
    required.extend(s_required);
    document(
        kind,
        format!("Vigil {kind} event"),
        format!(
            "{description} Published on <topic_prefix>/<device_id>/events, QoS 1, through the durable outbox."
        ),
        json!({ "type": "object", "additionalProperties": false, "required": required, "properties": props }),
    )
}

/// Every schema file: its name in `schemas/` and its text.
pub fn files() -> Vec<(String, String)> {
    let mut docs: Vec<(String, Value)> = KINDS
        .iter()
        .map(|(kind, from_frame, payload)| (kind.to_string(), event_schema(kind, *from_frame, *payload)))
        .collect();

    let s = generator().root_schema_for::<Detections>();
    let description = description_of(&s);
    let mut body = s.to_value();
    if let Value::Object(m) = &mut body {
        for k in ["$schema", "title", "description"] {
            m.remove(k);
        }
    }
    docs.push((
        "detections".into(),
        document("detections", "Vigil detections event".into(), description, body),
    ));

    docs.push((
        "status".into(),
        document(
            "status",
            "Vigil status".into(),
            "Retained on <topic_prefix>/<device_id>/status as plain text (not JSON): online after \
             connecting, offline on a clean stop and as the broker's last will."
                .into(),
            json!({ "enum": ["online", "offline"] }),
        ),
    ));

    docs.into_iter()
        .map(|(kind, doc)| {
            let text = serde_json::to_string_pretty(&doc).expect("schema JSON") + "\n";
            (format!("{kind}.v1.schema.json"), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn committed_schemas_are_the_generated_ones() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let regenerate = "regenerate them with `cargo run -p vigil-pipeline --example make_schemas`";
        let files = files();
        for (name, text) in &files {
            let committed = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("schemas/{name}: {e}; {regenerate}"));
            assert!(committed == *text, "schemas/{name} is not what the Rust types say; {regenerate}");
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("schemas/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".schema.json"))
            .collect();
        on_disk.sort();
        let mut generated: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
        generated.sort();
        assert_eq!(on_disk, generated, "schemas/ holds a schema no type generates; {regenerate}");
    }
}
