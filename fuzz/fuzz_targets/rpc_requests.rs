//! Request decoding of every public RPC: the first byte picks the message, the
//! rest is its protobuf encoding; decoded messages go through the wire -> type
//! conversions the servers apply. Errors are fine; panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tessera_proto::v1 as pb;

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let [which, bytes @ ..] = data else { return };
    match which % 13 {
        0 => {
            if let Some(r) = decode::<pb::CreateCollectionRequest>(bytes) {
                let _ = tessera_proto::convert::search_settings(r.settings).validate();
            }
        }
        1 => drop(decode::<pb::ListCollectionsRequest>(bytes)),
        2 => drop(decode::<pb::DropCollectionRequest>(bytes)),
        3 => {
            if let Some(r) = decode::<pb::IngestRequest>(bytes) {
                for d in r.documents {
                    let _ = serde_json::from_str::<serde_json::Value>(&d.metadata_json);
                }
            }
        }
        4 => drop(decode::<pb::DeleteRequest>(bytes)),
        5 => {
            if let Some(r) = decode::<pb::SearchRequest>(bytes) {
                let _ = tessera_proto::convert::search_mode(r.mode);
                if let Some(f) = &r.filter {
                    let _ = tessera_types::limits::check_filter(
                        f.must.iter().map(|c| (c.key.as_str(), c.values_json.as_slice())),
                    );
                }
            }
        }
        6 => drop(decode::<pb::EmbedRequest>(bytes)),
        7 => {
            if let Some(r) = decode::<pb::GenerateRequest>(bytes) {
                for m in r.messages {
                    let _ = tessera_types::ChatMessage::try_from(m);
                }
            }
        }
        8 => {
            if let Some(r) = decode::<pb::AskRequest>(bytes) {
                let _ = tessera_types::validate_session_id(&r.session);
            }
        }
        9 => drop(decode::<pb::ListSessionsRequest>(bytes)),
        10 => {
            if let Some(r) = decode::<pb::GetSessionRequest>(bytes) {
                let _ = tessera_types::validate_session_id(&r.session);
            }
        }
        11 => drop(decode::<pb::ClearSessionRequest>(bytes)),
        _ => drop(decode::<pb::ClusterStatusRequest>(bytes)),
    }
});
