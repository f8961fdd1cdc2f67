//! The yolov8 decoder on arbitrary output tensors: see fuzz/src/lib.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|case: vigil_fuzz::Case| {
    vigil_fuzz::check(vigil_inference::DecoderKind::YoloV8, &case);
});
