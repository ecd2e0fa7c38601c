//! Which changes a reader has seen: a set of change log positions, in the
//! form PostgreSQL gives a snapshot of its transactions.
//!
//! A change's position names the transaction that wrote it (see
//! `entity::change_log`). A [`Snapshot`] is what had committed when it was
//! taken: every position below `xmin`, those from `xmin` below `xmax` except
//! the ones still `running` then, and a few positions at or above `xmax` it
//! is known to include (`also`: a write's own, whose transaction may have
//! begun after its snapshot was taken). Everything else it has not seen.
//!
//! Change tokens name snapshots, so "after this token" means "not in this
//! set": a write's token covers the write and everything that had committed
//! before it, whatever transaction IDs are still open, and a reader that
//! resumes from it misses nothing that commits later, however low its
//! position. SQLite commits in position order, so its snapshots are plain
//! horizons (`xmin == xmax`, nothing running).

use std::cmp::Ordering;

/// A set of change log positions (see the module documentation). Built only
/// through its constructors, which keep it in a normal form: `running`
/// sorted, distinct and within `xmin..xmax`, with `xmin` its first element
/// (or `xmax` when it is empty) and never `xmax - 1`; `also` sorted,
/// distinct and above `xmax`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Snapshot {
    xmin: i64,
    xmax: i64,
    running: Vec<i64>,
    also: Vec<i64>,
}

impl Snapshot {
    /// Every position below `horizon`, and nothing else.
    pub fn before(horizon: i64) -> Self {
        Self {
            xmin: horizon,
            xmax: horizon,
            running: Vec::new(),
            also: Vec::new(),
        }
    }

    /// No position at all: a reader that has seen nothing.
    pub fn empty() -> Self {
        Self::before(i64::MIN)
    }

    /// The positions below `xmax` except `running`, and `also`: a snapshot as
    /// the database reports it (`running` in any order; an `xmin` it gives
    /// is implied, since nothing below the oldest running transaction is
    /// still running). Positions of `running` at or above `xmax`, and of
    /// `also` below it, change nothing and are dropped.
    pub fn new(xmax: i64, mut running: Vec<i64>, mut also: Vec<i64>) -> Self {
        running.retain(|&p| p < xmax);
        running.sort_unstable();
        running.dedup();
        also.retain(|&p| p >= xmax);
        also.sort_unstable();
        also.dedup();
        let mut xmax = xmax;
        // The same set with the shortest lists: running positions just
        // below `xmax`, and ones held besides from `xmax` on, move it.
        loop {
            if running.last() == Some(&(xmax.saturating_sub(1))) && xmax > i64::MIN {
                running.pop();
                xmax -= 1;
            } else if also.first() == Some(&xmax) && xmax < i64::MAX {
                also.remove(0);
                xmax += 1;
            } else {
                break;
            }
        }
        Self {
            xmin: running.first().copied().unwrap_or(xmax),
            xmax,
            running,
            also,
        }
    }

    /// The lowest position that is not in the set.
    pub fn xmin(&self) -> i64 {
        self.xmin
    }

    /// Every position from here on is not in the set, but those of [`also`](Self::also).
    pub fn xmax(&self) -> i64 {
        self.xmax
    }

    /// The positions below [`xmax`](Self::xmax) that are not in the set, in order.
    pub fn running(&self) -> &[i64] {
        &self.running
    }

    /// The positions at or above [`xmax`](Self::xmax) that are in the set, in order.
    pub fn also(&self) -> &[i64] {
        &self.also
    }

    /// The first position above every position in the set.
    pub fn upper(&self) -> i64 {
        self.also.last().map_or(self.xmax, |&last| last + 1)
    }

    /// Whether the set holds `position` (the snapshot saw that change).
    pub fn saw(&self, position: i64) -> bool {
        match position.cmp(&self.xmax) {
            Ordering::Less => {
                position < self.xmin || self.running.binary_search(&position).is_err()
            }
            _ => self.also.binary_search(&position).is_ok(),
        }
    }

    /// The set with `position` added (a write's own change).
    pub fn with(&self, position: i64) -> Self {
        if position < self.xmax {
            let running = self
                .running
                .iter()
                .copied()
                .filter(|&p| p != position)
                .collect();
            Self::new(self.xmax, running, self.also.clone())
        } else {
            let mut also = self.also.clone();
            also.push(position);
            Self::new(self.xmax, self.running.clone(), also)
        }
    }

