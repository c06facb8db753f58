use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use super::{EntryLock, SecretStore, SecretValue, StoreError, check_name};

/// An in-memory [`SecretStore`] for tests and ephemeral processes. Clones share the same map
/// and the same [`lock_entry`](SecretStore::lock_entry) lock (one for all names).
#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<BTreeMap<String, SecretValue>>>,
    entry_lock: Arc<tokio::sync::Mutex<()>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SecretValue>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.lock().len())
            .finish()
    }
}

impl SecretStore for MemoryStore {
    async fn get(&self, name: &str) -> Result<Option<SecretValue>, StoreError> {
        check_name(name)?;
        Ok(self.lock().get(name).cloned())
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<(), StoreError> {
        check_name(name)?;
        self.lock().insert(name.to_owned(), value);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        Ok(self.lock().remove(name).is_some())
    }

    async fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&SecretValue>,
        new: Option<SecretValue>,
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        let mut map = self.lock();
        if map.get(name) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => map.insert(name.to_owned(), value),
            None => map.remove(name),
        };
        Ok(true)
    }

    async fn lock_entry(&self, name: &str) -> Result<EntryLock, StoreError> {
        check_name(name)?;
        Ok(EntryLock::new(self.entry_lock.clone().lock_owned().await))
    }
}
