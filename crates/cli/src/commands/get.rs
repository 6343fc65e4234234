//! `ferry get REMOTE [LOCAL]`.

use std::path::{Path, PathBuf};

use ferry_client::{Range, RetryPolicy};

use super::{connect, interruptible, remote_file_name};
use crate::cli::GetArgs;
use crate::output::progress_bar;

pub async fn run(server: &crate::cli::ConnectionArgs, args: GetArgs) -> anyhow::Result<()> {
    let client = connect(server, args.transfer.chunk_size).await?;
    if args.recursive {
        let local = args.local.clone().unwrap_or_else(|| PathBuf::from("."));
        let tree =
            super::tree::get(client, &args.remote, &local, usize::from(args.jobs), args.force, args.transfer.quiet);
        return super::interruptible_anyhow(tree).await;
    }
    let range = Range { offset: args.offset, length: args.length };
    let bar = progress_bar(None, args.transfer.quiet);
    if !bar.is_hidden() {
        // Only to size the progress bar; the download itself is checked against its own info.
        if let Ok(remote) = client.stat(&args.remote).await {
            let available = remote.size.saturating_sub(args.offset);
            bar.set_length(args.length.map_or(available, |l| l.min(available)));
        }
    }
    let shown = bar.clone();
    let progress = move |n| shown.set_position(n);

    let result = match args.local.as_deref() {
        Some(dash) if dash == Path::new("-") => {
            interruptible(client.download(&args.remote, range, std::io::stdout(), progress)).await.map(|(f, _)| f)
        }
        local => {
            let target = target_path(&args.remote, local)?;
            let whole = args.offset == 0 && args.length.is_none();
            if whole && args.parallel > 1 {
                let mut clients = vec![client.clone()];
                for _ in 1..args.parallel {
                    clients.push(connect(server, args.transfer.chunk_size).await?);
                }
                let policy = RetryPolicy::default();
                let download =
                    ferry_client::download_parallel(&clients, &args.remote, &target, args.force, &policy, progress);
                interruptible(download).await
            } else if whole && !args.no_resume {
                let quiet = args.transfer.quiet;
                let on_resume = move |at: u64| {
                    if !quiet {
                        eprintln!("resuming download at byte {at}");
                    }
                };
                let policy = RetryPolicy::default();
                let download =
                    client.download_file_resumable(&args.remote, &target, args.force, &policy, on_resume, progress);
                interruptible(download).await
            } else {
                interruptible(client.download_file(&args.remote, range, &target, args.force, progress)).await
            }
        }
    };
    bar.finish_and_clear();
    result?;
    Ok(())
}

/// LOCAL as given, the remote name inside LOCAL when it is a directory, or
/// the remote name in the current directory.
fn target_path(remote: &str, local: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match local {
        Some(dir) if dir.is_dir() => dir.join(remote_file_name(remote)?),
        Some(path) => path.to_owned(),
        None => PathBuf::from(remote_file_name(remote)?),
    })
}
