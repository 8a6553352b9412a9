//! Ingest and search at the same time against one `tessera up`: every
//! acknowledged document is searchable afterwards and no search fails meanwhile.
mod common;

use common::Server;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_and_search() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &models);
    let url = server.url();
    let mut c = TesseraClient::connect(url.clone()).await.unwrap();
    c.create_collection(pb::CreateCollectionRequest {
        name: "load".into(),
        shards: 3,
        replication: 1,
        settings: None,
        ..Default::default()
    })
    .await
    .unwrap();

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = TesseraClient::connect(url).await.unwrap();
                let mut acked = Vec::new();
                for batch in 0..5 {
                    let documents: Vec<pb::DocumentInput> = (0..5)
                        .map(|i| {
                            let id = format!("w{w}-b{batch}-d{i}");
                            pb::DocumentInput {
                                text: format!("Document {id} talks about topic {} and 主题 {}", i % 3, w),
                                id,
                                ..Default::default()
                            }
                        })
                        .collect();
                    let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
                    let r = c
                        .ingest(pb::IngestRequest { collection: "load".into(), documents, ..Default::default() })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(r.documents, 5);
                    acked.extend(ids);
                }
                acked
            })
        })
        .collect();
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = TesseraClient::connect(url).await.unwrap();
                let mut ok = 0;
                for i in 0..15 {
                    let mode = [pb::SearchMode::Vector, pb::SearchMode::Bm25, pb::SearchMode::Hybrid][(i + r) % 3];
                    let req = pb::SearchRequest {
                        collection: "load".into(),
                        query: format!("topic {}", i % 3),
                        top_k: 5,
                        mode: mode as i32,
                        ..Default::default()
                    };
                    c.search(req).await.expect("search during ingest");
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), 15);
    }
    assert_eq!(acked.len(), 100);
    let list = c.list_collections(pb::ListCollectionsRequest {}).await.unwrap().into_inner();
    assert_eq!(list.collections[0].documents, 100);
    // Every acknowledged document is findable by its own words.
    for id in acked.iter().step_by(7) {
        let hits = c
            .search(pb::SearchRequest {
                collection: "load".into(),
                query: id.clone(),
                top_k: 3,
                mode: pb::SearchMode::Bm25 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert!(
            hits.iter().any(|h| &h.doc_id == id),
            "{id} not found: {:?}",
            hits.iter().map(|h| &h.doc_id).collect::<Vec<_>>()
        );
    }
}
