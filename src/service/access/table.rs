//! The access index's table: each connection's [`Entry`] by (source,
//! destination).

use std::collections::HashMap;

use uuid::Uuid;

use super::{Entry, is_newer};

/// A (source, destination) pair.
pub(super) type Key = (Uuid, Uuid);

/// The entries, in little more memory than they take: those read when the
/// table was built in one array sorted by key (56 bytes each), searched by
/// bisection; connections made since, in a hash table. A change to a
/// connection of the array is made in place. (A hash table of every entry
/// would keep up to half its slots empty: twice the memory at a million
/// connections.)
#[derive(Debug, Default)]
pub(super) struct Table {
    built: Vec<(Key, Entry)>,
    added: HashMap<Key, Entry>,
}

impl Table {
    /// A table of `entries`, in any order, at most one per key.
    pub(super) fn build(mut entries: Vec<(Key, Entry)>) -> Self {
        entries.sort_unstable_by_key(|(key, _)| *key);
        entries.shrink_to_fit();
        Self {
            built: entries,
            added: HashMap::new(),
        }
    }

    /// How many connections it holds.
    pub(super) fn len(&self) -> usize {
        self.built.len() + self.added.len()
    }

    fn position(&self, key: &Key) -> Result<usize, usize> {
        self.built.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The entry of `key`, if any.
    pub(super) fn get(&self, key: &Key) -> Option<Entry> {
        match self.position(key) {
            Ok(i) => Some(self.built[i].1),
            Err(_) => self.added.get(key).copied(),
        }
    }

    /// Keeps the newer of `entry` and the table's entry of `key`.
    pub(super) fn upsert(&mut self, key: Key, entry: Entry) {
        let current = match self.position(&key) {
            Ok(i) => &mut self.built[i].1,
            Err(_) => self.added.entry(key).or_insert(entry),
        };
        if is_newer(entry.version, current.version) {
            *current = entry;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::ConnectionState;

    use super::*;

    fn key(source: u8, destination: u8) -> Key {
        (
            Uuid::from_bytes([source; 16]),
            Uuid::from_bytes([destination; 16]),
        )
    }

    fn entry(id: u8, version: u32, state: ConnectionState) -> Entry {
        Entry {
            id: Uuid::from_bytes([id; 16]),
            version,
            state,
            data_types: 1,
        }
    }

    #[test]
    fn entries_built_and_added_are_found_and_only_newer_versions_replace_them() {
        use ConnectionState::{Active, Inactive, Pending};
        let mut table = Table::build(vec![
            (key(3, 1), entry(31, 2, Active)),
            (key(1, 2), entry(12, 1, Pending)),
            (key(2, 9), entry(29, 5, Inactive)),
        ]);
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(&key(1, 2)), Some(entry(12, 1, Pending)));
        assert_eq!(table.get(&key(2, 9)), Some(entry(29, 5, Inactive)));
        assert_eq!(table.get(&key(3, 1)), Some(entry(31, 2, Active)));
        assert_eq!(table.get(&key(2, 1)), None, "the reverse pair is another");

        // A built entry: a newer version replaces it in place, an older one
        // (a batch read before the table) does not.
        table.upsert(key(1, 2), entry(12, 2, Active));
        table.upsert(key(1, 2), entry(12, 1, Pending));
        assert_eq!(table.get(&key(1, 2)), Some(entry(12, 2, Active)));
        assert_eq!(table.len(), 3);

        // A connection made since: added, then changed.
        table.upsert(key(9, 9), entry(99, 1, Pending));
        table.upsert(key(9, 9), entry(99, 2, Active));
        table.upsert(key(9, 9), entry(99, 1, Pending));
        assert_eq!(table.get(&key(9, 9)), Some(entry(99, 2, Active)));
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn an_empty_table_finds_nothing_and_takes_new_connections() {
        let mut table = Table::default();
        assert_eq!(table.get(&key(1, 2)), None);
        table.upsert(key(1, 2), entry(12, 1, ConnectionState::Pending));
        assert_eq!(
            table.get(&key(1, 2)),
            Some(entry(12, 1, ConnectionState::Pending))
        );
    }
}
