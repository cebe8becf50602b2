//! Webhook deliveries: the event header and the payload, after the
//! signature check (a forged delivery never gets this far, a forge's odd
//! payload does).
#![no_main]
use herd_core::webhook::{read_event, HookEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The bytes up to the first newline are the event header.
    let (event, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if let Ok(HookEvent::Push { reference: Some(r) }) = read_event(event, body) {
        assert!(r.chars().count() <= 256);
    }
});
