//! The parser of messages on the commands topic: any payload, retained or
//! not, is a command or a refusal with a reason, never a panic; what it
//! accepts is bounded (it ends up in log lines and events).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: (bool, &[u8])| {
    let (retained, payload) = input;
    match vigil_pipeline::mqtt::parse_command(payload, retained) {
        Ok(c) => {
            assert!(!retained, "a retained command was accepted");
            assert!(c.command.len() <= 64 && c.camera.len() <= 64);
            assert!(c.part.as_ref().is_none_or(|p| p.len() <= 256));
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
