//! The newest state-machine snapshot, stored durably in its own column family.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::engine::{synced, Engine, EngineError, CF_SNAPSHOT};

const KEY_CURRENT: &[u8] = b"current";
const KEY_CURRENT_DATA: &[u8] = b"current_data";

/// A snapshot as stored: the metadata (opaque JSON to this crate) and the data bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot<M> {
    pub meta: M,
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// Reads and replaces the current snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    engine: Engine,
}

impl SnapshotStore {
    pub fn new(engine: Engine) -> Self {
        SnapshotStore { engine }
    }

    /// Makes `snapshot` the current one; durable when this returns.
    pub fn save<M: Serialize>(&self, meta: &M, data: &[u8]) -> Result<(), EngineError> {
        let cf = self.engine.cf(CF_SNAPSHOT);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(cf, KEY_CURRENT, encode(meta));
        batch.put_cf(cf, KEY_CURRENT_DATA, data);
        self.engine.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The current snapshot, if one was ever saved.
    pub fn load<M: serde::de::DeserializeOwned>(&self) -> Result<Option<StoredSnapshot<M>>, EngineError> {
        let cf = self.engine.cf(CF_SNAPSHOT);
        let Some(meta) = self.engine.db.get_cf(cf, KEY_CURRENT)? else {
            return Ok(None);
        };
        let meta = decode(&meta).map_err(|e| EngineError::Corrupt(format!("snapshot metadata: {e}")))?;
        let data = self.engine.db.get_cf(cf, KEY_CURRENT_DATA)?.unwrap_or_default();
        Ok(Some(StoredSnapshot { meta, data }))
    }
}
