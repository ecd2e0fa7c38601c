//! Change tokens: opaque, tamper-evident names of places in the change log.
//!
//! A token names a [`Snapshot`]: the set of changes a reader has seen. A
//! write returns the snapshot of its own transaction with the write added:
//! every change that had committed before it, and the write. A watch message
//! names what the watch has delivered up to it, and a CheckAccess answer
//! what its index had applied. "After a token" is every change not in its
//! set, so a reader that resumes from any token misses nothing, whatever
//! transactions were still open when it was issued. Tokens are sealed like
//! page tokens (encrypted and authenticated with the same secret, in their
//! own scope), so one reveals nothing and cannot be forged, altered, or
//! passed off as a page token.

use super::{PageTokens, ServiceError};
use crate::domain::Snapshot;

/// The scope change tokens are signed for.
const SCOPE: &str = "ChangeToken";

/// Longest change token accepted, in characters; longer ones are refused
/// without decoding. Every token issued fits (see [`MAX_CURSOR`]).
pub const MAX_CHANGE_TOKEN_LEN: usize = 2048;

/// Longest encoded snapshot in a token, in bytes.
const MAX_CURSOR: usize = 1500;

/// The first byte of an encoded snapshot. Tokens of the first release held
/// a horizon alone, as 8 bytes (every position below it).
const SNAPSHOT_FORMAT: u8 = 2;

/// Issues and verifies change tokens.
#[derive(Debug, Clone)]
pub struct ChangeTokens {
    tokens: PageTokens,
}

impl ChangeTokens {
    /// Tokens signed with the key of `tokens`.
    pub fn new(tokens: PageTokens) -> Self {
        Self { tokens }
    }

    /// The token of `seen`: every change in it is before the token.
    pub fn issue(&self, seen: &Snapshot) -> String {
        self.tokens.issue(SCOPE, &encode(seen))
    }

    /// The snapshot `token` names, if we issued it; `field` names the
    /// request field it came in, for the error.
    pub fn verify(&self, token: &str, field: &'static str) -> Result<Snapshot, ServiceError> {
        let invalid = || ServiceError::InvalidChangeToken { field };
        let cursor = self
            .tokens
            .verify_up_to(SCOPE, token, MAX_CHANGE_TOKEN_LEN)
            .map_err(|_| invalid())?;
        decode(&cursor).ok_or_else(invalid)
    }
}

/// `seen` as bytes: the format, `xmax`, then the running positions and the
/// ones held besides, each list as its length and the distances between
/// neighbours (the first from `xmax`), in LEB128. A snapshot with more
/// running positions than fit in [`MAX_CURSOR`] keeps the lowest ones and
/// ends below the first it drops: it then holds fewer changes, so a reader
/// that resumes from it may see a few again, but misses none. (That takes
/// hundreds of transactions running at once in the database.)
fn encode(seen: &Snapshot) -> Vec<u8> {
    let mut running = seen.running();
    let mut xmax = seen.xmax();
    loop {
        let mut out = Vec::with_capacity(32 + 3 * running.len());
        out.push(SNAPSHOT_FORMAT);
        out.extend_from_slice(&xmax.to_be_bytes());
        put(&mut out, running.len() as u64);
        let mut previous = xmax;
        for (i, &position) in running.iter().enumerate() {
            let distance = if i == 0 {
                xmax.abs_diff(position)
            } else {
                position.abs_diff(previous)
            };
            put(&mut out, distance);
            previous = position;
        }
        put(&mut out, seen.also().len() as u64);
        let mut previous = xmax;
        for &position in seen.also() {
            put(&mut out, position.abs_diff(previous));
            previous = position;
        }
        if out.len() <= MAX_CURSOR || running.is_empty() {
            return out;
        }
        // Drop the upper half of the running positions: end below them.
        let keep = running.len() / 2;
        xmax = running[keep];
        running = &running[..keep];
    }
}

