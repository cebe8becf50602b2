//! The herd.yml parser: any text is a pipeline or an error with a place.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match herd_core::Pipeline::parse("herd.yml", text) {
            Ok(p) => {
                // What the server derives from a parsed pipeline must hold too.
                let _ = herd_core::probe::probes_for(&p);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
