//! Adapter records: which trained adapters exist, on which base, and which
//! nodes hold a copy of their files, so any model node serving the base can
//! be given one later (`LoadAdapter` without a path). In `tessera up` a sled
//! tree beside the collections; in cluster mode etcd, `/tessera/adapters/NAME`.
use serde::{Deserialize, Serialize};

use super::{Backend, Catalog, CatalogError};

const ETCD_ADAPTERS: &str = "/tessera/adapters/";

/// One registered adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterRecord {
    /// What requests call it in `model`.
    pub name: String,
    /// The base model it runs on (the name the model nodes report).
    pub model: String,
    /// Nodes with a copy of its files, the node that trained it first.
    pub holders: Vec<String>,
}

fn decode(name: &str, bytes: &[u8]) -> Result<AdapterRecord, CatalogError> {
    serde_json::from_slice(bytes).map_err(|_| CatalogError::Corrupt(format!("adapter {name}")))
}

impl Catalog {
    /// Stores (or replaces) the record of `record.name`.
    pub async fn put_adapter(&self, record: &AdapterRecord) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(record).map_err(|_| CatalogError::Corrupt(record.name.clone()))?;
        match (&self.backend, &self.adapter_tree) {
            (Backend::Etcd(client), _) => {
                client.as_ref().clone().put(format!("{ETCD_ADAPTERS}{}", record.name), json, None).await?;
            }
            (Backend::Sled(_), Some(tree)) => {
                tree.insert(record.name.as_bytes(), json)?;
                tree.flush_async().await?;
            }
            (Backend::Sled(_), None) => {}
        }
        Ok(())
    }

    /// The record of adapter `name`, if one was registered.
    pub async fn adapter(&self, name: &str) -> Result<Option<AdapterRecord>, CatalogError> {
        match (&self.backend, &self.adapter_tree) {
            (Backend::Etcd(client), _) => {
                let resp = client.as_ref().clone().get(format!("{ETCD_ADAPTERS}{name}"), None).await?;
                resp.kvs().first().map(|kv| decode(name, kv.value())).transpose()
            }
            (Backend::Sled(_), Some(tree)) => tree.get(name.as_bytes())?.map(|v| decode(name, &v)).transpose(),
            (Backend::Sled(_), None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_reopen_and_a_put_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let record = AdapterRecord { name: "support".into(), model: "SmolLM2".into(), holders: vec!["n1".into()] };
        {
            let c = Catalog::open(dir.path()).unwrap();
            assert_eq!(c.adapter("support").await.unwrap(), None);
            c.put_adapter(&record).await.unwrap();
            let wider = AdapterRecord { holders: vec!["n1".into(), "n2".into()], ..record.clone() };
            c.put_adapter(&wider).await.unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        let back = c.adapter("support").await.unwrap().unwrap();
        assert_eq!(back.holders, vec!["n1".to_string(), "n2".to_string()]);
        assert_eq!(back.model, "SmolLM2");
        assert!(c.list().unwrap().is_empty(), "adapter records are not collections");
    }
}
