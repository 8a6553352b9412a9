//! A cap on requests in progress per public listener: past it, new requests
//! are refused at once (`RESOURCE_EXHAUSTED` / HTTP 429) instead of queueing
//! without bound behind the busy ones. A permit is held until the response
//! headers are out, so a streamed answer counts while it is being set up (its
//! tokens are bounded by the model queue, `--max-queued`).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

fn overloaded(limit: usize) -> String {
    format!("the server is at its limit of {limit} requests in progress; retry shortly")
}

/// The gRPC side: see the module documentation.
#[derive(Clone)]
pub struct ConcurrencyCapLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ConcurrencyCapLayer {
    /// At most `limit` requests in progress.
    pub fn new(limit: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit.max(1))), limit: limit.max(1) }
    }

    /// No cap (internal listeners: their callers are coordinators, bounded by theirs).
    pub fn unlimited() -> Self {
        Self::new(Semaphore::MAX_PERMITS)
    }

    /// The HTTP side shares nothing with the gRPC side: each listener has its own cap.
    pub fn http(&self) -> HttpCap {
        HttpCap { permits: Arc::new(Semaphore::new(self.limit)), limit: self.limit }
    }
}

impl<S> tower::Layer<S> for ConcurrencyCapLayer {
    type Service = ConcurrencyCap<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyCap { inner, permits: self.permits.clone(), limit: self.limit }
    }
}

/// See [`ConcurrencyCapLayer`].
#[derive(Clone)]
pub struct ConcurrencyCap<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for ConcurrencyCap<S>
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

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let response = tonic::Status::resource_exhausted(overloaded(self.limit)).into_http::<R>();
            return Box::pin(async move { Ok(response) });
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            drop(permit);
            result
        })
    }
}

/// The HTTP listener's cap (state of [`http_cap`]).
#[derive(Clone)]
pub struct HttpCap {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Refuses with 429 in the OpenAI error shape past the cap; probes are never refused.
pub async fn http_cap(State(cap): State<HttpCap>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let Ok(_permit) = cap.permits.clone().try_acquire_owned() else {
        let body = serde_json::json!({
            "error": { "message": overloaded(cap.limit), "type": "rate_limit_error", "param": null, "code": "overloaded" }
        });
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn past_the_cap_requests_are_refused_and_permits_come_back() {
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_req: axum::http::Request<()>| {
            let mut rx = release_rx.clone();
            async move {
                let _ = rx.wait_for(|go| *go).await;
                Ok::<_, std::convert::Infallible>(axum::http::Response::new(String::new()))
            }
        });
        let svc = ConcurrencyCapLayer::new(2).layer(inner);
        let call = |svc: &ConcurrencyCap<_>| {
            let mut s = svc.clone();
            async move { s.ready().await.unwrap().call(axum::http::Request::new(())).await.unwrap() }
        };
        let a = tokio::spawn(call(&svc));
        let b = tokio::spawn(call(&svc));
        tokio::task::yield_now().await;
        while svc.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = call(&svc).await;
        assert_eq!(refused.headers().get("grpc-status").map(|v| v.to_str().unwrap()), Some("8"));
        release_tx.send(true).unwrap();
        for h in [a, b] {
            assert!(h.await.unwrap().headers().get("grpc-status").is_none());
        }
        assert_eq!(svc.permits.available_permits(), 2);
        assert!(call(&svc).await.headers().get("grpc-status").is_none());
    }
}
