//! Versioned encodings of what the store keeps as JSON: job specs
//! (`jobs.spec`) and split states (`splits.data`).
//!
//! Servers sharing one PostgreSQL database read each other's rows, also
//! during a rolling upgrade, and a database outlives the release that
//! wrote it. So every encoded value says which format it is in:
//! `{"v": N, …fields}`. The rule is **read old, write new**: a reader takes
//! every format up to its own (a row without `v` is format 1, from before
//! versions were written) and writes only the newest; a format newer than
//! the reader's is refused with a word to upgrade, never guessed at.
//!
//! A new format: bump the constant, keep the old struct as `…V{n}` with a
//! `From` into the new one, and add its arm to the decoder and a test that
//! reads a row written in the old format.

use super::StoreError;
use herd_core::plan::JobSpec;
use herd_core::split::SplitState;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format `jobs.spec` is written in. 3 added `withheld` and
/// `trusted_requires` (both empty in older rows).
pub const JOB_SPEC_FORMAT: u64 = 3;
/// The format split states are written in. 3 dropped `list` (the tests'
/// keys are the list) for `list_digest`, and moved the state out of
/// `splits.data` into `split_snapshots` (zstd), leaving there only
/// [`SPLIT_STATE_MARKER`].
pub const SPLIT_STATE_FORMAT: u64 = 3;
/// What `splits.data` holds from format 3 on: an older server reading it
/// is told to upgrade.
pub const SPLIT_STATE_MARKER: &str = "{\"v\":3}";

pub fn encode_job_spec(spec: &JobSpec) -> Result<String, StoreError> {
    encode("job spec", JOB_SPEC_FORMAT, spec)
}

pub fn decode_job_spec(text: &str) -> Result<JobSpec, StoreError> {
    match format_of("job spec", text)? {
        // Format 1 (no `v`) has the fields of format 2; format 3 adds
        // fields that default to empty.
        1..=3 => from_text("job spec", text),
        newer => Err(too_new("job spec", newer, JOB_SPEC_FORMAT)),
    }
}

pub fn encode_split_state(state: &SplitState) -> Result<String, StoreError> {
    encode("split state", SPLIT_STATE_FORMAT, state)
}

pub fn decode_split_state(text: &str) -> Result<SplitState, StoreError> {
    match format_of("split state", text)? {
        1..=3 => from_text("split state", text),
        newer => Err(too_new("split state", newer, SPLIT_STATE_FORMAT)),
    }
}

/// A split's snapshot: its state in the newest format, zstd-compressed,
/// written straight into the compressor (no copy of the whole text).
pub fn encode_split_snapshot(state: &SplitState) -> Result<Vec<u8>, StoreError> {
    #[derive(Serialize)]
    struct Versioned<'a> {
        v: u64,
        #[serde(flatten)]
        state: &'a SplitState,
    }
    let corrupt = |e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("cannot encode a split snapshot: {e}"))
    };
    let mut z = zstd::Encoder::new(Vec::new(), 3).map_err(|e| corrupt(&e))?;
    serde_json::to_writer(
        &mut z,
        &Versioned {
            v: SPLIT_STATE_FORMAT,
            state,
        },
    )
    .map_err(|e| corrupt(&e))?;
    z.finish().map_err(|e| corrupt(&e))
}

pub fn decode_split_snapshot(bytes: &[u8]) -> Result<SplitState, StoreError> {
    let text = zstd::decode_all(bytes)
        .map_err(|e| StoreError::Corrupt(format!("a split snapshot cannot be read: {e}")))?;
    // The encoder writes `v` first: read it there rather than parse twice.
    let head = String::from_utf8_lossy(&text[..text.len().min(24)]).into_owned();
    let format = head
        .strip_prefix("{\"v\":")
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt("a split snapshot without its format".into()))?;
    if format > SPLIT_STATE_FORMAT {
        return Err(too_new("split state", format, SPLIT_STATE_FORMAT));
    }
    serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt(format!("split state: {e}")))
}

/// The value's fields with `"v": format` first. (Spliced into the text:
/// these are hot paths, and a JSON object always opens with `{`.)
fn encode<T: Serialize>(what: &str, format: u64, value: &T) -> Result<String, StoreError> {
    let body = serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a {what}: {e}")))?;
    let Some(fields) = body.strip_prefix('{') else {
        return Err(StoreError::Corrupt(format!(
            "a {what} must encode as a JSON object"
        )));
    };
    let sep = if fields.starts_with('}') { "" } else { "," };
    Ok(format!("{{\"v\":{format}{sep}{fields}"))
}

/// The format an encoded value says it is in (1 when it says none). Reads
/// only `v`: serde skips the other fields without building them.
fn format_of(what: &str, text: &str) -> Result<u64, StoreError> {
    #[derive(serde::Deserialize)]
    struct Format {
        #[serde(default)]
        v: Option<u64>,
    }
    let f: Format =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    Ok(f.v.unwrap_or(1))
}

