//! `Stat`, `Delete` (unary) and `List` (server streaming, in batches).

use std::sync::Arc;

use ferry_proto::v1::{DeleteRequest, DeleteResponse, ListRequest, ListResponse, StatRequest, StatResponse};
use ferry_store::Store;
use tokio_stream::StreamExt;

use super::{ResponseStream, parse_path};
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn stat(store: Arc<dyn Store>, request: StatRequest) -> Result<StatResponse, ServiceError> {
    let path = parse_path(&request.path)?;
    let meta = store.stat(&path).await?;
    Ok(StatResponse { info: Some(convert::file_info(&meta)) })
}

pub(super) async fn delete(store: Arc<dyn Store>, request: DeleteRequest) -> Result<DeleteResponse, ServiceError> {
    let path = parse_path(&request.path)?;
    store.delete(&path).await?;
    tracing::info!(path = %path, "deleted");
    Ok(DeleteResponse {})
}

pub(super) async fn list(
    store: Arc<dyn Store>,
    request: ListRequest,
    request_id: u64,
) -> Result<ResponseStream<ListResponse>, ServiceError> {
    // An empty path lists the root.
    let dir = match request.path.as_str() {
        "" => None,
        raw => Some(parse_path(raw)?),
    };
    let batches = store.list(dir.as_ref(), request.recursive).await?;
    Ok(Box::pin(batches.map(move |batch| match batch {
        Ok(entries) => Ok(ListResponse { entries: entries.iter().map(convert::file_info).collect() }),
        Err(e) => Err(ServiceError::from(e).into_status(request_id)),
    })))
}
