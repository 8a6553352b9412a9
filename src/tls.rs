//! TLS: certificates from PEM files for the public listeners (gRPC and HTTP),
//! mutual TLS on the cluster's `Node` listeners, and the client side of calls
//! between processes.
//!
//! gRPC goes through tonic's rustls support; the HTTP listener wraps each
//! accepted connection in a tokio-rustls handshake (see [`TlsListener`]). One
//! certificate per process serves both as its server certificate and as the
//! client certificate it shows other processes: `scripts/make-certs.sh` makes
//! certificates valid for both uses.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A listener's certificate (`tessera up`: TLS on the public listeners).
#[derive(Args, Debug, Clone, Default)]
pub struct ListenTlsArgs {
    /// PEM certificate (chain) this process presents on its listeners (and,
    /// in a cluster, to the nodes it calls). Needs --tls-key.
    #[arg(long, env = "TESSERA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// A cluster process's certificates: its own and the cluster's CA.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    #[command(flatten)]
    pub listen: ListenTlsArgs,
    /// PEM CA certificate(s) that sign the cluster's certificates. A node
    /// accepts `Node` calls only from clients with a certificate it signed
    /// (mutual TLS); coordinators and nodes check the nodes they call with it.
    #[arg(long, env = "TESSERA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Certificates read and checked at start, so a bad file fails the start
/// with its name rather than the first connection.
#[derive(Clone)]
pub struct Tls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    /// The HTTP listener's rustls settings, built (and so checked) once at start.
    http: Arc<ServerConfig>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn certificates(pem: &[u8], path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{path}: not PEM certificates"))?;
    anyhow::ensure!(!certs.is_empty(), "{path}: holds no PEM certificate");
    Ok(certs)
}

impl Tls {
    /// The certificate of `args`, None when TLS is off.
    pub fn listener(args: &ListenTlsArgs) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
        let (cert_pem, key_pem) = (read(cert, "TLS certificate")?, read(key, "TLS key")?);
        let http = rustls_server(&cert_pem, &key_pem)
            .with_context(|| format!("TLS certificate {} with key {}", cert.display(), key.display()))?;
        Ok(Some(Self { cert: cert_pem, key: key_pem, ca: None, http: Arc::new(http) }))
    }

    /// The certificates of a cluster process; a CA without a certificate
    /// checks servers only (this process shows no certificate of its own).
    pub fn cluster(args: &TlsArgs) -> anyhow::Result<Option<Self>> {
        let ca = args.tls_ca.as_deref().map(|p| read(p, "TLS CA")).transpose()?;
        if let (Some(pem), Some(path)) = (&ca, &args.tls_ca) {
            certificates(pem, &path.display().to_string())?;
        }
        match Self::listener(&args.listen)? {
            Some(mut tls) => {
                tls.ca = ca;
                Ok(Some(tls))
            }
            None if ca.is_some() => {
                anyhow::bail!("--tls-ca needs --tls-cert and --tls-key (this process's certificate)")
            }
            None => Ok(None),
        }
    }

    /// True when a CA is given (mutual TLS between cluster processes).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// tonic's server settings; `client_auth` requires a client certificate
    /// signed by the CA.
    pub fn grpc_server(&self, client_auth: bool) -> anyhow::Result<ServerTlsConfig> {
        // Without a limit a client that connects and never says hello holds
        // a descriptor and a task for ever, before any key is checked.
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key)).timeout(HANDSHAKE_TIMEOUT);
        if client_auth {
            let ca = self.ca.as_ref().context("mutual TLS needs --tls-ca")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(config)
    }

    /// tonic's client settings for calls to other cluster processes: their
    /// certificates are checked against the CA, ours is shown to them.
    pub fn grpc_client(&self) -> Option<ClientTlsConfig> {
        let ca = self.ca.as_ref()?;
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(&self.cert, &self.key)),
        )
    }

    /// The HTTP listener's handshake.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }
}

/// rustls server settings for `cert`/`key` (the HTTP listeners; no client
/// certificates there: probes and API clients have none).
fn rustls_server(cert: &[u8], key: &[u8]) -> anyhow::Result<ServerConfig> {
    let certs = certificates(cert, "the TLS certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key).context("the TLS key is not a PEM private key")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate does not match its key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections come out TLS-wrapped, for `axum::serve`.
/// Handshakes run in their own tasks, so a client that stalls its handshake
/// delays nobody else; connections that fail it are dropped (and logged).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops when the listener is dropped.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = tcp.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
