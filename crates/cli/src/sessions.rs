//! Where `ferry put` remembers its upload sessions, so that re-running the
//! same command after the CLI itself was killed resumes instead of starting
//! over. One small file per upload in `$FERRY_STATE_DIR` (default
//! `$XDG_STATE_HOME/ferry/uploads`, or `~/.local/state/ferry/uploads`), named
//! by a hash of what identifies the upload: server, remote path, local file,
//! its size and mtime. A changed local file is a different upload.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use sha2::Digest as _;

/// The remembered session of one `ferry put`.
#[derive(Debug)]
pub struct Remembered {
    file: Option<PathBuf>,
}

impl Remembered {
    /// The record for uploading `local` to `remote` on `server`.
    pub fn for_upload(server: &str, remote: &str, local: &Path) -> anyhow::Result<Self> {
        let Some(dir) = state_dir() else { return Ok(Self { file: None }) };
        let canonical = local.canonicalize().with_context(|| format!("cannot resolve {}", local.display()))?;
        let meta = std::fs::metadata(&canonical).with_context(|| format!("cannot read {}", local.display()))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
        let mut key = sha2::Sha256::new();
        for part in
            [server, remote, &canonical.to_string_lossy(), &meta.len().to_string(), &mtime.as_nanos().to_string()]
        {
            key.update(part.as_bytes());
            key.update([0]);
        }
        Ok(Self { file: Some(dir.join(hex::encode(key.finalize()))) })
    }

    /// The remembered upload id, if any.
    pub fn load(&self) -> Option<String> {
        let id = std::fs::read_to_string(self.file.as_ref()?).ok()?;
        Some(id.trim().to_owned()).filter(|id| !id.is_empty())
    }

    /// Remembers `upload_id` (best effort: without it, a re-run starts over).
    pub fn save(&self, upload_id: &str) {
        let Some(file) = &self.file else { return };
        let saved =
            file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(file, upload_id));
        if let Err(e) = saved {
            eprintln!("ferry: warning: cannot remember the upload session in {}: {e}", file.display());
        }
    }

    pub fn forget(&self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_STATE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("ferry/uploads"))
}
