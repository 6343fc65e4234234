//! `Stat`, `Delete`, `MakeDirectory` (unary) and `List` (server streaming,
//! in batches).

use ferry_proto::v1::{
    DeleteRequest, DeleteResponse, ListRequest, ListResponse, MakeDirectoryRequest, MakeDirectoryResponse, StatRequest,
    StatResponse,
};
use tokio_stream::StreamExt;

use super::{Call, ResponseStream, parse_path};
use crate::auth::Permission;
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn stat(call: Call, request: StatRequest) -> Result<StatResponse, ServiceError> {
    let path = parse_path(&request.path)?;
    call.who.check_stat(&path)?;
    let meta = call.ctx.store.stat(&path).await?;
    Ok(StatResponse { info: Some(convert::file_info(&meta)) })
}

pub(super) async fn delete(call: Call, request: DeleteRequest) -> Result<DeleteResponse, ServiceError> {
    let path = parse_path(&request.path)?;
    call.who.check(Permission::Delete, &path)?;
    let size = call.ctx.admission.size_before_change(&path).await;
    call.ctx.store.delete(&path).await?;
    call.ctx.admission.deleted(size);
    tracing::info!(path = %path, "deleted");
    Ok(DeleteResponse {})
}

/// Creates a directory (and its parents): a write to that path. With a time
/// or permission bits, sets them too, on a directory made before as well.
pub(super) async fn make_directory(
    call: Call,
    request: MakeDirectoryRequest,
) -> Result<MakeDirectoryResponse, ServiceError> {
    let path = parse_path(&request.path)?;
    let mtime = convert::mtime(request.mtime)?;
    let permissions = convert::permissions(request.permissions)?;
    call.who.check(Permission::Write, &path)?;
    let mut meta = call.ctx.store.create_dir(&path).await?;
    if mtime.is_some() || permissions.is_some() {
        meta = call.ctx.store.set_dir_metadata(&path, mtime, permissions).await?;
    }
    tracing::info!(path = %path, "directory made");
    Ok(MakeDirectoryResponse { info: Some(convert::file_info(&meta)) })
}

/// Lists a directory. A caller scoped to part of the tree sees only that
/// part, and the directories leading to it.
pub(super) async fn list(call: Call, request: ListRequest) -> Result<ResponseStream<ListResponse>, ServiceError> {
    // An empty path lists the root.
    let dir = match request.path.as_str() {
        "" => None,
        raw => Some(parse_path(raw)?),
    };
    call.who.check_list(dir.as_ref())?;
    let batches = call.store().list(dir.as_ref(), request.recursive).await?;
    let (who, request_id) = (call.who.clone(), call.id);
    let filter = !who.sees_everything();
    Ok(Box::pin(batches.filter_map(move |batch| match batch {
        Ok(mut entries) => {
            if filter {
                entries.retain(|entry| who.shows(&entry.path));
                if entries.is_empty() {
                    return None;
                }
            }
            Some(Ok(ListResponse { entries: entries.iter().map(convert::file_info).collect() }))
        }
        Err(e) => Some(Err(ServiceError::from(e).into_status(request_id))),
    })))
}
