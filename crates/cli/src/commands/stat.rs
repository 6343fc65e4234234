//! `ferry stat PATH [--json]`.

use super::connect;
use crate::cli::StatArgs;
use crate::output;

pub async fn run(server: &crate::cli::ConnectionArgs, args: StatArgs) -> anyhow::Result<()> {
    let client = connect(server, ferry_client::DEFAULT_CHUNK_SIZE).await?;
    let file = client.stat(&args.path).await?;
    if args.json {
        println!("{}", output::json(&file));
    } else {
        print!("{}", output::stat_text(&file));
    }
    Ok(())
}
