//! `tessera adapters load|unload|list`: what the model nodes serve beside
//! their base models.
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;
use tessera_proto::v1 as pb;

use crate::client::{connect, rpc};
use crate::ServerArg;

#[derive(Subcommand, Debug)]
pub(crate) enum AdaptersCmd {
    /// Serve a PEFT adapter folder as model NAME (the folder must be on the model nodes);
    /// without PATH, the adapter the catalog registered under NAME (every finished
    /// fine-tune is), copied to every model node serving its base.
    Load {
        /// What requests call it in `model`.
        name: String,
        /// The adapter folder (adapter_config.json, adapter_model.safetensors).
        path: Option<PathBuf>,
        /// The base model it runs on (default: the first).
        #[arg(long, default_value = "")]
        model: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Stop serving adapter NAME.
    Unload {
        /// The adapter's name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The adapters served, with their base, rank and targets.
    List {
        /// Print JSON: {"adapters":[{"name","model","path","rank","alpha","targets","resident","node"}]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub(crate) async fn adapters(cmd: AdaptersCmd) -> anyhow::Result<()> {
    match cmd {
        AdaptersCmd::Load { name, path, model, server } => {
            // The nodes read the folder: send it absolute when it is here too.
            let path = path.map(|p| std::fs::canonicalize(&p).unwrap_or(p).display().to_string());
            let mut c = connect(&server).await?;
            let req = pb::LoadAdapterRequest { name, path: path.unwrap_or_default(), model, files: None };
            let a = rpc(c.load_adapter(req).await)?;
            println!(
                "loaded adapter {} on {} (rank {}, alpha {}, {})",
                a.name,
                a.model,
                a.rank,
                a.alpha,
                a.targets.join(",")
            );
        }
        AdaptersCmd::Unload { name, server } => {
            let mut c = connect(&server).await?;
            let r = rpc(c.unload_adapter(pb::UnloadAdapterRequest { name: name.clone() }).await)?;
            println!("unloaded adapter {name} ({} node(s))", r.nodes);
        }
        AdaptersCmd::List { json, server } => {
            let mut c = connect(&server).await?;
            let list = rpc(c.list_adapters(pb::ListAdaptersRequest {}).await)?;
            if json {
                let items: Vec<_> = list
                    .adapters
                    .iter()
                    .map(|a| {
                        json!({"name": a.name, "model": a.model, "path": a.path, "rank": a.rank, "alpha": a.alpha,
                               "targets": a.targets, "resident": a.resident, "node": a.node})
                    })
                    .collect();
                println!("{}", json!({ "adapters": items }));
            } else if list.adapters.is_empty() {
                println!("no adapters");
            } else {
                for a in &list.adapters {
                    println!(
                        "{}\tbase {}\trank {}\talpha {}\t{}\t{}\t{}",
                        a.name,
                        a.model,
                        a.rank,
                        a.alpha,
                        a.targets.join(","),
                        if a.resident { "resident" } else { "on disk" },
                        a.path
                    );
                }
            }
        }
    }
    Ok(())
}
