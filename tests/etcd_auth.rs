//! etcd with authentication on: a coordinator with `--etcd-user` and a password
//! file serves; one without credentials or with a wrong password refuses to start
//! with a clear error.
mod common;

use std::time::Duration;

use common::cluster::{etcd, free_port, tessera, wait_for, Proc};

#[test]
fn coordinators_authenticate_to_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, url)) = etcd(tmp.path()) else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
        c.user_add("root", "root-password-0123", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    let good = tmp.path().join("good.pw");
    std::fs::write(&good, "root-password-0123\n").unwrap();
    let bad = tmp.path().join("bad.pw");
    std::fs::write(&bad, "not-the-password").unwrap();
    let start = |name: &str, extra: &[&str]| {
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let p = Proc::spawn(
            tessera().args(["coordinator", "--etcd", &url, "--grpc", &grpc, "--http", &http]).args(extra),
            tmp.path().join(format!("{name}.log")),
        );
        (p, http)
    };

    let (ok, http) = start("ok", &["--etcd-user", "root", "--etcd-password-file", good.to_str().unwrap()]);
    wait_for("the authenticated coordinator", Duration::from_secs(30), || {
        common::http_get(&http, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert!(!ok.log().contains("error"), "{}", ok.log());

    for (name, extra) in
        [("anonymous", vec![]), ("wrong", vec!["--etcd-user", "root", "--etcd-password-file", bad.to_str().unwrap()])]
    {
        let (mut p, http) = start(name, &extra);
        wait_for(&format!("the {name} coordinator to give up"), Duration::from_secs(30), || p.exited());
        assert!(common::http_get(&http, "/readyz").is_none(), "{name} must not serve");
        let log = p.log();
        assert!(log.contains("etcd"), "{name}: {log}");
    }
}
