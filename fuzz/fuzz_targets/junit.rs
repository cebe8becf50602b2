//! JUnit reports written by test runners on workers, matched to the ids of
//! the batch the worker ran.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let batch = [
        "tests/test_a.py::TestX::test_y".to_string(),
        "tests/test_a.py::test_p[1-2]".to_string(),
        "pkg.mod.t1".to_string(),
    ];
    if let Ok(runs) = herd_core::junit::results(xml, &batch) {
        assert!(runs.len() <= batch.len());
        assert!(runs.iter().all(|r| batch.contains(&r.id)));
    }
});
