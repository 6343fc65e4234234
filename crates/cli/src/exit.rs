//! Exit codes (listed in `--help` and the README) and how errors map to them.

use std::process::ExitCode;

use ferry_client::{Code, Error as ClientError};

pub const OTHER: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const ALREADY_EXISTS: u8 = 4;
pub const PERMISSION: u8 = 5;
pub const UNAVAILABLE: u8 = 6;
pub const INTEGRITY: u8 = 7;
pub const INTERRUPTED: u8 = 130;

/// The exit code for an error from a command.
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(is_broken_pipe) {
        // `ferry get x - | head` is a success.
        return ExitCode::SUCCESS;
    }
    if error.downcast_ref::<Interrupted>().is_some() {
        return ExitCode::from(INTERRUPTED);
    }
    if error.downcast_ref::<BadSettings>().is_some() {
        return ExitCode::from(USAGE);
    }
    let code = match error.downcast_ref::<ClientError>() {
        Some(ClientError::Connect { .. } | ClientError::Tls { .. }) => UNAVAILABLE,
        Some(ClientError::LocalExists(_)) => ALREADY_EXISTS,
        Some(ClientError::DigestMismatch { .. }) => INTEGRITY,
        Some(ClientError::Status(status)) => match status.code() {
            Code::NotFound => NOT_FOUND,
            Code::AlreadyExists => ALREADY_EXISTS,
            Code::PermissionDenied | Code::Unauthenticated => PERMISSION,
            Code::Unavailable => UNAVAILABLE,
            Code::DataLoss => INTEGRITY,
            _ => OTHER,
        },
        _ => OTHER,
    };
    ExitCode::from(code)
}

fn is_broken_pipe(cause: &(dyn std::error::Error + 'static)) -> bool {
    let io = match cause.downcast_ref::<ClientError>() {
        Some(ClientError::Io { cause, .. }) => Some(cause),
        _ => cause.downcast_ref::<std::io::Error>(),
    };
    io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The user pressed Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The server's settings (flags, environment, config file) do not hold
/// together: a usage error, like a bad flag.
#[derive(Debug)]
pub struct BadSettings;

impl std::fmt::Display for BadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid settings")
    }
}
