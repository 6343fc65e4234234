//! `ferry put LOCAL [REMOTE]`.

use std::path::Path;

use anyhow::{Context, bail};
use ferry_client::UploadOptions;

use super::{connect, interruptible, local_file_name};
use crate::cli::PutArgs;
use crate::output::progress_bar;

pub async fn run(server: &str, args: PutArgs) -> anyhow::Result<()> {
    let from_stdin = args.local == Path::new("-");
    let remote = remote_path(&args.local, args.remote.as_deref(), from_stdin)?;
    let client = connect(server, args.transfer.chunk_size).await?;
    let options = UploadOptions { create_only: args.no_clobber, ..UploadOptions::default() };

    let file = if from_stdin {
        let bar = progress_bar(None, args.transfer.quiet);
        let shown = bar.clone();
        let file =
            interruptible(client.upload(&remote, std::io::stdin(), options, move |n| shown.set_position(n))).await;
        bar.finish_and_clear();
        file?
    } else {
        let size =
            std::fs::metadata(&args.local).with_context(|| format!("cannot read {}", args.local.display()))?.len();
        let bar = progress_bar(Some(size), args.transfer.quiet);
        let shown = bar.clone();
        let file =
            interruptible(client.upload_file(&args.local, &remote, options, move |n| shown.set_position(n))).await;
        bar.finish_and_clear();
        file?
    };
    if !args.transfer.quiet {
        eprintln!("uploaded {} ({} bytes, sha256 {})", file.path, file.size, file.sha256.unwrap_or_default());
    }
    Ok(())
}

/// REMOTE as given, the local name inside a REMOTE ending in `/`, or the local name.
fn remote_path(local: &Path, remote: Option<&str>, from_stdin: bool) -> anyhow::Result<String> {
    match remote {
        Some(dir) if dir.ends_with('/') => {
            if from_stdin {
                bail!("reading stdin needs a REMOTE file path, not a directory");
            }
            Ok(format!("{dir}{}", local_file_name(local)?))
        }
        Some(remote) => Ok(remote.to_owned()),
        None if from_stdin => bail!("reading stdin needs a REMOTE path"),
        None => local_file_name(local),
    }
}
