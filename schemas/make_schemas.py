#!/usr/bin/env python3
"""Writes a JSON Schema (draft 2020-12) for every message Vigil publishes, one
self-contained file per type, into this folder. The end-to-end tests validate
every message they receive against the file for its `type`.

Run:  python3 schemas/make_schemas.py     (standard library only)
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"}
NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
BOX = {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0}}
BOX_NORM = {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0, "maximum": 1}}
SCORE = {"type": "number", "minimum": 0, "maximum": 1}
SECONDS = {"type": "number", "minimum": 0}
SNAPSHOT = {
    "description": "Path of the annotated JPEG on the local API (GET it from the device), or null.",
    "oneOf": [{"type": "string", "pattern": "^/api/v1/snapshots/[A-Za-z0-9._-]+\\.jpg$"}, {"type": "null"}],
}
TRACK = {
    "description": "The tracked object: stable id per camera, its class, latest score and box.",
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "label", "class_id", "score", "box", "box_norm"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "label": {"type": "string"},
        "class_id": {"type": "integer", "minimum": 0},
        "score": SCORE,
        "box": {**BOX, "description": "[x1, y1, x2, y2] in frame pixels"},
        "box_norm": {**BOX_NORM, "description": "box divided by the frame's width and height"},
    },
}
DEFECT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}, "box": BOX, "box_norm": BOX_NORM},
}

ENVELOPE = {
    "schema_version": {"const": 1},
    "id": {
        "description": "UUIDv7, unique per event: consumers de-duplicate on it (delivery is at least once).",
        "type": "string",
        "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
    },
    "device": NAME,
    "camera": NAME,
    "time": {**TIMESTAMP, "description": "Capture time of the frame the event happened in (UTC)."},
    "frame": {
        "type": "object",
        "additionalProperties": False,
        "required": ["seq", "width", "height"],
        "properties": {"seq": {"type": "integer", "minimum": 0}, "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1}},
    },
    "model": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "version", "sha256"],
        "properties": {
            "name": {"type": "string", "description": "The model slot."},
            "version": {"type": "integer", "minimum": 1, "description": "Version within the slot (1: the file the config names)."},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    },
    "seq": {
        "description": "The device's event sequence number: consecutive and rising across restarts, so a consumer can spot a gap (an event dropped from a full outbox).",
        "type": "integer",
        "minimum": 1,
    },
    "published_at": {**TIMESTAMP, "description": "When the event was handed to the MQTT client (UTC); a re-delivery has a later one."},
    "latency_ms": {**SECONDS, "description": "Capture to publish, milliseconds."},
}

EVENTS = {
    "object.start": ("A tracked object was confirmed.", {"track": TRACK}),
    "object.update": (
        "A tracked object moved noticeably or changed zones (rate-limited).",
        {"track": TRACK, "zones": {"type": "array", "items": {"type": "string"}}},
    ),
    "object.end": (
        "A tracked object was not seen for the tracker's max_missing_s (or the camera stopped).",
        {"track": TRACK, "duration_s": SECONDS, "best_score": SCORE, "snapshot": SNAPSHOT},
    ),
    "zone.enter": ("A tracked object entered a zone (after the zone's min_dwell_s).", {"zone": NAME, "track": TRACK}),
    "zone.exit": ("A tracked object left a zone it had entered.", {"zone": NAME, "track": TRACK, "dwell_s": SECONDS}),
    "line.cross": (
        "A tracked object crossed a counting line.",
        {"line": NAME, "direction": {"enum": ["left", "right"]}, "count": {"type": "integer", "minimum": 1}, "track": TRACK},
    ),
    "inspection.verdict": (
        "One verdict per inspected part.",
        {
            "rule": NAME,
            "trigger": {"enum": ["zone", "command", "interval"]},
            "part": {"description": "The part: a track summary (zone trigger), the id given in the command, or null."},
            "verdict": {"enum": ["OK", "NG"]},
            "defects": {"type": "array", "items": DEFECT},
            "snapshot": SNAPSHOT,
        },
    ),
    "safety.alert": (
        "A watched label has persisted (in the zone, if any) for the rule's min_duration_s.",
        {"rule": NAME, "zone": {"oneOf": [NAME, {"type": "null"}]}, "track": TRACK, "duration_s": SECONDS, "snapshot": SNAPSHOT},
    ),
    "safety.clear": (
        "An alerted condition is over.",
        {"rule": NAME, "zone": {"oneOf": [NAME, {"type": "null"}]}, "track": TRACK, "duration_s": SECONDS},
    ),
    "curbside.arrival": (
        "A vehicle has waited in the bay for the rule's dwell_s.",
        {"rule": NAME, "bay": NAME, "track": TRACK, "waited_s": SECONDS, "snapshot": SNAPSHOT},
    ),
    "curbside.departure": ("An arrived vehicle left the bay.", {"rule": NAME, "bay": NAME, "track": TRACK, "dwell_s": SECONDS}),
    "model.activated": (
        "A model was swapped in through the API.",
        {
            "slot": NAME,
            "version": {"type": "integer", "minimum": 1},
            "previous": {"oneOf": [{"type": "string", "pattern": "^[0-9a-f]{64}$"}, {"type": "null"}]},
            "switch_ms": SECONDS,
        },
    ),
}


def event_schema(kind, description, fields):
    props = {"type": {"const": kind}, **ENVELOPE, **fields}
    required = ["schema_version", "type", *ENVELOPE.keys(), *fields.keys()]
    if kind == "model.activated":
        # Not tied to a camera frame.
        for k in ("camera", "frame"):
            props.pop(k)
            required.remove(k)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vigil.dev/schemas/{kind}.v1.schema.json",
        "title": f"Vigil {kind} event",
        "description": description + " Published on <topic_prefix>/<device_id>/events, QoS 1, through the durable outbox.",
        "type": "object",
        "additionalProperties": False,
        "required": sorted(set(required), key=required.index),
        "properties": props,
    }


def main():
    for kind, (description, fields) in EVENTS.items():
        path = os.path.join(HERE, f"{kind}.v1.schema.json")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            json.dump(event_schema(kind, description, fields), f, indent=2)
            f.write("\n")
    status = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vigil.dev/schemas/status.v1.schema.json",
        "title": "Vigil status",
        "description": "Retained on <topic_prefix>/<device_id>/status as plain text (not JSON): online after connecting, offline on a clean stop and as the broker's last will.",
        "enum": ["online", "offline"],
    }
    with open(os.path.join(HERE, "status.v1.schema.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(status, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
