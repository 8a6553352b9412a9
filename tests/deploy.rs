//! deploy/: every kustomize overlay renders (`kubectl kustomize`), validates offline
//! against the Kubernetes schemas (kubernetes-validate, strict), has the pieces the
//! layout needs (etcd StatefulSet, coordinator Deployment + Service, node
//! StatefulSet with a PersistentVolumeClaim per pod, probes on /healthz and
//! /readyz, resource requests, PodDisruptionBudgets), and every argument given to
//! the tessera binary parses with the binary's own parser (`tessera check-args`).
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Replaces `$(VAR)` references the way the kubelet does, from the container's env and the pod name.
fn expand(s: &str, env: &serde_json::Map<String, Value>) -> String {
    let mut out = s.replace("$(POD_NAME)", "tessera-node-0");
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v.as_str().unwrap_or(""));
    }
    out
}

#[test]
fn overlays_render_validate_and_pass_their_arguments_to_the_binary() {
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        assert!(!common::in_ci(), "kubectl missing under CI");
        eprintln!("skipping: no kubectl");
        return;
    }
    let python = common::workspace().join("tests/python");
    let setup = Command::new("bash").arg(python.join("setup.sh")).status().unwrap();
    if !setup.success() {
        assert!(!common::in_ci(), "tests/python/setup.sh failed under CI");
        eprintln!("skipping: could not install kubernetes-validate");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for overlay in ["small", "production"] {
        let dir = common::workspace().join("deploy/k8s/overlays").join(overlay);
        let rendered = Command::new("kubectl").arg("kustomize").arg(&dir).output().unwrap();
        assert!(rendered.status.success(), "{overlay}: {}", String::from_utf8_lossy(&rendered.stderr));
        let file = tmp.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &rendered.stdout).unwrap();

        let valid = Command::new(python.join(".venv/bin/kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.30.0", "--quiet"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            valid.status.success(),
            "{overlay} does not validate:\n{}{}",
            String::from_utf8_lossy(&valid.stdout),
            String::from_utf8_lossy(&valid.stderr)
        );

        let listed = run_with_stdin(
            Command::new(python.join(".venv/bin/python")).arg(python.join("k8s_containers.py")),
            &rendered.stdout,
        );
        assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
        let v: Value = serde_json::from_slice(&listed.stdout).unwrap();
        let kinds: Vec<&str> = v["kinds"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        for want in [
            "StatefulSet/etcd",
            "Service/etcd",
            "Deployment/tessera-coordinator",
            "Service/tessera",
            "StatefulSet/tessera-node",
            "Service/tessera-node",
            "PodDisruptionBudget/etcd",
            "PodDisruptionBudget/tessera-coordinator",
            "PodDisruptionBudget/tessera-node",
            "NetworkPolicy/tessera-node",
            "NetworkPolicy/etcd",
        ] {
            assert!(kinds.contains(&want), "{overlay}: no {want} in {kinds:?}");
        }
        let claims: Vec<&str> =
            v["claims"]["tessera-node"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert!(claims.contains(&"data"), "{overlay}: nodes need a PVC per pod: {claims:?}");

        let containers = v["containers"].as_array().unwrap();
        let tessera: Vec<&Value> =
            containers.iter().filter(|c| c["image"].as_str().unwrap().contains("tessera/tessera")).collect();
        assert!(tessera.len() >= 3, "{overlay}: {containers:?}");
        for c in &tessera {
            if c["command"].as_array().unwrap().is_empty() {
                // A tessera server container: the binary's arguments, probes, requests, non-root.
                let env = c["env"].as_object().unwrap();
                let args: Vec<String> =
                    c["args"].as_array().unwrap().iter().map(|a| expand(a.as_str().unwrap(), env)).collect();
                let mut check = Command::new(env!("CARGO_BIN_EXE_tessera"));
                check.arg("check-args").args(&args).env_clear();
                for (k, val) in env {
                    check.env(k, expand(val.as_str().unwrap_or(""), env));
                }
                let out = check.output().unwrap();
                assert!(
                    out.status.success(),
                    "{overlay} {}/{}: tessera rejects {args:?}: {}",
                    c["name"],
                    c["container"],
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(c["probes"]["readiness"], "/readyz", "{c}");
                assert_eq!(c["probes"]["liveness"], "/healthz", "{c}");
                assert!(c["requests"]["cpu"].is_string() && c["requests"]["memory"].is_string(), "{c}");
                assert_eq!(c["run_as_non_root"], true, "{c}");
                // Node calls are mutual TLS, the coordinators' listeners TLS, from the Secret.
                for (var, file) in
                    [("TESSERA_TLS_CERT", "tls.crt"), ("TESSERA_TLS_KEY", "tls.key"), ("TESSERA_TLS_CA", "ca.crt")]
                {
                    assert_eq!(env[var], format!("/etc/tessera/tls/{file}"), "{overlay} {}: {var}", c["name"]);
                }
                if args.first().map(String::as_str) == Some("coordinator") {
                    assert_eq!(env["TESSERA_API_KEYS_FILE"], "/etc/tessera/api-keys/keys", "{overlay}: API keys on");
                    assert!(!args.iter().any(|a| a == "--insecure-listen-any"), "{overlay}: {args:?}");
                }
            }
        }
    }
    // The TLS Secret the manifests mount comes from scripts/make-certs.sh and validates too.
    let secret = tmp.path().join("tessera-tls.yaml");
    let made = Command::new("bash")
        .arg(common::workspace().join("scripts/make-certs.sh"))
        .arg(tmp.path().join("pki"))
        .args(["--k8s-secret", secret.to_str().unwrap(), "--namespace", "tessera"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let valid = Command::new(python.join(".venv/bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30.0", "--quiet"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(valid.status.success(), "the TLS Secret does not validate: {}", String::from_utf8_lossy(&valid.stdout));
    let text = std::fs::read_to_string(&secret).unwrap();
    assert!(text.contains("name: tessera-tls") && text.contains("ca.crt:") && text.contains("tls.key:"), "{text}");
    for overlay in ["small", "production"] {
        let rendered = std::fs::read_to_string(tmp.path().join(format!("{overlay}.yaml"))).unwrap();
        assert_eq!(rendered.matches("secretName: tessera-tls").count(), 2, "{overlay}: coordinator and node mount it");
    }

    // The checker itself refuses what the binary would refuse.
    let bad = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["check-args", "node", "--grpc", "0.0.0.0:1", "--no-such-flag"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));

    // The image: multi-stage, non-root, the model fetcher the init container runs is in it.
    let dockerfile = std::fs::read_to_string(common::workspace().join("deploy/Dockerfile")).unwrap();
    assert_eq!(dockerfile.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "multi-stage");
    assert!(dockerfile.lines().any(|l| l.starts_with("USER 10001")), "non-root");
    assert!(dockerfile.contains("COPY scripts/fetch-models.sh /usr/local/bin/tessera-fetch-models"));
}
