//! `ferry rm PATH`.

use super::connect;
use crate::cli::RmArgs;

pub async fn run(server: &crate::cli::ConnectionArgs, args: RmArgs) -> anyhow::Result<()> {
    let client = connect(server, ferry_client::DEFAULT_CHUNK_SIZE).await?;
    client.delete(&args.path).await?;
    Ok(())
}
