//! `ferry.v1.Ferry`: the service, dispatching each RPC to its module. Every
//! call gets a request id, carried in its log span (so in every log line it
//! causes) and in internal-error messages, so an operator can match a
//! client's report to the log; then it is authenticated, and each handler
//! checks the caller's scope for the path it touches.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::v1::ferry_server::Ferry;
use ferry_proto::v1::{
    AbortUploadRequest, AbortUploadResponse, CommitUploadRequest, CommitUploadResponse, CreateUploadRequest,
    CreateUploadResponse, DeleteRequest, DeleteResponse, DownloadFilesRequest, DownloadFilesResponse, DownloadRequest,
    DownloadResponse, ListRequest, ListResponse, MakeDirectoryRequest, MakeDirectoryResponse, QueryUploadRequest,
    QueryUploadResponse, StatRequest, StatResponse, UploadFilesResponse, UploadRequest, UploadResponse,
    UploadSessionRequest, UploadSessionResponse,
};
use ferry_store::{Store, StorePath};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::{self, Authenticator, Principal};
use crate::limits::Admission;
use crate::metrics::Metrics;
use crate::status::ServiceError;

pub(crate) mod download;
mod files;
mod objects;
mod ranged;
mod sessions;
pub(crate) mod upload;

/// A stream of responses, as the streaming RPCs return them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What every call shares, whichever service it arrives on: the store,
/// the server's policies, and the request-id counter.
#[derive(Debug)]
pub struct Context {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub admission: Admission,
    pub metrics: Metrics,
    /// How long an upload stream may stay silent before the server ends it.
    pub idle_timeout: Duration,
    next_request_id: AtomicU64,
}

impl Context {
    pub fn new(
        store: Arc<dyn Store>,
        auth: Authenticator,
        admission: Admission,
        metrics: Metrics,
        idle_timeout: Duration,
    ) -> Self {
        Self { store, auth, admission, metrics, idle_timeout, next_request_id: AtomicU64::new(1) }
    }

    /// Runs one RPC: a fresh request id and log span, authentication and the
    /// caller's request rate, then the body; its error is converted in the
    /// one place that builds statuses. Every service goes through here.
    pub(crate) async fn call<M, T, F>(
        self: &Arc<Self>,
        method: &'static str,
        request: Request<M>,
        body: impl FnOnce(Call, M) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ServiceError>>,
    {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("rpc", id, method, who = tracing::field::Empty);
        let names = client_names(&request);
        let who = self.auth.authenticate(request.metadata(), &names).and_then(|who| {
            who.admit_call()?;
            Ok(who)
        });
        let who = match who {
            Ok(who) => who,
            Err(e) => return Err(span.in_scope(|| e.into_status(id))),
        };
        span.record("who", who.name());
        let call = Call { id, who, ctx: self.clone(), metadata: request.metadata().clone() };
        match body(call, request.into_inner()).instrument(span.clone()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => Err(span.in_scope(|| e.into_status(id))),
        }
    }
}

/// One authenticated call, as its handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub id: u64,
    pub who: Arc<Principal>,
    pub ctx: Arc<Context>,
    /// The request's metadata (compatibility services read names from it).
    pub metadata: tonic::metadata::MetadataMap,
}

impl Call {
    fn store(&self) -> Arc<dyn Store> {
        self.ctx.store.clone()
    }
}

/// The ferry service over any [`Store`].
#[derive(Debug, Clone)]
pub struct FerryService {
    ctx: Arc<Context>,
}

impl FerryService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    async fn call<M, T, F>(
        &self,
        method: &'static str,
        request: Request<M>,
        body: impl FnOnce(Call, M) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ServiceError>>,
    {
        self.ctx.call(method, request, body).await
    }
}

/// The verified client certificate's names, with mutual TLS.
fn client_names<M>(request: &Request<M>) -> Vec<String> {
    match request.peer_certs() {
        Some(chain) => chain.first().map(|leaf| auth::certificate_names(leaf)).unwrap_or_default(),
        None => Vec::new(),
    }
}

pub(crate) fn parse_path(raw: &str) -> Result<StorePath, ServiceError> {
    StorePath::parse(raw).map_err(|e| ServiceError::Store(e.into()))
}

#[tonic::async_trait]
impl Ferry for FerryService {
    async fn upload(&self, request: Request<Streaming<UploadRequest>>) -> Result<Response<UploadResponse>, Status> {
        self.call("Upload", request, upload::upload).await
    }

    type DownloadStream = ResponseStream<DownloadResponse>;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        self.call("Download", request, download::download).await
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        self.call("Stat", request, objects::stat).await
    }

    type ListStream = ResponseStream<ListResponse>;

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        self.call("List", request, objects::list).await
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.call("Delete", request, objects::delete).await
    }

    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        self.call("CreateUpload", request, sessions::create).await
    }

    async fn query_upload(
        &self,
        request: Request<QueryUploadRequest>,
    ) -> Result<Response<QueryUploadResponse>, Status> {
        self.call("QueryUpload", request, sessions::query).await
    }

    async fn abort_upload(
        &self,
        request: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        self.call("AbortUpload", request, sessions::abort).await
    }

    type UploadSessionStream = ResponseStream<UploadSessionResponse>;

    async fn upload_session(
        &self,
        request: Request<Streaming<UploadSessionRequest>>,
    ) -> Result<Response<Self::UploadSessionStream>, Status> {
        self.call("UploadSession", request, sessions::session).await
    }

    type UploadFilesStream = ResponseStream<UploadFilesResponse>;

    async fn upload_files(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<Self::UploadFilesStream>, Status> {
        self.call("UploadFiles", request, files::upload_files).await
    }

    type DownloadFilesStream = ResponseStream<DownloadFilesResponse>;

    async fn download_files(
        &self,
        request: Request<DownloadFilesRequest>,
    ) -> Result<Response<Self::DownloadFilesStream>, Status> {
        self.call("DownloadFiles", request, files::download_files).await
    }

    async fn make_directory(
        &self,
        request: Request<MakeDirectoryRequest>,
    ) -> Result<Response<MakeDirectoryResponse>, Status> {
        self.call("MakeDirectory", request, objects::make_directory).await
    }

    async fn commit_upload(
        &self,
        request: Request<CommitUploadRequest>,
    ) -> Result<Response<CommitUploadResponse>, Status> {
        self.call("CommitUpload", request, ranged::commit).await
    }
}
