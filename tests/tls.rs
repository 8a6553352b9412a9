//! TLS end to end with certificates from `scripts/make-certs.sh`: etcd with
//! client-certificate auth, a node serving `Node` with mutual TLS, a coordinator
//! calling it with its certificate and serving its public gRPC and HTTP
//! listeners over TLS. The CLI works over https with the CA; plaintext, a
//! client without a certificate and one whose certificate another CA signed are
//! refused by the node; the public listeners refuse plaintext.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{free_port, tessera, wait_for, wait_for_procs, Proc};
use tessera_proto::v1 as pb;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Pki {
    let script = common::workspace().join("scripts/make-certs.sh");
    let out = Command::new("bash").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
    Pki { ca: dir.join("ca.pem"), cert: dir.join("tls.pem"), key: dir.join("tls.key") }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `curl` over https: the status code, or None when the request failed.
fn curl(args: &[&str]) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(args)
        .output()
        .ok()?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// One `Node/Info` call to `url` with the given TLS settings.
fn node_info(rt: &tokio::runtime::Runtime, url: &str, tls: Option<ClientTlsConfig>) -> Result<String, String> {
    rt.block_on(async {
        let mut endpoint = Endpoint::from_shared(url.to_string()).unwrap().connect_timeout(Duration::from_secs(3));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let mut client = pb::node_client::NodeClient::new(channel);
        let info = client.info(pb::NodeInfoRequest {}).await.map_err(|e| format!("call: {e}"))?;
        Ok(info.into_inner().id)
    })
}

#[test]
fn cluster_processes_talk_mutual_tls_and_refuse_everyone_else() {
    let Some(models) = common::models() else { return };
    for tool in ["etcd", "openssl", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(!common::in_ci(), "{tool} missing under CI (scripts/setup.sh installs it)");
            eprintln!("skipping: no {tool}");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_certs(&tmp.path().join("pki"));
    let rogue = make_certs(&tmp.path().join("rogue"));

    // etcd over https, asking every client for a certificate the CA signed.
    let (client_port, peer_port) = (free_port(), free_port());
    let etcd_url = format!("https://127.0.0.1:{client_port}");
    let mut etcd = Proc::spawn(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(tmp.path().join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer_port}")])
            .args(["--cert-file", s(&pki.cert), "--key-file", s(&pki.key), "--trusted-ca-file", s(&pki.ca)])
            .arg("--client-cert-auth"),
        tmp.path().join("etcd.log"),
    );
    let health = format!("{etcd_url}/health");
    let mtls = ["--cacert", s(&pki.ca), "--cert", s(&pki.cert), "--key", s(&pki.key)];
    wait_for_procs("etcd over TLS", Duration::from_secs(30), [&mut etcd], || {
        curl(&[&mtls[..], &[health.as_str()]].concat()) == Some(200)
    });
    assert_eq!(curl(&["--cacert", s(&pki.ca), &health]), None, "etcd must want a client certificate");

    let etcd_tls = ["--etcd-ca", s(&pki.ca), "--etcd-cert", s(&pki.cert), "--etcd-key", s(&pki.key)];
    let tls = ["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.key), "--tls-ca", s(&pki.ca)];
    let node_addr = format!("127.0.0.1:{}", free_port());
    let mut node = Proc::spawn(
        tessera()
            .args(["node", "--etcd", &etcd_url, "--id", "n1", "--roles", "loader,embedder,shard,session"])
            .args(["--grpc", &node_addr, "--lease-ttl", "2", "--models", s(&models)])
            .arg("--data-dir")
            .arg(tmp.path().join("n1"))
            .args(etcd_tls)
            .args(tls),
        tmp.path().join("n1.log"),
    );
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut coordinator = Proc::spawn(
        tessera().args(["coordinator", "--etcd", &etcd_url, "--grpc", &grpc, "--http", &http]).args(etcd_tls).args(tls),
        tmp.path().join("c1.log"),
    );

    // The public HTTP listener speaks TLS only, with the CA's certificate.
    let readyz = format!("https://{http}/readyz");
    wait_for_procs("the coordinator over https", Duration::from_secs(60), [&mut node, &mut coordinator], || {
        curl(&["--cacert", s(&pki.ca), &readyz]) == Some(200)
    });
    assert_eq!(curl(&[&readyz]), None, "an unknown CA must fail verification");
    assert_eq!(curl(&[&format!("http://{http}/readyz")]), None, "plaintext HTTP must be refused");

    // The CLI over https reaches the node through mutual TLS.
    let cli = |server: &str, args: &[&str]| {
        tessera().args(args).args(["--server", server, "--tls-ca", s(&pki.ca)]).output().unwrap()
    };
    let server = format!("https://{grpc}");
    wait_for("the node in the coordinator's view", Duration::from_secs(60), || {
        let out = cli(&server, &["status", "--json"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"alive\":true")
    });
    let doc = tmp.path().join("tls-note.md");
    std::fs::write(&doc, "Certificates rotate every ninety days. 证书每九十天轮换一次。").unwrap();
    let out = cli(&server, &["ingest", "--collection", "docs", s(&doc)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&server, &["search", "--collection", "docs", "--json", "how often do certificates rotate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-note.md"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&format!("http://{grpc}"), &["collections", "list"]);
    assert!(!out.status.success(), "plaintext gRPC to a TLS listener must fail");
    let out = tessera().args(["collections", "list", "--server", &server]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-ca"), "{err}");

    // The node: only clients with a certificate the cluster CA signed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pem = |p: &Path| std::fs::read(p).unwrap();
    let ca = Certificate::from_pem(pem(&pki.ca));
    let https = format!("https://{node_addr}");
    let good =
        ClientTlsConfig::new().ca_certificate(ca.clone()).identity(Identity::from_pem(pem(&pki.cert), pem(&pki.key)));
    assert_eq!(node_info(&rt, &https, Some(good)).as_deref(), Ok("n1"));
    let no_cert = ClientTlsConfig::new().ca_certificate(ca.clone());
    assert!(node_info(&rt, &https, Some(no_cert)).is_err(), "a client without a certificate got in");
    let other_ca =
        ClientTlsConfig::new().ca_certificate(ca).identity(Identity::from_pem(pem(&rogue.cert), pem(&rogue.key)));
    assert!(node_info(&rt, &https, Some(other_ca)).is_err(), "a certificate of another CA got in");
    assert!(node_info(&rt, &format!("http://{node_addr}"), None).is_err(), "plaintext got in");

    // A node given a certificate but no CA would accept anyone: refused at start.
    let out = tessera()
        .args(["node", "--etcd", &etcd_url, "--id", "n2", "--roles", "shard", "--grpc", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(tmp.path().join("n2"))
        .args(["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.key)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-ca"), "{err}");
}

#[test]
fn tessera_up_serves_its_public_listeners_over_tls() {
    let Some(models) = common::models() else { return };
    if Command::new("curl").arg("--version").output().is_err()
        || Command::new("openssl").arg("version").output().is_err()
    {
        assert!(!common::in_ci(), "curl or openssl missing under CI (scripts/setup.sh installs them)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_certs(&tmp.path().join("pki"));
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut up = Proc::spawn(
        tessera()
            .args(["up", "--grpc", &grpc, "--http", &http, "--models", s(&models)])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.key)]),
        tmp.path().join("up.log"),
    );
    let ca = ["--cacert", s(&pki.ca)];
    wait_for_procs("tessera up over https", Duration::from_secs(60), [&mut up], || {
        curl(&[&ca[..], &[format!("https://{http}/readyz").as_str()]].concat()) == Some(200)
    });
    assert_eq!(curl(&[&ca[..], &[format!("https://{http}/v1/models").as_str()]].concat()), Some(200));
    assert_eq!(curl(&[&format!("http://{http}/readyz")]), None, "plaintext HTTP must be refused");
    let out = tessera()
        .args(["collections", "create", "docs", "--server", &format!("https://{grpc}"), "--tls-ca", s(&pki.ca)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tessera().args(["collections", "list", "--server", &format!("http://{grpc}")]).output().unwrap();
    assert!(!out.status.success(), "plaintext gRPC to a TLS listener must fail");
}
