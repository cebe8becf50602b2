//! Requirement expressions (`python3 >= 3.10 | pypy3`), parsed and matched
//! against a worker's capabilities.
#![no_main]
use herd_core::requirement::{Capabilities, Requirement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the requirement; the others are `name=version`
    // facts of the worker it is matched against.
    let mut lines = text.lines();
    let Some(expr) = lines.next() else { return };
    let mut caps = Capabilities::default();
    for line in lines {
        match line.split_once('=') {
            Some((name, version)) => caps.set(name, version),
            None => caps.set_absent(line),
        }
    }
    if let Ok(req) = Requirement::parse(expr) {
        let _ = req.check(&caps);
        let _ = req.names().count();
    }
});