/// The current types ignore `v` (they do not deny unknown fields).
fn from_text<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn too_new(what: &str, format: u64, known: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "a {what} in format {format} was written by a newer herd (this one reads formats up to {known}): upgrade this server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `jobs.spec` as herd 0.1 wrote it, before formats were versioned.
    const SPEC_FORMAT_1: &str = r#"{"requires":[{"alternatives":[{"kind":"compare","name":"os","op":"==","value":"linux"}]}],"steps":[{"name":"checkout","action":{"kind":"checkout","repo":"/r.git","revision":"abc"},"timeout_secs":null,"env":{},"always":false},{"name":"tests","action":{"kind":"split","list":"ls","run":"r {tests}","junit":null},"timeout_secs":60,"env":{"A":"${{ secrets.k }}"},"always":false}],"cap":2,"shard":{"job":"suite","index":1,"of":2,"step":1,"step_name":"tests","flaky_fails":false},"patched":true,"secrets":["k"]}"#;

    #[test]
    fn a_job_spec_of_format_1_is_read() {
        let spec = decode_job_spec(SPEC_FORMAT_1).expect("format 1 reads");
        assert_eq!(spec.requires.len(), 1);
        assert_eq!(spec.steps.len(), 2);
        assert_eq!(spec.cap, Some(2));
        assert_eq!(spec.shard.as_ref().map(|s| s.of), Some(2));
        assert!(spec.patched);
        assert_eq!(spec.secrets, ["k"]);
    }

    #[test]
    fn job_specs_are_written_in_the_newest_format_and_read_back() {
        let spec = decode_job_spec(SPEC_FORMAT_1).expect("format 1 reads");
        let text = encode_job_spec(&spec).expect("encodes");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["v"], JOB_SPEC_FORMAT);
        assert_eq!(decode_job_spec(&text).expect("reads"), spec);
    }

    #[test]
    fn a_newer_format_is_refused_with_a_word_to_upgrade() {
        let e = decode_job_spec(r#"{"v": 99, "requires": []}"#).expect_err("too new");
        assert!(e.to_string().contains("written by a newer herd"), "{e}");
        assert!(decode_job_spec("[]").is_err());
        assert!(decode_job_spec(r#"{"v": "x"}"#).is_err());
    }

    #[test]
    fn a_split_state_of_format_2_with_its_list_is_read_and_compares_lists_without_a_digest() {
        let state = SplitState::new(
            vec!["a".into(), "b".into()],
            &Default::default(),
            2,
            0.5,
            false,
        );
        let mut v = serde_json::to_value(&state).expect("json");
        let fields = v.as_object_mut().expect("object");
        fields.remove("list_digest");
        fields.insert("list".into(), serde_json::json!(["a", "b"]));
        fields.insert("v".into(), serde_json::json!(2));
        let read = decode_split_state(&v.to_string()).expect("format 2 reads");
        assert!(!read.list_matches(&herd_core::split::list_digest(&["a", "b"])));
        assert!(read.check_list(&["b".into(), "a".into()]).is_ok());
        assert!(read.check_list(&["a".into()]).is_err());
    }

    #[test]
    fn a_snapshot_is_compressed_and_read_back_and_a_newer_one_refused() {
        let ids: Vec<String> = (0..2000)
            .map(|i| format!("tests/test_m.py::test_{i}"))
            .collect();
        let state = SplitState::new(ids, &Default::default(), 4, 0.5, false);
        let bytes = encode_split_snapshot(&state).expect("encodes");
        let plain = encode_split_state(&state).expect("encodes");
        assert!(
            bytes.len() * 4 < plain.len(),
            "{} vs {}",
            bytes.len(),
            plain.len()
        );
        let read = decode_split_snapshot(&bytes).expect("reads");
        assert_eq!(
            serde_json::to_value(&read).expect("json"),
            serde_json::to_value(&state).expect("json")
        );
        let newer = zstd::encode_all(&br#"{"v":9,"queue":{}}"#[..], 1).expect("zstd");
        let e = decode_split_snapshot(&newer).expect_err("too new");
        assert!(e.to_string().contains("newer herd"), "{e}");
        assert!(decode_split_snapshot(b"garbage").is_err());
    }

    #[test]
    fn a_split_state_of_format_1_is_read() {
        let state = SplitState::new(
            vec!["a".into(), "b".into()],
            &Default::default(),
            2,
            0.5,
            false,
        );
        // Format 1 is the state's fields without `v`.
        let old = serde_json::to_string(&state).expect("json");
        assert!(!old.contains("\"v\""));
        let read = decode_split_state(&old).expect("format 1 reads");
        let again = encode_split_state(&read).expect("encodes");
        assert!(again.contains(&format!("\"v\":{SPLIT_STATE_FORMAT}")));
        assert_eq!(
            serde_json::to_value(decode_split_state(&again).expect("reads")).expect("json"),
            serde_json::to_value(&state).expect("json")
        );
    }
}
