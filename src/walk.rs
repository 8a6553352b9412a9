//! Turning the paths given to `tessera ingest` into (document id, file) pairs.
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

/// A file to send, with its document id.
pub struct FileToSend {
    /// Path on this machine.
    pub path: PathBuf,
    /// Document id: the path relative to the folder given, or the file name.
    pub doc_id: String,
}

/// Expands files and folders. Hidden entries inside folders are skipped; files
/// whose type has no loader are returned in the second list.
pub fn expand(paths: &[PathBuf]) -> Result<(Vec<FileToSend>, Vec<PathBuf>), String> {
    let mut files = Vec::new();
    let mut unsupported = Vec::new();
    for root in paths {
        let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
        if meta.is_file() {
            let name = root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            files.push(FileToSend { path: root.clone(), doc_id: name });
            continue;
        }
        for entry in
            WalkDir::new(root).sort_by_file_name().into_iter().filter_entry(|e| e.depth() == 0 || !hidden(e.path()))
        {
            let entry = entry.map_err(|e| format!("{}: {e}", root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            let doc_id = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            if tessera_node::load::is_supported(&doc_id) {
                files.push(FileToSend { path: entry.path().to_path_buf(), doc_id });
            } else {
                unsupported.push(entry.path().to_path_buf());
            }
        }
    }
    Ok((files, unsupported))
}

fn hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}