    /// The positions of the set below `horizon`.
    pub fn below(&self, horizon: i64) -> Self {
        if horizon >= self.xmax {
            let also = self.also.iter().copied().filter(|&p| p < horizon);
            // Positions from `xmax` below `horizon` not in `also` are not in
            // the set: `xmax` can only rise if they become running ones,
            // which can be many; keep `xmax` instead.
            return Self::new(self.xmax, self.running.clone(), also.collect());
        }
        Self::new(
            horizon,
            self.running
                .iter()
                .copied()
                .filter(|&p| p < horizon)
                .collect(),
            Vec::new(),
        )
    }

    /// Every position in either set.
    pub fn union(&self, other: &Self) -> Self {
        let xmax = self.xmax.max(other.xmax);
        // A position below the new `xmax` is left out only if both left it
        // out; each one either lists it as running, or it lies at or above
        // its `xmax` (then the other lists it, since it is below theirs).
        let running = self
            .running
            .iter()
            .filter(|&&p| !other.saw(p))
            .chain(other.running.iter().filter(|&&p| !self.saw(p)))
            .copied()
            .collect();
        let also = self.also.iter().chain(&other.also).copied().collect();
        Self::new(xmax, running, also)
    }

    /// Whether every position of `other` is in this set too.
    pub fn covers(&self, other: &Self) -> bool {
        // Positions this set leaves out: its running ones, and everything
        // from its `xmax` on but its `also`. `other` must hold none of them.
        if self.running.iter().any(|&p| other.saw(p)) {
            return false;
        }
        if other.also.iter().any(|&p| !self.saw(p)) {
            return false;
        }
        if other.xmax <= self.xmax {
            return true;
        }
        // From our `xmax` up to theirs, every position must be one they left
        // out (running) or one we hold besides (`also`): there can be no
        // more of them than those two lists have entries.
        let Ok(gap) = usize::try_from(other.xmax.abs_diff(self.xmax)) else {
            return false;
        };
        gap <= other.running.len() + self.also.len()
            && (self.xmax..other.xmax).all(|p| !other.saw(p) || self.saw(p))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The set a snapshot stands for, over `0..LIMIT`.
    const LIMIT: i64 = 40;

    fn members(snapshot: &Snapshot) -> Vec<i64> {
        (0..LIMIT).filter(|&p| snapshot.saw(p)).collect()
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        (
            0..LIMIT,
            proptest::collection::vec(0..LIMIT, 0..6),
            proptest::collection::vec(0..LIMIT, 0..3),
        )
            .prop_map(|(xmax, running, also)| Snapshot::new(xmax, running, also))
    }

    #[test]
    fn a_snapshot_holds_what_had_committed_and_its_own_write() {
        let snapshot = Snapshot::new(10, vec![7, 4], vec![]);
        assert_eq!(snapshot.xmin(), 4);
        assert_eq!(members(&snapshot), [0, 1, 2, 3, 5, 6, 8, 9]);
        let written = snapshot.with(12);
        assert_eq!(members(&written), [0, 1, 2, 3, 5, 6, 8, 9, 12]);
        assert_eq!(written.upper(), 13);
        assert_eq!(members(&snapshot.with(7)), [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(snapshot.with(7).xmin(), 4);
        assert_eq!(snapshot.with(4).xmin(), 7);
        assert_eq!(members(&Snapshot::before(3)), [0, 1, 2]);
        assert_eq!(members(&Snapshot::empty()), Vec::<i64>::new());
    }

    proptest! {
        #[test]
        fn operations_match_the_sets_they_stand_for(
            a in snapshot(),
            b in snapshot(),
            horizon in 0..LIMIT,
            position in 0..LIMIT,
        ) {
            let (ma, mb) = (members(&a), members(&b));
            let union: Vec<i64> = (0..LIMIT).filter(|p| ma.contains(p) || mb.contains(p)).collect();
            prop_assert_eq!(members(&a.union(&b)), union);
            let below: Vec<i64> = ma.iter().copied().filter(|&p| p < horizon).collect();
            prop_assert_eq!(members(&a.below(horizon)), below);
            let mut with = ma.clone();
            if !with.contains(&position) {
                with.push(position);
                with.sort_unstable();
            }
            prop_assert_eq!(members(&a.with(position)), with);
            let subset = mb.iter().all(|p| ma.contains(p));
            prop_assert_eq!(a.covers(&b), subset, "{:?} covers {:?}", a, b);
            prop_assert!(a.union(&b).covers(&a) && a.union(&b).covers(&b));
        }
    }
}
