//! Writing to standard output as a Unix tool does: when the reader goes
//! away (`herd build show | head`), herd stops quietly instead of
//! panicking, as `println!` would.
//!
//! Everything a build says (step names, commit messages, test ids, errors)
//! comes from whoever pushed, so text is written with the characters a
//! terminal would act on (escape sequences that set the title, clear the
//! screen or write the clipboard; bidirectional overrides) shown as
//! escapes instead. Logs keep their colours on a terminal and only those.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

/// Whether a terminal would act on `c` instead of showing it: C0 and C1
/// controls, DEL, bidirectional overrides. Newline and tab are text.
fn acts_on_terminal(c: char) -> bool {
    c != '\n' && c != '\t' && herd_core::pipeline::is_hidden_char(c)
}

/// `text` with every character a terminal would act on written as an
/// escape (`\x1b`, `\u{202e}`), so that it shows instead.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !acts_on_terminal(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

/// Writes one piece of human output, cleaned; a closed pipe ends the
/// process quietly.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let text = std::fmt::format(args);
    let mut out = std::io::stdout().lock();
    let written = out.write_all(clean(&text).as_bytes()).and_then(|()| {
        if newline {
            out.write_all(b"\n")?;
        }
        Ok(())
    });
    finish(written);
}

/// Writes JSON made by serde_json. It escapes C0 controls itself; DEL, C1
/// controls and bidirectional overrides stay raw in its strings, so they
/// are written as `\uXXXX` here: the same JSON value, safe on a terminal.
pub fn json(text: &str) {
    write(format_args!("{}", json_safe(text)), true);
}

fn json_safe(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if acts_on_terminal(c) {
            escaped.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Writes bytes exactly as they are (a completion script); a closed pipe
/// ends the process quietly.
pub fn bytes(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    finish(out.write_all(data).and_then(|()| out.flush()));
}

/// Writes step output: exactly as logged when standard output is a file or
/// a pipe; on a terminal, with colours (SGR, `ESC [ … m`) kept and every
/// other control shown as an escape. A sequence or character cut between
/// two reads waits for its end.
pub struct LogWriter {
    terminal: bool,
    held: Vec<u8>,
}

/// An escape sequence longer than this is not a colour: shown, not held.
const MAX_SGR: usize = 32;

impl LogWriter {
    pub fn new() -> Self {
        LogWriter {
            terminal: std::io::stdout().is_terminal(),
            held: Vec::new(),
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        if !self.terminal {
            return bytes(data);
        }
        self.held.extend_from_slice(data);
        let (shown, rest) = terminal_log(&self.held, false);
        self.held = rest;
        bytes(&shown);
    }

    /// Writes what is held (the log ended inside a sequence).
    pub fn finish(&mut self) {
        if self.terminal && !self.held.is_empty() {
            let (shown, _) = terminal_log(&std::mem::take(&mut self.held), true);
            bytes(&shown);
        }
    }
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Log bytes as a terminal should get them, and the unfinished tail that
/// must wait for more (none when `last`).
fn terminal_log(data: &[u8], last: bool) -> (Vec<u8>, Vec<u8>) {
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() && !last => {
            // A character cut at the end: keep its start for the next read.
            let (done, rest) = data.split_at(e.valid_up_to());
            let (shown, mut held) = terminal_log(done, last);
            held.extend_from_slice(rest);
            return (shown, held);
        }
        Err(_) => {
            let lossy = String::from_utf8_lossy(data).into_owned();
            return terminal_log(lossy.as_bytes(), last);
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\u{1b}' => {
                let tail = &text[i + 1..];
                match sgr_len(tail) {
                    Some(n) => {
                        out.push_str(&text[i..=i + n]);
                        for _ in 0..n {
                            chars.next();
                        }
                    }
                    None if !last && tail.len() < MAX_SGR && could_be_sgr(tail) => {
                        let mut held = text.as_bytes()[i..].to_vec();
                        held.shrink_to_fit();
                        return (out.into_bytes(), held);
                    }
                    None => out.push_str("\\x1b"),
                }
            }
            '\r' if chars.peek().is_some_and(|(_, n)| *n == '\n') => out.push('\r'),
            // A lone carriage return (a progress bar) would let a line
            // hide what came before it: a new line instead.
            '\r' if chars.peek().is_some() || last => out.push('\n'),
            '\r' => return (out.into_bytes(), b"\r".to_vec()),
            c if acts_on_terminal(c) => out.push_str(&clean(c.encode_utf8(&mut [0; 4]))),
            c => out.push(c),
        }
    }
    (out.into_bytes(), Vec::new())
}

/// The length of `[ digits ; : … m` at the start of `tail`, if it is one.
fn sgr_len(tail: &str) -> Option<usize> {
    let body = tail.strip_prefix('[')?;
    let params = body
        .bytes()
        .take(MAX_SGR)
        .take_while(|b| b.is_ascii_digit() || *b == b';' || *b == b':')
        .count();
    (body.as_bytes().get(params) == Some(&b'm')).then_some(params + 2)
}

/// Whether `tail` is the start of a colour sequence that a later read may finish.
fn could_be_sgr(tail: &str) -> bool {
    match tail.strip_prefix('[') {
        None => tail.is_empty(),
        Some(body) => body
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b';' || b == b':'),
    }
}

fn finish(result: std::io::Result<()>) {
    match result {
        Ok(()) => {}
        // The reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(i32::from(crate::exit_codes::SUCCESS))
        }
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(i32::from(crate::exit_codes::ERROR))
        }
    }
}

