//! The one way to build a `Node` client.
//!
//! Coordinators and nodes (replication, shard transfer) both call the `Node`
//! service; building the client in one place means every caller gets the same
//! connect timeout, the same message limits and the trace-context interceptor,
//! so a node-to-node call joins the trace of the request that caused it.
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::Injector;
use tessera_types::limits::MAX_MESSAGE_BYTES;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::v1::node_client;

/// A `Node` client whose calls carry the caller's W3C trace context.
pub type NodeClient = node_client::NodeClient<InterceptedService<Channel, TraceContextInjector>>;

/// Connection settings of a `Node` client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// How long a connection attempt may take before the call fails `UNAVAILABLE`.
    pub connect_timeout: Duration,
    /// Largest message sent or accepted.
    pub max_message_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(5), max_message_bytes: MAX_MESSAGE_BYTES }
    }
}

/// Why a `Node` client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A URL tonic refuses.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A plaintext address in a process that speaks TLS to nodes.
    #[error("refusing plaintext node address {0}: this process talks to nodes over TLS only (https://)")]
    Plaintext(String),
}

/// The TLS settings of every `Node` client of this process (see [`use_tls`]).
static CLIENT_TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// Sets the CA and client certificate every `Node` client of this process uses
/// for `https://` node addresses; once, at start (a later call changes nothing
/// and returns false). A process has one identity in a cluster, and nodes are
/// dialled from several places (the coordinator's node set, replication, shard
/// transfer): one setting for all of them leaves none a way to forget it.
pub fn use_tls(config: ClientTlsConfig) -> bool {
    CLIENT_TLS.set(config).is_ok()
}

/// A channel to `url` that connects on first use, with TCP_NODELAY (without it
/// every loopback hop waits ~40 ms for a delayed ACK); `https://` URLs use the
/// TLS settings given to [`use_tls`].
pub fn lazy_channel(url: &str, connect_timeout: Duration) -> Result<Channel, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?.connect_timeout(connect_timeout).tcp_nodelay(true);
    if let Some(tls) = CLIENT_TLS.get() {
        // A process that speaks TLS to nodes never falls back to plaintext for
        // one that registered an http:// address: the call fails instead (as
        // an https:// URL without TLS settings fails in tonic itself).
        if !url.starts_with("https://") {
            return Err(ClientError::Plaintext(url.to_string()));
        }
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(endpoint.connect_lazy())
}

/// A `Node` client for `url`; the connection is made on first use.
pub fn node_client(url: &str, options: ClientOptions) -> Result<NodeClient, ClientError> {
    let channel = lazy_channel(url, options.connect_timeout)?;
    Ok(node_client::NodeClient::with_interceptor(channel, TraceContextInjector)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes))
}

/// Puts the current span's trace context into each request's metadata
/// (`traceparent`), so the callee's spans join the caller's trace.
#[derive(Clone, Copy, Default)]
pub struct TraceContextInjector;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_str())) {
            self.0.insert(k, v);
        }
    }
}

impl tonic::service::Interceptor for TraceContextInjector {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
        });
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test in this crate that sets the process-wide TLS settings.
    #[tokio::test]
    async fn with_tls_on_plaintext_node_addresses_are_refused() {
        assert!(lazy_channel("http://127.0.0.1:1", Duration::from_secs(1)).is_ok(), "plaintext is fine without TLS");
        assert!(use_tls(ClientTlsConfig::new()));
        assert!(!use_tls(ClientTlsConfig::new()), "set once");
        let err = lazy_channel("http://127.0.0.1:1", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Plaintext(_)), "{err}");
        assert!(lazy_channel("https://127.0.0.1:1", Duration::from_secs(1)).is_ok());
    }
}
