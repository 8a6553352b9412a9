//! The public `Tessera` gRPC service: a thin layer that names each RPC's span,
//! unwraps the request, calls the concern that does the work and maps its
//! [`CoordinatorError`](crate::error::CoordinatorError) to a status.
use std::pin::Pin;

use futures::StreamExt;
use tessera_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{instrument, Instrument};

use crate::auth::Principal;
use crate::convert::collection_info;
use crate::coordinator::Coordinator;
use crate::tenancy::Scope;

/// The tenant scope of a request: the auth layer in front of the router puts
/// the key's [`Principal`] in the request's extensions; none means keys are off.
fn scope<T>(req: &Request<T>) -> Scope {
    Scope::of(req.extensions().get::<Principal>())
}

/// The stream type of Generate.
pub type GenerateStream = Pin<Box<dyn futures::Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;
/// The stream type of IngestStream.
pub type IngestStream = Pin<Box<dyn futures::Stream<Item = Result<pb::IngestProgress, Status>> + Send>>;
/// The stream type of FineTune.
pub type FineTuneStream = Pin<Box<dyn futures::Stream<Item = Result<pb::FineTuneProgress, Status>> + Send>>;
/// The stream type of Ask.
pub type AskStream = Pin<Box<dyn futures::Stream<Item = Result<pb::AskChunk, Status>> + Send>>;

impl Coordinator {
    /// The tonic server for this service.
    pub fn into_server(self, max_message_bytes: usize) -> pb::tessera_server::TesseraServer<Self> {
        pb::tessera_server::TesseraServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

/// Forwards the model node's stream. When the client goes away `send` fails;
/// dropping `upstream` then cancels the node's stream, which cancels the generation.
fn forward(mut upstream: tonic::Streaming<pb::GenerateChunk>) -> GenerateStream {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let item = match upstream.message().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(status) => Err(status),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::tessera_server::Tessera for Coordinator {
    type GenerateStream = GenerateStream;
    type AskStream = AskStream;
    type FineTuneStream = FineTuneStream;

    #[instrument(skip_all, name = "Tessera/FineTune", fields(out = %req.get_ref().out))]
    async fn fine_tune(&self, req: Request<pb::FineTuneRequest>) -> Result<Response<FineTuneStream>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        if !req.collection.is_empty() {
            req.collection = scope.collection(&req.collection)?;
        }
        let (mut upstream, trainer) = Coordinator::fine_tune(self, req).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let coordinator = self.clone();
        tokio::spawn(async move {
            // Dropping the upstream when the client goes away stops the job
            // after its current step (the node keeps a checkpoint).
            while let Some(item) = upstream.message().await.transpose() {
                // The summary waits until the adapter is registered and copied
                // to the model nodes that took it. A failed registration is
                // logged, not turned into a failed job: the adapter is trained
                // and served on the node that trained it.
                let served = item.as_ref().ok().and_then(|m| m.summary.as_ref()).map(|s| s.adapter.clone());
                if let Some(name) = served.filter(|n| !n.is_empty()) {
                    if let Err(e) = coordinator.register_trained(&trainer, &name).await {
                        tracing::warn!(adapter = %name, node = %trainer, error = %e, "registering the trained adapter failed");
                    }
                }
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    type IngestStreamStream = IngestStream;

    #[instrument(skip_all, name = "Tessera/Ask", fields(collection = %req.get_ref().collection, session = %req.get_ref().session))]
    async fn ask(&self, req: Request<pb::AskRequest>) -> Result<Response<AskStream>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.collection = scope.collection(&req.collection)?;
        req.session = scope.session(&req.session)?;
        let rx = Coordinator::ask(self, req).await?;
        let shown = move |mut chunk: pb::AskChunk| {
            if let Some(result) = chunk.result.as_mut() {
                result.session = scope.shown_session(&result.session).unwrap_or_default();
            }
            chunk
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(move |r| r.map(&shown).map_err(Status::from)))))
    }

    #[instrument(skip_all, name = "Tessera/ClusterStatus")]
    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(Coordinator::cluster_status(self).await.to_pb()))
    }

    #[instrument(skip_all, name = "Tessera/ListSessions")]
    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.prefix = format!("{}{}", scope.prefix(), req.prefix);
        if !req.page_token.is_empty() {
            req.page_token = format!("{}{}", scope.prefix(), req.page_token);
        }
        let mut page = Coordinator::list_sessions(self, req).await?;
        page.sessions.retain_mut(|s| scope.shown_session(&s.session).map(|id| s.session = id).is_some());
        page.next_page_token = scope.shown_session(&page.next_page_token).unwrap_or_default();
        Ok(Response::new(page))
    }

    #[instrument(skip_all, name = "Tessera/GetSession", fields(session = %req.get_ref().session))]
    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Result<Response<pb::SessionState>, Status> {
        let scope = scope(&req);
        let mut state = Coordinator::get_session(self, &scope.session(&req.into_inner().session)?).await?;
        state.session = scope.shown_session(&state.session).unwrap_or_default();
        Ok(Response::new(state))
    }

