//! The exit codes of `herd`, for scripts (`herd --help` lists them, and the
//! README). Like nextest's, each says what kind of thing went wrong, so a
//! script can tell "the build failed" from "the server is down".

/// Everything went as asked.
pub const SUCCESS: u8 = 0;
/// What was checked failed: a build that was waited for (`--wait`) did not
/// succeed, `herd check` found errors.
pub const FAILED: u8 = 1;
/// The command line is wrong: an unknown flag, a missing argument (clap's).
pub const USAGE: u8 = 2;
/// The server cannot be reached: nothing listens there, it timed out, or
/// its TLS certificate was refused.
pub const UNREACHABLE: u8 = 3;
/// The server refused the token: none was given where one is needed, or it
/// is invalid, revoked, expired or of a kind that may not make the call.
pub const REFUSED: u8 = 4;
/// What was named does not exist: a build, project, worker, token.
pub const NOT_FOUND: u8 = 5;
/// The server took the request but could not do it: a bad value, a
/// conflict (a build already ended), a limit, or its own failure.
pub const REQUEST_FAILED: u8 = 6;
/// Anything else: this machine's side (a file, git, a service manager).
pub const ERROR: u8 = 7;

/// The table, for `herd --help`.
pub const HELP: &str =
    "Exit codes: 0 success; 1 a build waited for did not succeed, or `herd check` found errors; \
2 usage error; 3 cannot reach the server; 4 the token was refused; 5 not found; \
6 the server could not do what was asked; 7 any other error.";
