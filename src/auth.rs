//! API keys enforced on the public listeners: a tower layer in front of the
//! gRPC router and an axum middleware in front of the HTTP app, both asking
//! [`KeyFile::authorize`] with the route's [`grpc_access`] / [`http_access`].
//! SIGHUP re-reads the key file.
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera_coordinator::auth::{grpc_access, http_access, AuthError, KeyFile};
use tessera_proto::shutdown::Shutdown;

/// Opens the key file and re-reads it on every SIGHUP until shutdown.
pub fn keys(path: &Path, shutdown: &Shutdown) -> anyhow::Result<Arc<KeyFile>> {
    let file = Arc::new(KeyFile::open(path)?);
    tracing::info!(path = %path.display(), "API keys on: every public request needs 'authorization: Bearer KEY'");
    let watched = file.clone();
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP; the API key file is read at start only");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.stopping() => return,
                Some(()) = hup.recv() => match watched.reload() {
                    Ok(n) => tracing::info!(keys = n, "API key file re-read"),
                    Err(e) => tracing::error!(error = %e, "API key file not re-read; the previous keys stay in force"),
                },
            }
        }
    });
    Ok(file)
}

/// The gRPC side: see the module documentation.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    keys: Option<Arc<KeyFile>>,
}

impl GrpcAuthLayer {
    /// Checks keys when `keys` is Some, passes everything through otherwise.
    pub fn new(keys: Option<Arc<KeyFile>>) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth { inner, keys: self.keys.clone() }
    }
}

/// See [`GrpcAuthLayer`].
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    keys: Option<Arc<KeyFile>>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        if let Some(keys) = &self.keys {
            let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
            match keys.authorize(header, grpc_access(req.uri().path())) {
                // The handlers read the principal from the request's extensions
                // (tonic carries them over) to scope names to its tenant.
                Ok(Some(principal)) => {
                    req.extensions_mut().insert(principal);
                }
                Ok(None) => {}
                Err(e) => {
                    let status = match e {
                        AuthError::Forbidden { .. } => tonic::Status::permission_denied(e.to_string()),
                        _ => tonic::Status::unauthenticated(e.to_string()),
                    };
                    let response = status.into_http::<R>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// The HTTP side: 401 / 403 in the OpenAI error shape (SDKs show its message).
pub async fn http_auth(State(keys): State<Option<Arc<KeyFile>>>, mut req: Request, next: Next) -> Response {
    if let Some(keys) = keys {
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let checked = keys.authorize(header, http_access(req.uri().path()));
        if let Ok(Some(principal)) = &checked {
            req.extensions_mut().insert(principal.clone());
        }
        if let Err(e) = checked {
            let (status, code) = match e {
                AuthError::Forbidden { .. } => (axum::http::StatusCode::FORBIDDEN, "permission_denied"),
                _ => (axum::http::StatusCode::UNAUTHORIZED, "invalid_api_key"),
            };
            let body = serde_json::json!({
                "error": { "message": e.to_string(), "type": "invalid_request_error", "param": null, "code": code }
            });
            return (status, axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}
