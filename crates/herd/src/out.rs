//! Writing to standard output as a Unix tool does: when the reader goes
//! away (`herd build show | head`), herd stops quietly instead of
//! panicking, as `println!` would.

use std::io::Write;

/// Writes one piece of output; a closed pipe ends the process quietly.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")?;
        }
        Ok(())
    });
    finish(written);
}

/// Writes bytes exactly as they are (step output); a closed pipe ends the
/// process quietly.
pub fn bytes(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    finish(out.write_all(data).and_then(|()| out.flush()));
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

/// `println!` that stops quietly at a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true) };
}

/// `print!` that stops quietly at a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), false) };
}
