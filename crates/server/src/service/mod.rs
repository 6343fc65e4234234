//! `ferry.v1.Ferry`: the service, dispatching each RPC to its module. Every
//! call gets a request id, carried in its log span and in internal-error
//! messages so an operator can match a client's report to the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::v1::ferry_server::Ferry;
use ferry_proto::v1::{
    AbortUploadRequest, AbortUploadResponse, CreateUploadRequest, CreateUploadResponse, DeleteRequest, DeleteResponse,
    DownloadRequest, DownloadResponse, ListRequest, ListResponse, QueryUploadRequest, QueryUploadResponse, StatRequest,
    StatResponse, UploadRequest, UploadResponse, UploadSessionRequest, UploadSessionResponse,
};
use ferry_store::{Store, StorePath};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::status::ServiceError;

mod download;
mod objects;
mod sessions;
mod upload;

/// A stream of responses, as the streaming RPCs return them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The ferry service over any [`Store`].
#[derive(Debug, Clone)]
pub struct FerryService {
    store: Arc<dyn Store>,
    next_request_id: Arc<AtomicU64>,
    /// How long an upload stream may stay silent before the server ends it.
    idle_timeout: Duration,
}

impl FerryService {
    pub fn new(store: Arc<dyn Store>, idle_timeout: Duration) -> Self {
        Self { store, next_request_id: Arc::new(AtomicU64::new(1)), idle_timeout }
    }

    /// Runs one RPC's body inside a span with a fresh request id, converting
    /// its error in the one place that builds statuses.
    async fn call<T, F>(&self, method: &'static str, body: impl FnOnce(u64) -> F) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ServiceError>>,
    {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("rpc", id, method);
        match body(id).instrument(span.clone()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => Err(span.in_scope(|| e.into_status(id))),
        }
    }
}

pub(crate) fn parse_path(raw: &str) -> Result<StorePath, ServiceError> {
    StorePath::parse(raw).map_err(|e| ServiceError::Store(e.into()))
}

#[tonic::async_trait]
impl Ferry for FerryService {
    async fn upload(&self, request: Request<Streaming<UploadRequest>>) -> Result<Response<UploadResponse>, Status> {
        let store = self.store.clone();
        self.call("Upload", |_| upload::upload(store, request.into_inner(), self.idle_timeout)).await
    }

    type DownloadStream = ResponseStream<DownloadResponse>;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let store = self.store.clone();
        self.call("Download", |id| download::download(store, request.into_inner(), id)).await
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let store = self.store.clone();
        self.call("Stat", |_| objects::stat(store, request.into_inner())).await
    }

    type ListStream = ResponseStream<ListResponse>;

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        let store = self.store.clone();
        self.call("List", |id| objects::list(store, request.into_inner(), id)).await
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let store = self.store.clone();
        self.call("Delete", |_| objects::delete(store, request.into_inner())).await
    }

    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        let store = self.store.clone();
        self.call("CreateUpload", |_| sessions::create(store, request.into_inner())).await
    }

    async fn query_upload(
        &self,
        request: Request<QueryUploadRequest>,
    ) -> Result<Response<QueryUploadResponse>, Status> {
        let store = self.store.clone();
        self.call("QueryUpload", |_| sessions::query(store, request.into_inner())).await
    }

    async fn abort_upload(
        &self,
        request: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        let store = self.store.clone();
        self.call("AbortUpload", |_| sessions::abort(store, request.into_inner())).await
    }

    type UploadSessionStream = ResponseStream<UploadSessionResponse>;

    async fn upload_session(
        &self,
        request: Request<Streaming<UploadSessionRequest>>,
    ) -> Result<Response<Self::UploadSessionStream>, Status> {
        let store = self.store.clone();
        let idle = self.idle_timeout;
        self.call("UploadSession", |id| sessions::session(store, request.into_inner(), id, idle)).await
    }
}
