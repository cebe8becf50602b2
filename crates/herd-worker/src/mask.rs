//! Secrets never leave the worker in a log: a step's output passes through
//! a [`MaskStream`] that replaces each secret, and its base64 encodings, by
//! `***`, also when a secret is split over two writes (the stream holds
//! back a tail that could be the start of a secret until it knows).

use base64::Engine as _;

/// What a masked secret becomes.
pub const MASK: &[u8] = b"***";
/// Secrets shorter than this are not masked (masking `a` would ruin logs).
pub const MIN_SECRET_LEN: usize = 4;

/// The byte patterns to mask, longest first.
#[derive(Debug)]
pub struct Masker {
    patterns: Vec<Vec<u8>>,
    /// Bytes that start some pattern: only there is a match possible.
    starts: [bool; 256],
}

impl Masker {
    /// None when there is nothing to mask.
    pub fn new(secrets: &[String]) -> Option<Masker> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
            patterns.push(s.as_bytes().to_vec());
            patterns.extend(base64_forms(s.as_bytes()));
        }
        patterns.retain(|p| p.len() >= MIN_SECRET_LEN);
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        if patterns.is_empty() {
            return None;
        }
        let mut starts = [false; 256];
        for p in &patterns {
            starts[p[0] as usize] = true;
        }
        Some(Masker { patterns, starts })
    }
}

/// The secret as it shows inside base64 text (standard and URL-safe),
/// whatever its offset in the encoded bytes: the characters that depend
/// on the secret's bits alone, for the secret starting 0, 1 or 2 bytes
/// into a 3-byte group.
fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
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
            let standard = encoded.as_bytes()[first..last].to_vec();
            let url_safe: Vec<u8> = standard
                .iter()
                .map(|b| match b {
                    b'+' => b'-',
                    b'/' => b'_',
                    other => *other,
                })
                .collect();
            out.push(standard);
            out.push(url_safe);
        }
    }
    out
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
        let text = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            if self.masker.starts[text[i] as usize] {
                let rest = &text[i..];
                for p in &self.masker.patterns {
                    if rest.starts_with(p) {
                        out.extend_from_slice(MASK);
                        i += p.len();
                        continue 'scan;
                    }
                }
                if self
                    .masker
                    .patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
                {
                    self.held = rest.to_vec();
                    return out;
                }
            }
            out.push(text[i]);
            i += 1;
        }
        out
    }

    /// The end of the output: what was held back was no secret.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
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
