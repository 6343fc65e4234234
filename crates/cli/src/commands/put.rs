//! `ferry put LOCAL [REMOTE]`.

use std::path::Path;

use anyhow::{Context, bail};
use ferry_client::{Client, Code, PIECE, RetryPolicy, UploadOptions};

use super::{connect, interruptible, local_file_name};
use crate::cli::PutArgs;
use crate::output::progress_bar;
use crate::sessions::Remembered;

pub async fn run(server: &crate::cli::ConnectionArgs, args: PutArgs) -> anyhow::Result<()> {
    if args.recursive {
        let client = connect(server, args.transfer.chunk_size).await?;
        let prefix = args.remote.clone().unwrap_or_default();
        let jobs = usize::from(args.jobs);
        let tree =
            super::tree::put(client, &server.server, &args.local, &prefix, jobs, args.no_clobber, args.transfer.quiet);
        return super::interruptible_anyhow(tree).await;
    }
    let from_stdin = args.local == Path::new("-");
    if from_stdin && args.parallel > 1 {
        bail!("--parallel needs a file to read pieces of, not stdin");
    }
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
        let file = if args.no_resume {
            interruptible(client.upload_file(&args.local, &remote, options, move |n| shown.set_position(n))).await
        } else {
            resumable(&client, server, &args, &remote, options, move |n| shown.set_position(n)).await
        };
        bar.finish_and_clear();
        file?
    };
    if !args.transfer.quiet {
        eprintln!("uploaded {} ({} bytes, sha256 {})", file.path, file.size, file.sha256.unwrap_or_default());
    }
    Ok(())
}

/// Uploads through a session: continues the remembered one if the server
/// still has it, retries transient failures, and forgets the session once
/// the file is stored. `progress` gets server-confirmed bytes.
async fn resumable(
    client: &Client,
    connection: &crate::cli::ConnectionArgs,
    args: &PutArgs,
    remote: &str,
    options: UploadOptions,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<ferry_client::RemoteFile> {
    let remembered = Remembered::for_upload(&connection.server, remote, &args.local)?;
    let resumed = match remembered.load() {
        Some(id) => match client.query_upload(&id).await {
            Ok(state) if state.path == remote => Some((id, state)),
            _ => None,
        },
        None => None,
    };
    let quiet = args.transfer.quiet;
    let (id, ranged) = match resumed {
        Some((id, state)) => {
            if !quiet {
                match &state.ranges {
                    Some(ranges) => {
                        let stored: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                        eprintln!("resuming upload {id} with {stored} bytes stored in {} ranges", ranges.len());
                    }
                    None => eprintln!("resuming upload {id} at byte {}", state.committed),
                }
            }
            (id, state.ranges.is_some())
        }
        None => {
            let meta =
                std::fs::metadata(&args.local).with_context(|| format!("cannot read {}", args.local.display()))?;
            let options = client_options_for(&meta, options);
            let ranged = match args.parallel > 1 && meta.len() >= 2 * PIECE {
                true => client.create_ranged_upload(remote, &options).await?,
                false => None,
            };
            if args.parallel > 1 && ranged.is_none() && !quiet {
                eprintln!("ferry: sending in one stream (the file is small, or the server cannot stage ranges)");
            }
            let (id, ranged) = match ranged {
                Some(id) => (id, true),
                None => (client.create_upload(remote, &options).await?, false),
            };
            remembered.save(&id);
            (id, ranged)
        }
    };
    let policy = RetryPolicy::default();
    let result = if ranged {
        let mut clients = vec![client.clone()];
        for _ in 1..args.parallel {
            clients.push(connect(connection, args.transfer.chunk_size).await?);
        }
        interruptible(ferry_client::upload_parallel(&clients, &args.local, &id, &policy, progress)).await
    } else {
        interruptible(client.upload_file_resumable(&args.local, &id, &policy, progress)).await
    };
    match &result {
        Ok(_) => remembered.forget(),
        // The session is gone (finished, expired or refused): nothing to resume.
        Err(e)
            if e.downcast_ref::<ferry_client::Error>().and_then(ferry_client::Error::code) == Some(Code::NotFound) =>
        {
            remembered.forget()
        }
        Err(_) => {}
    }
    result
}

/// What a session declares for a local file: its size, mtime and permissions.
fn client_options_for(meta: &std::fs::Metadata, mut options: UploadOptions) -> UploadOptions {
    options.size = Some(meta.len());
    options.mtime = meta.modified().ok();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        options.permissions = Some(meta.permissions().mode() & 0o777);
    }
    options
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
