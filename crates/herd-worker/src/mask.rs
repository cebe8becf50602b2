//! Secrets never leave the worker in what it sends: a step's output passes
//! through a [`MaskStream`] that replaces each secret by `***`, also when a
//! secret is split over two writes (the stream holds back a tail that could
//! be the start of a secret until it knows); every other text it sends (a
//! split's test ids, JUnit messages, step messages, probe output) through
//! [`Masker::mask_str`].
//!
//! Each secret is masked as written and in the common encodings a step
//! might print it in: base64 (standard and URL-safe, at any offset), hex
//! (any case), percent-encoding and JSON string escapes (whichever
//! characters the encoder chose to escape). A step that holds
//! a secret can always transform it some other way (reverse it, split it):
//! masking keeps a secret out of logs by accident, and restricting who gets
//! a secret (`projects:`, `refs:`, `labels:` in the server config) keeps it
//! from those who would print it on purpose.

use base64::Engine as _;

/// What a masked secret becomes.
pub const MASK: &[u8] = b"***";
/// Secrets shorter than this are not masked (masking `a` would ruin logs).
pub const MIN_SECRET_LEN: usize = 4;

/// One place of a pattern: any of these byte strings (a byte as it is, or
/// `%2F` and `%2f` for it, say).
type Unit = Vec<Vec<u8>>;

/// What to mask: per secret, its forms, each a sequence of [`Unit`]s.
#[derive(Debug)]
pub struct Masker {
    patterns: Vec<Vec<Unit>>,
    /// Bytes that start some pattern: only there is a match possible.
    starts: [bool; 256],
    /// The same, as a list.
    start_bytes: Vec<u8>,
    /// The first two bytes of every form of every pattern (a bit per
    /// pair): the scan's prefilter, so that common bytes (a hex digit
    /// starts a hex form) rarely cost a [`Masker::find`].
    pairs: Box<[u64; 1024]>,
}

/// Whether a pattern matches at the start of some text.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// It matches this many bytes.
    Whole(usize),
    /// The text ends inside a possible match: more may make one.
    Maybe,
    No,
}

impl Masker {
    /// None when there is nothing to mask.
    pub fn new(secrets: &[String]) -> Option<Masker> {
        Masker::with_plain(secrets, &[])
    }

    /// `secrets` in every form, `plain` only as written: the worker's own
    /// token, which a step shows by accident (`ps`, `env`) as it is, and
    /// whose every form would cost each byte of every log a look.
    pub fn with_plain(secrets: &[String], plain: &[String]) -> Option<Masker> {
        let mut patterns: Vec<Vec<Unit>> = plain
            .iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .map(|s| literal(s.as_bytes()))
            .collect();
        for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
            patterns.push(literal(s.as_bytes()));
            patterns.extend(base64_forms(s.as_bytes()));
            patterns.push(hex_form(s.as_bytes()));
            patterns.push(percent_form(s.as_bytes()));
            patterns.push(json_form(s));
        }
        patterns.retain(|p| p.iter().map(shortest).sum::<usize>() >= MIN_SECRET_LEN);
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return None;
        }
        let mut starts = [false; 256];
        let mut pairs = Box::new([0u64; 1024]);
        let mut set = |a: u8, b: u8| {
            let bit = usize::from(a) << 8 | usize::from(b);
            pairs[bit >> 6] |= 1 << (bit & 63);
        };
        for p in &patterns {
            for alt in &p[0] {
                starts[alt[0] as usize] = true;
                match (alt.get(1), p.get(1)) {
                    (Some(&second), _) => set(alt[0], second),
                    (None, Some(next)) => {
                        for n in next {
                            set(alt[0], n[0]);
                        }
                    }
                    // A pattern is at least MIN_SECRET_LEN bytes long.
                    (None, None) => (0..=255).for_each(|b| set(alt[0], b)),
                }
            }
        }
        let start_bytes = (0..=255u8).filter(|b| starts[usize::from(*b)]).collect();
        Some(Masker {
            patterns,
            starts,
            start_bytes,
            pairs,
        })
    }

    /// The first place at or after `from` where a pattern may start.
    fn next_start(&self, text: &[u8], from: usize) -> Option<usize> {
        let mut i = from;
        loop {
            let rest = text.get(i..)?;
            // Few start bytes (a token, a secret or two): memchr's vector
            // search instead of a look at every byte.
            let found = match self.start_bytes.as_slice() {
                [a] => memchr::memchr(*a, rest),
                [a, b] => memchr::memchr2(*a, *b, rest),
                [a, b, c] => memchr::memchr3(*a, *b, *c, rest),
                _ => rest.iter().position(|b| self.starts[usize::from(*b)]),
            }?;
            i += found;
            if self.may_start(text, i) {
                return Some(i);
            }
            i += 1;
        }
    }

    /// Whether a pattern may start at `text[i]`.
    fn may_start(&self, text: &[u8], i: usize) -> bool {
        let a = text[i];
        if !self.starts[usize::from(a)] {
            return false;
        }
        match text.get(i + 1) {
            None => true,
            Some(&b) => {
                let bit = usize::from(a) << 8 | usize::from(b);
                self.pairs[bit >> 6] & (1 << (bit & 63)) != 0
            }
        }
    }

    /// The longest whole match of any pattern at the start of `text` (0:
    /// none), and whether more text may make a match (a longer one).
    fn find(&self, text: &[u8]) -> (usize, bool) {
        let mut best = 0;
        let mut maybe = false;
        for p in &self.patterns {
            match matches(p, text) {
                Found::Whole(n) => best = best.max(n),
                Found::Maybe => maybe = true,
                Found::No => {}
            }
        }
        (best, maybe)
    }
}

