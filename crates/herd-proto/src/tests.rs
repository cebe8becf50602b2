use super::*;
use proptest::prelude::*;

#[test]
fn hello_round_trips_and_has_stable_json() {
    let hello = WorkerMsg::Hello(Hello {
        protocols: vec![1],
        version: "0.1.0".into(),
        slots: 2,
        labels: BTreeMap::from([("gpu".into(), "a100".into())]),
        facts: BTreeMap::new(),
        running: vec![RunningAttempt {
            attempt: 7,
            first_unacked_seq: 3,
        }],
        draining: false,
        disk: Some(DiskReport {
            free_bytes: 10,
            total_bytes: 100,
            workspaces: 3,
            low: None,
        }),
    });
    let text = hello.encode();
    assert!(
        text.starts_with(r#"{"type":"hello","protocols":[1]"#),
        "{text}"
    );
    assert_eq!(WorkerMsg::decode(&text).unwrap(), hello);
}

#[test]
fn a_disk_report_round_trips() {
    let msg = WorkerMsg::Disk(DiskReport {
        free_bytes: 1,
        total_bytes: 2,
        workspaces: 0,
        low: Some("low disk".into()),
    });
    let text = msg.encode();
    assert!(
        text.starts_with(r#"{"type":"disk","free_bytes":1"#),
        "{text}"
    );
    assert_eq!(WorkerMsg::decode(&text).unwrap(), msg);
}

#[test]
fn event_json_is_tagged() {
    let msg = WorkerMsg::Event {
        attempt: 1,
        seq: 2,
        event: JobEvent::StepFinished {
            step: 0,
            status: StepStatus::Failure,
            exit_code: Some(3),
            duration_ms: 10,
            message: None,
        },
    };
    assert_eq!(
        msg.encode(),
        r#"{"type":"event","attempt":1,"seq":2,"event":{"kind":"step_finished","step":0,"status":"failure","exit_code":3,"duration_ms":10}}"#
    );
}

#[test]
fn unknown_fields_and_types_are_rejected() {
    assert!(WorkerMsg::decode(
        r#"{"type":"hello","protocols":[1],"version":"1","slots":1,"root":true}"#
    )
    .is_err());
    assert!(WorkerMsg::decode(r#"{"type":"event","attempt":1,"seq":"x","event":{}}"#).is_err());
    assert!(WorkerMsg::decode(r#"{"type":"launch_missiles"}"#).is_err());
    assert!(WorkerMsg::decode("not json").is_err());
}

#[test]
fn oversized_text_is_rejected_before_parsing() {
    let big = format!(
        r#"{{"type":"heartbeat","x":"{}"}}"#,
        "a".repeat(MAX_TEXT_FRAME)
    );
    assert!(matches!(
        WorkerMsg::decode(&big),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn step_status_names_match_the_wire() {
    for s in [
        StepStatus::Success,
        StepStatus::Failure,
        StepStatus::Error,
        StepStatus::Cancelled,
        StepStatus::Skipped,
    ] {
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
}

#[test]
fn negotiation_picks_highest_common_version() {
    assert_eq!(negotiate(&[1, 2, 3]), Some(2));
    // A protocol-1 worker is still served.
    assert_eq!(negotiate(&[1]), Some(1));
    assert_eq!(negotiate(&[5]), None);
}

#[test]
fn log_frame_rejects_bad_frames() {
    assert!(LogFrame::decode(&[]).is_err());
    assert!(LogFrame::decode(&[1; 10]).is_err());
    let mut wrong_kind = LogFrame {
        attempt: 1,
        seq: 1,
        step: 0,
        offset: 0,
        data: vec![1],
    }
    .encode();
    wrong_kind[0] = 9;
    assert!(LogFrame::decode(&wrong_kind).is_err());
    let empty = LogFrame {
        attempt: 1,
        seq: 1,
        step: 0,
        offset: 0,
        data: vec![],
    }
    .encode();
    assert!(LogFrame::decode(&empty).is_err());
    let huge = vec![LOG_FRAME_KIND; MAX_BINARY_FRAME + 1];
    assert!(matches!(
        LogFrame::decode(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn log_frames_round_trip(attempt in any::<i64>(), seq in any::<u64>(), step in any::<u32>(),
                             offset in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 1..2048)) {
        let frame = LogFrame { attempt, seq, step, offset, data };
        prop_assert_eq!(LogFrame::decode(&frame.encode()).unwrap(), frame);
    }

    #[test]
    fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = LogFrame::decode(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = WorkerMsg::decode(&text);
        let _ = ServerMsg::decode(&text);
    }
}

#[test]
fn artifact_paths_stay_inside_the_workspace() {
    for ok in ["dist/a.whl", "a", "docs/_build/html/index.html", "a..b/c"] {
        assert_eq!(check_artifact_path(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        "./a",
        "a/.",
        "a\\b",
        "a\nb",
    ] {
        assert!(check_artifact_path(bad).is_err(), "{bad:?}");
    }
    assert!(check_artifact_path(&"a".repeat(MAX_ARTIFACT_PATH + 1)).is_err());
}

#[test]
fn fetch_and_upload_steps_round_trip() {
    let step = StepSpec {
        name: "fetch artifacts".into(),
        action: StepAction::Fetch {
            from: vec!["wheels/linux".into()],
            files: vec![ArtifactFile {
                id: 7,
                job: "wheels/linux".into(),
                path: "dist/a.whl".into(),
                size: 3,
                sha256: "ab".into(),
            }],
        },
        timeout_secs: None,
        env: Default::default(),
        always: false,
    };
    let json = serde_json::to_string(&step).unwrap();
    assert_eq!(serde_json::from_str::<StepSpec>(&json).unwrap(), step);
    let up: StepAction = serde_json::from_str(r#"{"kind":"upload","paths":["dist/*"]}"#).unwrap();
    assert_eq!(
        up,
        StepAction::Upload {
            paths: vec!["dist/*".into()]
        }
    );
}