/// The snapshot in `cursor`, if it is one [`encode`] makes, or the horizon
/// of a token of the first release.
fn decode(cursor: &[u8]) -> Option<Snapshot> {
    if let Ok(horizon) = <[u8; 8]>::try_from(cursor) {
        return Some(Snapshot::before(i64::from_be_bytes(horizon)));
    }
    let (&format, rest) = cursor.split_first()?;
    if format != SNAPSHOT_FORMAT || rest.len() < 8 {
        return None;
    }
    let (xmax, mut rest) = rest.split_at(8);
    let xmax = i64::from_be_bytes(xmax.try_into().ok()?);
    let count = take(&mut rest)?;
    let mut running = Vec::new();
    let mut previous = xmax;
    for i in 0..count {
        let distance = take(&mut rest)?;
        let position = if i == 0 {
            previous.checked_sub_unsigned(distance)?
        } else {
            previous.checked_add_unsigned(distance)?
        };
        running.push(position);
        previous = position;
        if running.len() > MAX_CURSOR {
            return None;
        }
    }
    let count = take(&mut rest)?;
    let mut also = Vec::new();
    let mut previous = xmax;
    for _ in 0..count {
        previous = previous.checked_add_unsigned(take(&mut rest)?)?;
        also.push(previous);
        if also.len() > MAX_CURSOR {
            return None;
        }
    }
    rest.is_empty().then(|| Snapshot::new(xmax, running, also))
}

/// Appends `value` in LEB128.
fn put(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a LEB128 value off the front of `input`.
fn take(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> ChangeTokens {
        ChangeTokens::new(PageTokens::new([7; 32]))
    }

    #[test]
    fn tokens_name_their_snapshot() {
        let tokens = tokens();
        for seen in [
            Snapshot::empty(),
            Snapshot::before(-1),
            Snapshot::before(0),
            Snapshot::before(1 << 40),
            Snapshot::new(1000, vec![3, 500, 999 - 7], vec![]),
            Snapshot::new(1000, vec![400], vec![1005, 1_000_000]),
            Snapshot::new(i64::MAX, vec![i64::MIN + 1, 0], vec![]),
        ] {
            let token = tokens.issue(&seen);
            assert_eq!(tokens.verify(&token, "t").unwrap(), seen, "{token}");
        }
    }

    #[test]
    fn a_snapshot_too_large_for_a_token_is_cut_to_one_that_holds_less() {
        let running: Vec<i64> = (0..2_000).map(|i| 1_000_000 + i * 1_000_000).collect();
        let seen = Snapshot::new(3_000_000_000, running, vec![3_000_000_005]);
        let token = tokens().issue(&seen);
        assert!(token.len() <= MAX_CHANGE_TOKEN_LEN, "{}", token.len());
        let cut = tokens().verify(&token, "t").unwrap();
        assert!(seen.covers(&cut), "holds nothing the snapshot did not");
        assert!(cut.saw(3_000_000_005), "keeps a write's own position");
        assert!(
            cut.saw(1_500_000) && !cut.saw(1_000_000),
            "keeps the lowest"
        );
    }

    #[test]
    fn tokens_of_the_first_release_name_a_horizon() {
        let tokens = tokens();
        let old = tokens.tokens.issue(SCOPE, &42i64.to_be_bytes());
        assert_eq!(tokens.verify(&old, "t").unwrap(), Snapshot::before(42));
    }

    #[test]
    fn altered_foreign_and_malformed_tokens_are_refused() {
        let tokens = tokens();
        let token = tokens.issue(&Snapshot::before(42));
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let page_token = PageTokens::new([7; 32]).issue("ListConnections", &42i64.to_be_bytes());
        let other_key = ChangeTokens::new(PageTokens::new([8; 32])).issue(&Snapshot::before(42));
        let signed = |cursor: &[u8]| tokens.tokens.issue(SCOPE, cursor);
        let mut trailing = encode(&Snapshot::before(42));
        trailing.push(0);
        let mut overlong = vec![SNAPSHOT_FORMAT];
        overlong.extend_from_slice(&42i64.to_be_bytes());
        overlong.extend_from_slice(&[0xff; 11]);
        for bad in [
            String::new(),
            "not a token".to_owned(),
            String::from_utf8(tampered).unwrap(),
            page_token,
            other_key,
            "A".repeat(MAX_CHANGE_TOKEN_LEN + 1),
            signed(&[]),
            signed(&[SNAPSHOT_FORMAT, 0, 0]),
            signed(&[9; 9]),
            signed(&trailing),
            signed(&overlong),
        ] {
            assert!(
                matches!(
                    tokens.verify(&bad, "after_change_token"),
                    Err(ServiceError::InvalidChangeToken {
                        field: "after_change_token"
                    })
                ),
                "{bad:?}"
            );
        }
    }
}