fn shortest(unit: &Unit) -> usize {
    unit.iter().map(Vec::len).min().unwrap_or(0)
}

/// Whether `units` match at the start of `text` (depth first: the
/// alternatives of one place rarely share a first byte, so this is short).
fn matches(units: &[Unit], text: &[u8]) -> Found {
    let Some((first, rest)) = units.split_first() else {
        return Found::Whole(0);
    };
    let mut maybe = false;
    let mut best = None;
    for alt in first {
        if text.starts_with(alt) {
            match matches(rest, &text[alt.len()..]) {
                Found::Whole(n) => best = best.max(Some(alt.len() + n)),
                Found::Maybe => maybe = true,
                Found::No => {}
            }
        } else if alt.len() > text.len() && alt.starts_with(text) {
            maybe = true;
        }
    }
    match (best, maybe) {
        (_, true) => Found::Maybe,
        (Some(n), false) => Found::Whole(n),
        (None, false) => Found::No,
    }
}

/// Each byte as it is.
fn literal(bytes: &[u8]) -> Vec<Unit> {
    bytes.iter().map(|b| vec![vec![*b]]).collect()
}

/// The secret as it shows inside base64 text (standard and URL-safe, or a
/// mix), whatever its offset in the encoded bytes: the characters that
/// depend on the secret's bits alone, for the secret starting 0, 1 or 2
/// bytes into a 3-byte group.
fn base64_forms(secret: &[u8]) -> Vec<Vec<Unit>> {
    let mut out = Vec::new();
    for offset in 0..3usize {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        let first_bit = offset * 8;
        let end_bit = (offset + secret.len()) * 8;
        let first = first_bit.div_ceil(6);
        let last = (end_bit / 6).min(encoded.len()); // chars wholly inside
        if last > first {
            out.push(
                encoded.as_bytes()[first..last]
                    .iter()
                    .map(|b| match b {
                        b'+' => vec![vec![b'+'], vec![b'-']],
                        b'/' => vec![vec![b'/'], vec![b'_']],
                        other => vec![vec![*other]],
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Either case of a hex digit.
fn hex_digit(d: u8) -> Unit {
    let c = b"0123456789abcdef"[usize::from(d & 0xf)];
    if c.is_ascii_alphabetic() {
        vec![vec![c], vec![c.to_ascii_uppercase()]]
    } else {
        vec![vec![c]]
    }
}

/// The secret in hex, any case.
fn hex_form(secret: &[u8]) -> Vec<Unit> {
    secret
        .iter()
        .flat_map(|b| [hex_digit(b >> 4), hex_digit(*b)])
        .collect()
}

/// The secret percent-encoded by any encoder: each byte as it is or as
/// `%XX` (any case), a space also as `+`. Encoders differ in what they
/// leave alone (`/`, `*`, `'` …); this matches them all.
fn percent_form(secret: &[u8]) -> Vec<Unit> {
    let mut units = Vec::new();
    for &b in secret {
        let mut alts = vec![vec![b]];
        for hi in &hex_digit(b >> 4) {
            for lo in &hex_digit(b) {
                alts.push([&[b'%'][..], hi, lo].concat());
            }
        }
        if b == b' ' {
            alts.push(vec![b'+']);
        }
        units.push(alts);
    }
    units
}

/// The inside of a JSON string holding the secret, as any encoder writes
/// it: each character as it is, as `\uXXXX` (any case; a pair of them
/// beyond the BMP), or by its short escape (`\"`, `\\`, `\/`, `\n` …).
fn json_form(secret: &str) -> Vec<Unit> {
    let mut units = Vec::new();
    for c in secret.chars() {
        let mut alts: Unit = Vec::new();
        if c != '"' && c != '\\' && !c.is_control() {
            alts.push(c.to_string().into_bytes());
        }
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        alts.extend(short.map(|s| s.as_bytes().to_vec()));
        let mut utf16 = [0u16; 2];
        let escapes: Vec<String> = c
            .encode_utf16(&mut utf16)
            .iter()
            .map(|u| format!("\\u{u:04x}"))
            .collect();
        for upper in [false, true] {
            let text: String = escapes
                .iter()
                .map(|e| {
                    if upper {
                        e.to_uppercase().replace("\\U", "\\u")
                    } else {
                        e.clone()
                    }
                })
                .collect();
            alts.push(text.into_bytes());
        }
        alts.sort();
        alts.dedup();
        units.push(alts);
    }
    units
}

impl Masker {
    /// A whole text with every secret replaced (not a stream: nothing is
    /// held back).
    pub fn mask_str(&self, text: &str) -> String {
        let mut stream = MaskStream::new(self);
        let mut out = stream.feed(text.as_bytes());
        out.extend(stream.finish());
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `text` with the secrets of `masker` replaced, when there is one.
pub fn mask_opt(masker: Option<&Masker>, text: &str) -> String {
    match masker {
        Some(m) => m.mask_str(text),
        None => text.to_string(),
    }
}

/// What a worker must never send, wherever it comes from: its own token
/// (a step or a probe could read it from the worker's command line or
/// config) and the secrets of the jobs it runs now.
#[derive(Clone, Default)]
pub struct KnownSecrets {
    inner: std::sync::Arc<std::sync::Mutex<KnownInner>>,
}

#[derive(Default)]
struct KnownInner {
    own: Vec<String>,
    jobs: std::collections::HashMap<i64, Vec<String>>,
}

/// The secrets of one running job, known while this lives.
pub struct Held {
    known: KnownSecrets,
    attempt: i64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.known.lock().jobs.remove(&self.attempt);
    }
}

impl KnownSecrets {
    /// Knows `own` (the worker's token) for good.
    pub fn new(own: Vec<String>) -> KnownSecrets {
        let k = KnownSecrets::default();
        k.lock().own = own;
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KnownInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's own secrets.
    pub fn own(&self) -> Vec<String> {
        self.lock().own.clone()
    }

    /// Knows a running job's secrets until the returned guard drops.
    pub fn hold(&self, attempt: i64, secrets: &[String]) -> Held {
        self.lock().jobs.insert(attempt, secrets.to_vec());
        Held {
            known: self.clone(),
            attempt,
        }
    }

    /// A masker of everything known now.
    pub fn masker(&self) -> Option<Masker> {
        let inner = self.lock();
        let jobs: Vec<String> = inner.jobs.values().flatten().cloned().collect();
        Masker::with_plain(&jobs, &inner.own)
    }
}

/// One step's output stream being masked.
pub struct MaskStream<'a> {
    masker: &'a Masker,
    held: Vec<u8>,
}

impl<'a> MaskStream<'a> {
    pub fn new(masker: &'a Masker) -> Self {
        MaskStream {
            masker,
            held: Vec::new(),
        }
    }

    /// Masks what can be decided now; holds back a tail that may be the
    /// start of a secret.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(data);
        self.scan(false)
    }

    /// The end of the output: what was held back is masked with what
    /// matches whole (no more text can come to make a longer form).
    pub fn finish(&mut self) -> Vec<u8> {
        self.scan(true)
    }

    fn scan(&mut self, last: bool) -> Vec<u8> {
        let text = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        // Bytes up to `plain` are copied as they are, in one go.
        let mut plain = 0;
        while let Some(at) = self.masker.next_start(&text, i) {
            let (whole, maybe) = self.masker.find(&text[at..]);
            if maybe && !last {
                out.extend_from_slice(&text[plain..at]);
                self.held = text[at..].to_vec();
                return out;
            }
            if whole > 0 {
                out.extend_from_slice(&text[plain..at]);
                out.extend_from_slice(MASK);
                i = at + whole;
                plain = i;
            } else {
                i = at + 1;
            }
        }
        out.extend_from_slice(&text[plain..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked(secrets: &[&str], writes: &[&[u8]]) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let m = Masker::new(&secrets).unwrap();
        let mut s = MaskStream::new(&m);
        let mut out = Vec::new();
        for w in writes {
            out.extend(s.feed(w));
        }
        out.extend(s.finish());
        String::from_utf8(out).unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_workers_own_token_is_masked_as_written_wherever_it_falls() {
        let token = "herd_worker_Zx9".to_string();
        let m =
            Masker::with_plain(&["hunter22".to_string()], std::slice::from_ref(&token)).unwrap();
        for cut in 0..token.len() {
            let text = format!("a {token} b hunter22 c {}", hex::encode("hunter22"));
            let mut s = MaskStream::new(&m);
            let mut out = s.feed(&text.as_bytes()[..cut + 2]);
            out.extend(s.feed(&text.as_bytes()[cut + 2..]));
            out.extend(s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), "a *** b *** c ***");
        }
        // The token only as written: its hex is left (it costs every log
        // byte a look, and is no accident).
        assert_eq!(m.mask_str(&hex::encode(&token)), hex::encode(&token));
    }

    #[test]
    fn a_secret_is_masked_plainly_split_and_in_base64() {
        assert_eq!(masked(&["hunter22"], &[b"pw=hunter22!\n"]), "pw=***!\n");
        assert_eq!(
            masked(&["hunter22"], &[b"pw=hun", b"ter22!\n"]),
            "pw=***!\n"
        );
        assert_eq!(masked(&["hunter22"], &[b"h", b"u", b"nter2", b"2"]), "***");
        for prefix in ["", "a", "ab", "abc"] {
            let line = b64(&format!("{prefix}hunter22\n"));
            let out = masked(&["hunter22"], &[line.as_bytes()]);
            assert!(out.contains("***"), "{prefix:?}: {line} -> {out}");
            assert!(!out.contains(&b64("hunter22")[..8]), "{out}");
        }
    }

    #[test]
    fn text_that_only_starts_like_a_secret_comes_out_whole() {
        assert_eq!(masked(&["hunter22"], &[b"hunt", b"ing\n"]), "hunting\n");
        assert_eq!(
            masked(&["hunter22"], &[b"ends with hunte"]),
            "ends with hunte"
        );
    }

    #[test]
    fn hex_percent_and_json_forms_are_masked_too() {
        let secret = "s3cr/t \"key\"é";
        let forms = [
            hex::encode(secret),
            hex::encode(secret).to_uppercase(),
            "s3cr%2Ft%20%22key%22%C3%A9".to_string(),
            "s3cr%2ft%20%22key%22%c3%a9".to_string(),
            serde_json::to_string(secret).unwrap(),
            "s3cr/t \\\"key\\\"\\u00e9".to_string(),
        ];
        for form in forms {
            let out = masked(&[secret], &[format!("token={form};").as_bytes()]);
            assert_eq!(out.matches("***").count(), 1, "{form} -> {out}");
            assert!(!out.contains("key"), "{form} -> {out}");
        }
        let m = Masker::new(&[secret.to_string()]).unwrap();
        assert_eq!(m.mask_str(&format!("id {}", hex::encode(secret))), "id ***");
    }

    #[test]
    fn a_secret_at_the_very_end_is_masked_though_a_longer_form_could_follow() {
        // "3333" starts its own hex form "33333333".
        assert_eq!(masked(&["3333"], &[b"x=3333"]), "x=***");
        assert_eq!(masked(&["3333"], &[b"x=33", b"33"]), "x=***");
        assert_eq!(masked(&["3333"], &[b"x=33333333;"]), "x=***;");
    }

    #[test]
    fn any_encoder_s_percent_and_json_choices_are_masked() {
        let secret = "Tr0ub4dor&3/x\"y+z 1";
        for form in [
            "Tr0ub4dor%263/x%22y%2Bz%201",
            "Tr0ub4dor%263%2Fx%22y%2bz+1",
            "Tr0ub4dor\\u00263\\/x\\\"y+z 1",
            "Tr0ub4dor\\u00263/x\\u0022y\\u002Bz\\u00201",
        ] {
            let out = masked(&[secret], &[format!("[{form}]").as_bytes()]);
            assert_eq!(out, "[***]", "{form}");
        }
    }

    #[test]
    fn short_secrets_are_not_masked() {
        assert!(Masker::new(&["abc".to_string()]).is_none());
    }

    proptest! {
        #[test]
        fn no_secret_survives_any_split(
            secret in "[a-zA-Z0-9+/=_-]{4,20}",
            before in ".{0,30}",
            after in ".{0,30}",
            cuts in proptest::collection::vec(0usize..80, 0..6),
        ) {
            let text = format!("{before}{secret}{after}");
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort();
            let mut writes = Vec::new();
            let mut last = 0;
            for p in points {
                writes.push(&bytes[last..p]);
                last = p;
            }
            writes.push(&bytes[last..]);
            let out = masked(&[secret.as_str()], &writes);
            prop_assert!(!out.contains(secret.as_str()), "{out}");
        }

        #[test]
        fn output_without_secrets_is_unchanged(text in ".{0,200}") {
            let out = masked(&["\u{1}\u{2}\u{3}\u{4}"], &[text.as_bytes()]);
            prop_assert_eq!(out, text);
        }
    }
}
