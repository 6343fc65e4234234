//! `ferry rm PATH`.

use super::connect;
use crate::cli::RmArgs;

pub async fn run(args: RmArgs) -> anyhow::Result<()> {
    let client = connect(&args.client, ferry_client::DEFAULT_CHUNK_SIZE).await?;
    client.delete(&args.path).await?;
    Ok(())
}
