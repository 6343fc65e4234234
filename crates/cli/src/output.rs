//! How results reach the terminal: progress bars, human and JSON renderings.

use std::io::IsTerminal;

use ferry_client::RemoteFile;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr when it is a terminal and not `--quiet`; hidden otherwise.
pub fn progress_bar(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {binary_bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_position(0);
    bar
}

/// One entry as a JSON object (the shape `--json` documents in the README).
pub fn json(file: &RemoteFile) -> serde_json::Value {
    serde_json::json!({
        "path": file.path,
        "type": if file.is_dir { "dir" } else { "file" },
        "size": file.size,
        // null where the server keeps no time (directories on S3).
        "mtime": file.mtime.map(|t| humantime::format_rfc3339_nanos(t).to_string()),
        "permissions": format!("{:04o}", file.permissions),
        "sha256": file.sha256,
    })
}

/// `ls -l`-style line.
pub fn long_line(file: &RemoteFile) -> String {
    let kind = if file.is_dir { 'd' } else { '-' };
    let mut perms = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (file.permissions >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    // A column always, so that fields stay in place for scripts: `-` (padded
    // to the width of a time) where the server keeps none.
    let mtime = file.mtime.map_or_else(|| format!("{:<20}", "-"), |t| humantime::format_rfc3339_seconds(t).to_string());
    format!("{kind}{perms} {:>14} {mtime} {}", file.size, display_name(file))
}

/// The path, with a trailing `/` for directories.
pub fn display_name(file: &RemoteFile) -> String {
    if file.is_dir { format!("{}/", file.path) } else { file.path.clone() }
}

/// `stat`'s human output.
pub fn stat_text(file: &RemoteFile) -> String {
    format!(
        "path: {}\ntype: {}\nsize: {}\nmtime: {}\npermissions: {:04o}\nsha256: {}\n",
        file.path,
        if file.is_dir { "dir" } else { "file" },
        file.size,
        file.mtime.map_or_else(|| "-".to_owned(), |t| humantime::format_rfc3339_nanos(t).to_string()),
        file.permissions,
        file.sha256.as_deref().unwrap_or("-"),
    )
}