/// `println!` that cleans what it writes and stops quietly at a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true) };
}

/// `print!` that cleans what it writes and stops quietly at a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), false) };
}

/// `eprintln!` that cleans what it writes (build data on standard error).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { eprintln!("{}", $crate::out::clean(&format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_shows_what_a_terminal_would_act_on() {
        assert_eq!(clean("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            clean("a\u{1b}]0;owned\u{7}\u{1b}[2Jb"),
            "a\\x1b]0;owned\\x07\\x1b[2Jb"
        );
        assert_eq!(clean("x\u{9b}y\u{202e}z\r"), "x\\u{9b}y\\u{202e}z\\x0d");
    }

    #[test]
    fn json_escapes_stay_json() {
        let v = serde_json::json!({"name": "a\u{7f}\u{1b}\u{202e}"});
        let escaped = json_safe(&serde_json::to_string(&v).unwrap());
        assert!(!escaped.chars().any(acts_on_terminal), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, v);
    }

    fn shown(chunks: &[&[u8]]) -> String {
        let mut held = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            held.extend_from_slice(chunk);
            let (s, rest) = terminal_log(&held, false);
            out.extend(s);
            held = rest;
        }
        out.extend(terminal_log(&held, true).0);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_log_keeps_its_colours_and_nothing_else() {
        assert_eq!(
            shown(&[b"\x1b[1;31mred\x1b[0m ok\r\n"]),
            "\x1b[1;31mred\x1b[0m ok\r\n"
        );
        assert_eq!(
            shown(&[b"\x1b]52;c;cGF5bG9hZA==\x07\x1b[2J\x1b[H"]),
            "\\x1b]52;c;cGF5bG9hZA==\\x07\\x1b[2J\\x1b[H"
        );
        assert_eq!(shown(&[b"10%\r20%\r"]), "10%\n20%\n");
    }

    #[test]
    fn a_sequence_or_character_cut_between_reads_is_joined() {
        assert_eq!(shown(&[b"a\x1b[3", b"2mb"]), "a\x1b[32mb");
        assert_eq!(shown(&[b"a\x1b", b"[0m"]), "a\x1b[0m");
        assert_eq!(shown(&[b"\xc3", b"\xa9t\xc3\xa9"]), "\u{e9}t\u{e9}");
        assert_eq!(shown(&[b"x\r", b"\n"]), "x\r\n");
        assert_eq!(shown(&[b"end\x1b["]), "end\\x1b[");
        assert_eq!(shown(&[b"bad \xff byte"]), "bad \u{fffd} byte");
    }
}
