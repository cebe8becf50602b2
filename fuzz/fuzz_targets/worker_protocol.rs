//! The worker protocol decoders: text frames both ways and binary log frames.
#![no_main]
use herd_proto::{LogFrame, ServerMsg, WorkerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = LogFrame::decode(data) {
        // What decodes, encodes back to the same bytes.
        assert_eq!(frame.encode(), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(msg) = WorkerMsg::decode(text) {
            let again = WorkerMsg::decode(&msg.encode()).expect("an encoded message decodes");
            assert_eq!(again.encode(), msg.encode());
        }
        if let Ok(msg) = ServerMsg::decode(text) {
            let _ = msg.encode();
        }
    }
});
