//! An adapter folder as bytes: what travels when the coordinator copies an
//! adapter trained on one node to the other nodes serving its base.
//!
//! A copy lands under the receiving node's own data directory
//! (`<data_dir>/adapters/<name>/`), written beside and renamed into place,
//! so a crash mid-copy never leaves a half-written folder that a later load
//! would read, and a node never writes where a client's path points.
use std::path::{Path, PathBuf};

use super::peft::{CONFIG_FILE, WEIGHTS_FILE};
use crate::model::ModelError;

/// An adapter folder's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterFiles {
    /// `adapter_config.json`.
    pub config_json: Vec<u8>,
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io(format!("{}: {e}", path.display()))
}

/// Reads the two files of the PEFT folder `dir`.
pub fn read_folder(dir: &Path) -> Result<AdapterFiles, ModelError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| io(&path, e))
    };
    Ok(AdapterFiles { config_json: read(CONFIG_FILE)?, weights: read(WEIGHTS_FILE)? })
}

/// Where a node keeps the copy of adapter `name` under `data_dir`; None for
/// a name that is not one plain path component (empty, `.`, `..`, a leading
/// dot, a separator), whatever the caller validated before.
pub fn copy_dir(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    plain.then(|| data_dir.join("adapters").join(name))
}

/// Writes `files` as the folder of adapter `name` under `data_dir`, replacing
/// an earlier copy whole once `check` accepts the new one (so a bad copy
/// never replaces a good one); returns the folder.
pub fn write_copy(
    data_dir: &Path,
    name: &str,
    files: &AdapterFiles,
    check: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<PathBuf, ModelError> {
    if files.config_json.is_empty() || files.weights.is_empty() {
        return Err(ModelError::Format("an adapter copy needs both adapter_config.json and its weights".into()));
    }
    let dir = copy_dir(data_dir, name).ok_or_else(|| ModelError::Input(format!("adapter name '{name}'")))?;
    let parent = dir.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    // Unique per copy: two copies of one name at once must not mix their files.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.incoming.{}.{nth}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let written = (|| {
        for (file, bytes) in [(CONFIG_FILE, &files.config_json), (WEIGHTS_FILE, &files.weights)] {
            let path = tmp.join(file);
            std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        }
        check(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old.{}.{nth}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_round_trips_and_replaces_the_old_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let files = AdapterFiles { config_json: b"{\"r\":8}".to_vec(), weights: vec![1, 2, 3] };
        let ok = |_: &Path| Ok(());
        let dir = write_copy(tmp.path(), "support", &files, ok).unwrap();
        assert_eq!(dir, tmp.path().join("adapters/support"));
        assert_eq!(read_folder(&dir).unwrap(), files);
        let newer = AdapterFiles { config_json: b"{\"r\":4}".to_vec(), weights: vec![9; 10] };
        write_copy(tmp.path(), "support", &newer, ok).unwrap();
        assert_eq!(read_folder(&dir).unwrap(), newer);
        // A copy its check refuses leaves the good one in place.
        let bad = AdapterFiles { config_json: b"{}".to_vec(), weights: vec![0] };
        let refuse = |_: &Path| Err(ModelError::Format("not an adapter".into()));
        assert!(write_copy(tmp.path(), "support", &bad, refuse).is_err());
        assert_eq!(read_folder(&dir).unwrap(), newer);
        for name in ["", ".", "..", ".hidden", "a/b"] {
            assert!(write_copy(tmp.path(), name, &files, ok).is_err(), "{name:?}");
        }
        let names: Vec<_> =
            std::fs::read_dir(tmp.path().join("adapters")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("support")], "no leftovers beside the copy");
        let empty = AdapterFiles { config_json: Vec::new(), weights: vec![1] };
        assert!(write_copy(tmp.path(), "x", &empty, ok).is_err());
        assert!(read_folder(&tmp.path().join("missing")).is_err());
    }
}
