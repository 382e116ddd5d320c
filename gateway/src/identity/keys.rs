//! The request path's view of the API keys: the active keys by hash,
//! reloaded from the state store when its generation changes, so a key
//! revoked from the CLI or the admin API stops working within one poll —
//! and one revoked on another replica (published through `[cluster]
//! redis`) as soon as the news arrives.
//! Must never: hold or log a secret (only hashes), or write the store.

use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::state::{hash_key, ApiKey, StateStore};
use crate::GatewayError;

/// The request path's view of the active keys.
pub struct KeyCache {
    by_hash: ArcSwap<HashMap<[u8; 32], ApiKey>>,
    generation: AtomicI64,
    /// Key ids revoked on other replicas.
    elsewhere: ArcSwap<HashSet<String>>,
}

impl KeyCache {
    pub fn load(store: &StateStore) -> Result<Self, GatewayError> {
        let cache = Self {
            by_hash: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicI64::new(-1),
            elsewhere: ArcSwap::from_pointee(HashSet::new()),
        };
        cache.refresh(store)?;
        Ok(cache)
    }

    /// Reloads the keys if the store changed. Returns true if it reloaded.
    pub fn refresh(&self, store: &StateStore) -> Result<bool, GatewayError> {
        let generation = store.generation()?;
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(false);
        }
        let active: HashMap<[u8; 32], ApiKey> = store
            .keys()?
            .into_iter()
            .filter(|(_, k)| k.revoked_us.is_none())
            .collect();
        self.by_hash.store(Arc::new(active));
        self.generation.store(generation, Ordering::Release);
        Ok(true)
    }

    /// Every active key, ordered by id.
    pub fn active(&self) -> Vec<ApiKey> {
        let mut keys: Vec<ApiKey> = self.by_hash.load().values().cloned().collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// The active key for a presented secret.
    pub fn lookup(&self, secret: &str) -> Option<ApiKey> {
        self.by_hash
            .load()
            .get(&hash_key(secret))
            .filter(|k| !self.elsewhere.load().contains(&k.id))
            .cloned()
    }

    /// A key id another replica revoked: refused here from now on.
    pub fn revoke_elsewhere(&self, id: &str) {
        if !self.elsewhere.load().contains(id) {
            self.elsewhere.rcu(|set| {
                let mut set = HashSet::clone(set);
                set.insert(id.to_string());
                set
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_policy::PrincipalKind;

    #[test]
    fn create_lookup_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (key, secret) = store
            .create_key(PrincipalKind::Agent, "a1", "t1", &["agent".into()], &[])
            .unwrap();
        let (_, human) = store
            .create_key(PrincipalKind::Human, "alice", "t1", &["admin".into()], &[])
            .unwrap();
        assert!(secret.starts_with("lat_"));
        let cache = KeyCache::load(&store).unwrap();
        assert_eq!(cache.lookup(&secret).unwrap().agent, "a1");
        assert_eq!(cache.lookup(&secret).unwrap().kind, PrincipalKind::Agent);
        assert_eq!(cache.lookup(&human).unwrap().kind, PrincipalKind::Human);
        assert!(cache.lookup("lat_nope").is_none());
        // The secret itself is not stored.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        store.revoke_key(&key.id).unwrap();
        assert!(cache.refresh(&store).unwrap());
        assert!(cache.lookup(&secret).is_none());
        assert!(store.revoke_key(&key.id).is_err());
    }
}
