//! The tests' one source of randomness: seeded from `TEST_SEED` when it is
//! set, at random otherwise. A test that fails prints the seed, and
//! `TEST_SEED=<n> cargo test --test api <name>` makes the same choices again.

use rand::{RngExt, SeedableRng, rngs::StdRng};

/// A seeded generator. Dropped while its thread panics (a failing test), the
/// one made by [`TestRng::new`] prints the seed that reproduces the run.
pub struct TestRng {
    seed: u64,
    rng: StdRng,
    /// Whether a failure prints the seed (the generators of a [`fork`] do
    /// not: the test's own generator does).
    ///
    /// [`fork`]: TestRng::fork
    report: bool,
}

impl TestRng {
    /// A generator seeded from `TEST_SEED`, or at random when it is not set.
    pub fn new() -> Self {
        let seed = match std::env::var("TEST_SEED") {
            Ok(value) => value
                .trim()
                .parse()
                .unwrap_or_else(|err| panic!("TEST_SEED={value:?} is not a u64: {err}")),
            Err(_) => rand::random(),
        };
        Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            report: true,
        }
    }

    /// The generator of stream `stream` of this run (one per task, say): the
    /// same seed and stream give the same numbers, whatever else draws.
    pub fn fork(&self, stream: u64) -> Self {
        Self {
            seed: self.seed,
            rng: StdRng::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            report: false,
        }
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.rng.fill(&mut bytes[..]);
        bytes
    }
}

impl Drop for TestRng {
    fn drop(&mut self) {
        if self.report && std::thread::panicking() {
            eprintln!("TEST_SEED={} reproduces this run", self.seed);
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_numbers_and_forks_differ() {
    let rng = TestRng::new();
    let (mut a, mut b) = (rng.fork(1), rng.fork(1));
    assert_eq!(a.bytes(64), b.bytes(64));
    assert_eq!(a.below(1000), b.below(1000));
    assert_ne!(rng.fork(1).bytes(64), rng.fork(2).bytes(64));
    assert_eq!(rng.fork(3).seed(), rng.seed());
}
