//! `ferry ls [PATH] [-r] [-l] [--json]`.

use std::io::Write;

use anyhow::Context;

use super::connect;
use crate::cli::LsArgs;
use crate::output;

pub async fn run(server: &crate::cli::ConnectionArgs, args: LsArgs) -> anyhow::Result<()> {
    let client = connect(server, ferry_client::DEFAULT_CHUNK_SIZE).await?;
    let mut listing = client.list(&args.path, args.recursive).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(batch) = listing.next_batch().await? {
        for entry in &batch {
            let line = if args.json {
                output::json(entry).to_string()
            } else if args.long {
                output::long_line(entry)
            } else {
                output::display_name(entry)
            };
            writeln!(out, "{line}").context("cannot write to stdout")?;
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(())
}
