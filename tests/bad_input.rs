//! Bad input over real gRPC: clear status codes, no panic, nothing stored lost.
mod common;

use common::Server;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;
use tonic::Code;

fn search(collection: &str, query: &str, top_k: u32) -> pb::SearchRequest {
    pb::SearchRequest { collection: collection.into(), query: query.into(), top_k, ..Default::default() }
}

fn doc(id: &str, text: &str) -> pb::DocumentInput {
    pb::DocumentInput { id: id.into(), text: text.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_lose_nothing() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &models);
    let mut c = TesseraClient::connect(server.url()).await.unwrap().max_encoding_message_size(200 * 1024 * 1024);

    let stored = c
        .ingest(pb::IngestRequest {
            collection: "kb".into(),
            documents: vec![doc("a", "The cp command copies files."), doc("b", "向量数据库用于语义检索。")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stored.documents, stored.chunks), (2, 2));

    let code = |r: Result<tonic::Response<pb::SearchResponse>, tonic::Status>| r.unwrap_err();
    let e = code(c.search(search("kb", "  ", 5)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("empty"), "{}", e.message());
    assert_eq!(code(c.search(search("kb", "cp", 0)).await).code(), Code::InvalidArgument);
    let e = code(c.search(search("kb", "cp", 1_000_000)).await);
    assert!(e.code() == Code::InvalidArgument && e.message().contains("top_k"), "{e:?}");
    let e = code(c.search(search("nope", "cp", 5)).await);
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));
    assert_eq!(code(c.search(search("../etc", "cp", 5)).await).code(), Code::InvalidArgument);
    assert_eq!(code(c.search(search("kb", &"x".repeat(100_000), 5)).await).code(), Code::InvalidArgument);
    let bad_mode = pb::SearchRequest { mode: 42, ..search("kb", "cp", 5) };
    assert_eq!(code(c.search(bad_mode).await).code(), Code::InvalidArgument);

    // An oversized request is refused by the transport with a clear code.
    let huge = pb::IngestRequest {
        collection: "kb".into(),
        files: vec![pb::FileInput {
            name: "big.txt".into(),
            doc_id: "big".into(),
            content: vec![b'a'; 70 * 1024 * 1024],
            metadata_json: String::new(),
        }],
        ..Default::default()
    };
    let e = c.ingest(huge).await.unwrap_err();
    assert!(matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange), "{e:?}");

    // A malformed .jsonl line rejects that file with the line number; other files are stored.
    let resp = c
        .ingest(pb::IngestRequest {
            collection: "kb".into(),
            files: vec![
                pb::FileInput {
                    name: "bad.jsonl".into(),
                    doc_id: "bad.jsonl".into(),
                    content: b"{\"id\":\"x\",\"text\":\"ok\"}\n{oops\n".to_vec(),
                    metadata_json: String::new(),
                },
                pb::FileInput {
                    name: "bytes.txt".into(),
                    doc_id: "bytes.txt".into(),
                    content: b"\xff\xfe".to_vec(),
                    metadata_json: String::new(),
                },
                pb::FileInput {
                    name: "good.md".into(),
                    doc_id: "good.md".into(),
                    content: "# 好\n混合 text".as_bytes().to_vec(),
                    metadata_json: String::new(),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.documents, 1);
    let messages: Vec<String> = resp.errors.iter().map(|e| format!("{}: {}", e.source, e.message)).collect();
    assert!(messages.iter().any(|m| m.starts_with("bad.jsonl") && m.contains("line 2")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("bytes.txt") && m.contains("UTF-8")), "{messages:?}");

    // Bad ingest settings and metadata.
    let e = c
        .ingest(pb::IngestRequest {
            collection: "kb".into(),
            documents: vec![doc("c", "x")],
            chunk_size: 10,
            chunk_overlap: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.ingest(pb::IngestRequest { collection: "kb".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The streaming form reports the same refusal as the stream's error, with no result message.
    let mut stream = c
        .ingest_stream(pb::IngestRequest { collection: "kb".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nothing to ingest"), "{}", e.message());
    let e = c
        .create_collection(pb::CreateCollectionRequest {
            name: "kb".into(),
            shards: 2,
            replication: 1,
            settings: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .create_collection(pb::CreateCollectionRequest {
            name: "r".into(),
            shards: 2,
            replication: 3,
            settings: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c.delete(pb::DeleteRequest { collection: "kb".into(), doc_ids: vec![] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.embed(pb::EmbedRequest { texts: vec![] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.embed(pb::EmbedRequest { texts: vec!["词".repeat(800_000), "x".repeat(2_000_000)] }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("at most 4194304 bytes"), "{}", e.message());

    // Caps on work per request (the limits table in ARCHITECTURE.md).
    let e = code(c.search(pb::SearchRequest { mmr: true, ..search("kb", "copy", 1000) }).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("with mmr, top_k must be at most 100"), "{}", e.message());
    let values: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    let filter = pb::Filter { must: vec![pb::FilterCondition { key: "n".into(), values_json: values }] };
    let e = code(c.search(pb::SearchRequest { filter: Some(filter), ..search("kb", "copy", 5) }).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("5000 values"), "{}", e.message());
    let e = c
        .ingest(pb::IngestRequest {
            collection: "kb".into(),
            documents: vec![doc("tiny", "split me into single characters")],
            chunk_size: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("chunk_size must be at least 16"), "{}", e.message());
    let stops: Vec<String> = (0..1000).map(|i| format!("stop{i}")).collect();
    let e = c
        .generate(pb::GenerateRequest { prompt: "hello".into(), max_tokens: 4, stop: stops, ..Default::default() })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 16 stop sequences"), "{}", e.message());

    // Nothing stored was lost, and the server is still healthy.
    let list = c.list_collections(pb::ListCollectionsRequest {}).await.unwrap().into_inner();
    let kb = list.collections.iter().find(|c| c.name == "kb").unwrap();
    assert_eq!((kb.documents, kb.chunks), (3, 3));
    let hits = c.search(search("kb", "语义检索", 1)).await.unwrap().into_inner().hits;
    assert_eq!(hits[0].doc_id, "b");
    assert_eq!(common::http_get(&server.http, "/healthz").map(|r| r.0), Some(200));
    let emb = c.embed(pb::EmbedRequest { texts: vec!["hello".into(), "你好".into()] }).await.unwrap().into_inner();
    assert_eq!((emb.vectors.len(), emb.dimension), (2, 384));
}
