//! The standard gRPC services next to Tessera's own: health and reflection.
mod common;

use common::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &models);

    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let r = health.check(HealthCheckRequest { service: "tessera.v1.Tessera".into() }).await.unwrap().into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
    // The internal Node service is not on the public listener.
    let node = health.check(HealthCheckRequest { service: "tessera.v1.Node".into() }).await.unwrap_err();
    assert_eq!(node.code(), tonic::Code::NotFound);
    let mut internal = tessera_proto::v1::node_client::NodeClient::new(channel.clone());
    let drop = internal
        .drop_shard(tessera_proto::v1::DropShardRequest { shard: None })
        .await
        .expect_err("DropShard must not be served publicly");
    assert_eq!(drop.code(), tonic::Code::Unimplemented, "{drop:?}");
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        reflection.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["tessera.v1.Tessera", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n == "tessera.v1.Node"), "the internal service is advertised: {names:?}");
}

#[test]
fn a_public_address_needs_the_insecure_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["up", "--grpc", "0.0.0.0:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address") && stderr.contains("--insecure-listen-any"),
        "{stderr}"
    );
}
