//! The adapters one model group knows, by name: where each lives on disk and
//! whether it is resident (loaded on every rank). At most `max_resident` are
//! resident; a request for another loads it then, unloading the least
//! recently used (which stays known and loads again when asked for).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{peft, LoraAdapter, Target};
use crate::model::decoder::DecoderConfig;
use crate::model::engine::ModelGroup;
use crate::model::ModelError;

/// Adapters resident at once unless told otherwise (`--max-adapters`).
pub const MAX_RESIDENT_ADAPTERS: usize = 8;

/// What `ListAdapters` reports of one adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The name requests use in `model`.
    pub name: String,
    /// Its PEFT directory.
    pub dir: PathBuf,
    /// Loaded on the ranks now.
    pub resident: bool,
    /// LoRA rank.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// What it wraps.
    pub targets: Vec<Target>,
}

struct Entry {
    info: AdapterInfo,
    /// The group's id while resident.
    id: Option<u32>,
    last_used: u64,
}

/// See the module documentation.
pub struct AdapterRegistry {
    max_resident: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    clock: u64,
}

impl AdapterRegistry {
    /// An empty registry keeping at most `max_resident` (≥ 1) loaded.
    pub fn new(max_resident: usize) -> Self {
        Self { max_resident: max_resident.max(1), state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the adapter in `dir`, checks it against `cfg` and loads it on
    /// `group`'s ranks as `name` (replacing an adapter of that name).
    pub fn register(
        &self,
        name: &str,
        dir: &Path,
        cfg: &DecoderConfig,
        group: &ModelGroup,
    ) -> Result<AdapterInfo, ModelError> {
        let adapter = peft::load(dir, cfg)?;
        let info = AdapterInfo {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            resident: true,
            rank: adapter.rank,
            alpha: adapter.alpha,
            targets: adapter.targets(),
        };
        let mut st = self.lock();
        if let Some(old) = st.entries.remove(name) {
            if let Some(id) = old.id {
                group.unload_adapter(id);
            }
        }
        let id = self.make_room_and_load(&mut st, adapter, group)?;
        st.clock += 1;
        let last_used = st.clock;
        st.entries.insert(name.to_string(), Entry { info: info.clone(), id: Some(id), last_used });
        Ok(info)
    }

    fn make_room_and_load(&self, st: &mut State, adapter: LoraAdapter, group: &ModelGroup) -> Result<u32, ModelError> {
        while st.entries.values().filter(|e| e.id.is_some()).count() >= self.max_resident {
            let Some(oldest) = st.entries.values_mut().filter(|e| e.id.is_some()).min_by_key(|e| e.last_used) else {
                break;
            };
            if let Some(id) = oldest.id.take() {
                group.unload_adapter(id);
            }
            oldest.info.resident = false;
        }
        group.load_adapter(adapter)
    }

    /// Forgets `name` (unloading it once its running requests end); false
    /// when no adapter has that name.
    pub fn unregister(&self, name: &str, group: &ModelGroup) -> bool {
        let Some(e) = self.lock().entries.remove(name) else { return false };
        if let Some(id) = e.id {
            group.unload_adapter(id);
        }
        true
    }

    /// Whether an adapter is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().entries.contains_key(name)
    }

    /// The group's id of adapter `name`, loading it from its directory if it
    /// is not resident; None when no adapter has that name.
    pub fn resident_id(&self, name: &str, cfg: &DecoderConfig, group: &ModelGroup) -> Result<Option<u32>, ModelError> {
        let mut st = self.lock();
        st.clock += 1;
        let now = st.clock;
        let Some(e) = st.entries.get_mut(name) else { return Ok(None) };
        e.last_used = now;
        if let Some(id) = e.id {
            return Ok(Some(id));
        }
        let dir = e.info.dir.clone();
        let adapter = peft::load(&dir, cfg)?;
        let id = self.make_room_and_load(&mut st, adapter, group)?;
        if let Some(e) = st.entries.get_mut(name) {
            e.id = Some(id);
            e.info.resident = true;
        }
        Ok(Some(id))
    }

    /// Every known adapter, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.lock().entries.values().map(|e| e.info.clone()).collect()
    }
}