    #[instrument(skip_all, name = "Tessera/ClearSession", fields(session = %req.get_ref().session))]
    async fn clear_session(
        &self,
        req: Request<pb::ClearSessionRequest>,
    ) -> Result<Response<pb::ClearSessionResponse>, Status> {
        let scope = scope(&req);
        Ok(Response::new(Coordinator::clear_session(self, &scope.session(&req.into_inner().session)?).await?))
    }

    #[instrument(skip_all, name = "Tessera/LoadAdapter", fields(name = %req.get_ref().name))]
    async fn load_adapter(&self, req: Request<pb::LoadAdapterRequest>) -> Result<Response<pb::AdapterInfo>, Status> {
        Ok(Response::new(Coordinator::load_adapter(self, req.into_inner()).await?))
    }

    #[instrument(skip_all, name = "Tessera/UnloadAdapter", fields(name = %req.get_ref().name))]
    async fn unload_adapter(
        &self,
        req: Request<pb::UnloadAdapterRequest>,
    ) -> Result<Response<pb::UnloadAdapterResponse>, Status> {
        Ok(Response::new(Coordinator::unload_adapter(self, &req.into_inner().name).await?))
    }

    #[instrument(skip_all, name = "Tessera/ListAdapters")]
    async fn list_adapters(
        &self,
        _req: Request<pb::ListAdaptersRequest>,
    ) -> Result<Response<pb::ListAdaptersResponse>, Status> {
        Ok(Response::new(Coordinator::list_adapters(self).await?))
    }

    #[instrument(skip_all, name = "Tessera/Generate", fields(max_tokens = req.get_ref().max_tokens))]
    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<GenerateStream>, Status> {
        Ok(Response::new(forward(self.generate_checked(req.into_inner()).await?)))
    }

    #[instrument(skip_all, name = "Tessera/CreateCollection", fields(collection = %req.get_ref().name))]
    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let scope = scope(&req);
        let req = req.into_inner();
        let settings = tessera_proto::convert::search_settings(req.settings);
        let quantization = tessera_proto::convert::quantization(&req.quantization)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let meta = self
            .create(&scope.collection(&req.name)?, req.shards, req.replication, settings, quantization, false)
            .await?;
        let mut info = collection_info(&meta, 0, 0);
        info.name = req.name;
        Ok(Response::new(info))
    }

    #[instrument(skip_all, name = "Tessera/ListCollections")]
    async fn list_collections(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let scope = scope(&req);
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: Coordinator::list_collections(self, &scope).await?,
        }))
    }

    #[instrument(skip_all, name = "Tessera/DropCollection", fields(collection = %req.get_ref().name))]
    async fn drop_collection(
        &self,
        req: Request<pb::DropCollectionRequest>,
    ) -> Result<Response<pb::DropCollectionResponse>, Status> {
        let scope = scope(&req);
        let dropped = Coordinator::drop_collection(self, &scope.collection(&req.into_inner().name)?).await?;
        Ok(Response::new(pb::DropCollectionResponse { dropped }))
    }

    #[instrument(skip_all, name = "Tessera/Ingest", fields(collection = %req.get_ref().collection, files = req.get_ref().files.len(), documents = req.get_ref().documents.len()))]
    async fn ingest(&self, req: Request<pb::IngestRequest>) -> Result<Response<pb::IngestResponse>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.collection = scope.collection(&req.collection)?;
        Ok(Response::new(Coordinator::ingest(self, req).await?))
    }

    #[instrument(skip_all, name = "Tessera/IngestStream", fields(collection = %req.get_ref().collection, files = req.get_ref().files.len(), documents = req.get_ref().documents.len()))]
    async fn ingest_stream(&self, req: Request<pb::IngestRequest>) -> Result<Response<IngestStream>, Status> {
        // The ingest runs to its end even if the client goes away: stopping between
        // shard writes would leave a request half stored for no gain.
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.collection = scope.collection(&req.collection)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let me = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let progress = tx.clone();
                let report = move |p: pb::IngestProgress| {
                    let _ = progress.send(Ok(p));
                };
                let last = match Coordinator::ingest_with_progress(&me, req, &report).await {
                    Ok(done) => Ok(pb::IngestProgress {
                        chunks_total: done.chunks,
                        chunks_embedded: done.chunks,
                        chunks_written: done.chunks,
                        documents_written: done.documents,
                        done: Some(done),
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let _ = tx.send(last);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    #[instrument(skip_all, name = "Tessera/Delete", fields(collection = %req.get_ref().collection))]
    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.collection = scope.collection(&req.collection)?;
        Ok(Response::new(Coordinator::delete(self, req).await?))
    }

    #[instrument(skip_all, name = "Tessera/Search", fields(collection = %req.get_ref().collection, top_k = req.get_ref().top_k))]
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let scope = scope(&req);
        let mut req = req.into_inner();
        req.collection = scope.collection(&req.collection)?;
        let hits = Coordinator::search(self, req).await?;
        Ok(Response::new(pb::SearchResponse { hits: hits.into_iter().map(pb::Hit::from).collect() }))
    }

    #[instrument(skip_all, name = "Tessera/Embed", fields(texts = req.get_ref().texts.len()))]
    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        Ok(Response::new(Coordinator::embed(self, req.into_inner().texts).await?))
    }
}
