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

/// A [`Table`] being built from entries read one at a time, in any order,
/// at most one per key.
#[derive(Debug)]
pub(super) struct Builder {
    /// Sized once, never grown: growing a large array holds it and its
    /// double (the old and the new allocation) at the same time.
    sorted: Vec<(Key, Entry)>,
    /// Entries beyond the size expected (connections made after it was
    /// counted).
    more: HashMap<Key, Entry>,
}

impl Builder {
    /// A builder that expects about `expected` entries.
    pub(super) fn new(expected: usize) -> Self {
        Self {
            sorted: Vec::with_capacity(expected),
            more: HashMap::new(),
        }
    }

    /// Adds the entry of `key`.
    pub(super) fn push(&mut self, key: Key, entry: Entry) {
        if self.sorted.len() < self.sorted.capacity() {
            self.sorted.push((key, entry));
        } else {
            self.more.insert(key, entry);
        }
    }

    /// The table: the entries expected, sorted in place, and any more in
    /// its hash table as if added since.
    pub(super) fn build(self) -> Table {
        let Self { mut sorted, more } = self;
        sorted.sort_unstable_by_key(|(key, _)| *key);
        Table {
            built: sorted,
            added: more,
        }
    }
}

impl Table {
    /// A table of `entries`, in any order, at most one per key.
    #[cfg(test)]
    pub(super) fn build(entries: Vec<(Key, Entry)>) -> Self {
        let mut builder = Builder::new(entries.len());
        for (key, entry) in entries {
            builder.push(key, entry);
        }
        builder.build()
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
    fn entries_beyond_the_size_expected_are_kept_without_growing_the_array() {
        use ConnectionState::{Active, Pending};
        let mut builder = Builder::new(2);
        let capacity = builder.sorted.capacity();
        builder.push(key(5, 1), entry(51, 1, Active));
        builder.push(key(1, 5), entry(15, 3, Active));
        builder.push(key(3, 3), entry(33, 1, Pending));
        builder.push(key(0, 0), entry(0, 7, Active));
        assert_eq!(builder.sorted.capacity(), capacity, "the array grew");
        let mut table = builder.build();
        assert_eq!(table.len(), 4);
        for (k, e) in [
            (key(5, 1), entry(51, 1, Active)),
            (key(1, 5), entry(15, 3, Active)),
            (key(3, 3), entry(33, 1, Pending)),
            (key(0, 0), entry(0, 7, Active)),
        ] {
            assert_eq!(table.get(&k), Some(e));
        }
        // Those beyond it take later changes like any other.
        table.upsert(key(3, 3), entry(33, 2, Active));
        assert_eq!(table.get(&key(3, 3)), Some(entry(33, 2, Active)));
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
