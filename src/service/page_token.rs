//! Opaque, tamper-evident page tokens that reveal nothing of their cursor.
//!
//! A token is `base64url(2 || siv || ciphertext)`: the cursor encrypted with
//! AES-SIV (RFC 5297, AES-SIV-CMAC-256), whose 16-byte synthetic IV is also
//! the tag, with the version and a *scope* as associated data: the method,
//! the caller and the filters the token was issued for. A token that was
//! altered, or is presented by another caller or with other filters, fails
//! verification, and a token shows nothing of its cursor but its length (a
//! change token's cursor is a position in the change log: in clear, tokens
//! taken a minute apart would tell how fast the whole cluster writes). SIV
//! needs no nonce: the same cursor in the same scope gives the same token,
//! which tells a holder only that two tokens it holds name the same place.
//!
//! The encryption key is derived from the key shared by all replicas through
//! the database (HMAC-SHA256 of it over a fixed label), so it is not the key
//! that signed version 1 tokens: `base64url(1 || cursor || tag)`, the cursor
//! in clear and `tag` a truncated HMAC-SHA256 over the version, the scope and
//! the cursor. Those are no longer issued but still accepted: clients keep
//! change tokens as resume points across upgrades, and page tokens issued by
//! a replica not yet upgraded may be in flight.

use aes_siv::{KeyInit, siv::Aes128Siv};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Page, ServiceError};
use crate::domain::PageSize;

type HmacSha256 = Hmac<Sha256>;

/// Version 1: the cursor in clear, signed. Verified, no longer issued.
const SIGNED: u8 = 1;
/// Version 2: the cursor encrypted and authenticated with AES-SIV.
const ENCRYPTED: u8 = 2;
/// Bytes of a version 1 tag, and of a version 2 synthetic IV.
const TAG_LEN: usize = 16;
/// What the shared key is extended with to derive the encryption key.
const ENCRYPTION_KEY_LABEL: &[u8] = b"connections page token encryption key, AES-SIV-CMAC-256";

/// Longest page token accepted; longer ones are refused without decoding.
pub const MAX_PAGE_TOKEN_LEN: usize = 256;

/// Issues and verifies page tokens with one key.
#[derive(Clone)]
pub struct PageTokens {
    /// Signs version 1 tokens.
    key: [u8; 32],
    /// Encrypts version 2 tokens: derived from `key`.
    encryption_key: [u8; 32],
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens { .. }")
    }
}

impl PageTokens {
    /// Name of the shared key in the `server_secrets` table.
    pub const SECRET_NAME: &'static str = "page_token_hmac_sha256";

    /// Tokens under `key`.
    pub fn new(key: [u8; 32]) -> Self {
        let mut derive = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
        derive.update(ENCRYPTION_KEY_LABEL);
        Self {
            key,
            encryption_key: derive.finalize().into_bytes().into(),
        }
    }

    /// The version 1 signature of `cursor` in `scope`.
    fn signature(&self, scope: &str, cursor: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&[SIGNED]);
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(cursor);
        mac
    }

    /// The cipher of version 2 tokens, and its associated data for `scope`.
    fn cipher<'a>(&self, scope: &'a str) -> (Aes128Siv, [&'a [u8]; 2]) {
        (
            Aes128Siv::new(&self.encryption_key.into()),
            [&[ENCRYPTED], scope.as_bytes()],
        )
    }

    /// A token that resumes after `cursor`, valid only for `scope`.
    pub fn issue(&self, scope: &str, cursor: &[u8]) -> String {
        let (mut cipher, associated_data) = self.cipher(scope);
        let sealed = cipher
            .encrypt(associated_data, cursor)
            .expect("two associated data items and any cursor can be encrypted");
        let mut raw = Vec::with_capacity(1 + sealed.len());
        raw.push(ENCRYPTED);
        raw.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor in `token`, if it was issued by us for `scope`; tokens
    /// longer than [`MAX_PAGE_TOKEN_LEN`] are refused unread.
    pub fn verify(&self, scope: &str, token: &str) -> Result<Vec<u8>, ServiceError> {
        self.verify_up_to(scope, token, MAX_PAGE_TOKEN_LEN)
    }

    /// The cursor in `token`, if it was issued by us for `scope`; tokens
    /// longer than `max_len` characters are refused unread.
    pub fn verify_up_to(
        &self,
        scope: &str,
        token: &str,
        max_len: usize,
    ) -> Result<Vec<u8>, ServiceError> {
        if token.len() > max_len {
            return Err(ServiceError::InvalidPageToken);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ServiceError::InvalidPageToken)?;
        match raw.split_first() {
            Some((&ENCRYPTED, sealed)) if sealed.len() >= TAG_LEN => {
                let (mut cipher, associated_data) = self.cipher(scope);
                cipher
                    .decrypt(associated_data, sealed)
                    .map_err(|_| ServiceError::InvalidPageToken)
            }
            Some((&SIGNED, signed)) if signed.len() >= TAG_LEN => {
                let (cursor, tag) = signed.split_at(signed.len() - TAG_LEN);
                self.signature(scope, cursor)
                    .verify_truncated_left(tag)
                    .map_err(|_| ServiceError::InvalidPageToken)?;
                Ok(cursor.to_vec())
            }
            _ => Err(ServiceError::InvalidPageToken),
        }
    }

    /// The cursor of `token` (`None` for the first page), verified for
    /// `scope` and decoded by `decode`; a token that fails either is
    /// `InvalidPageToken`.
    pub fn cursor<C>(
        &self,
        scope: &str,
        token: Option<&str>,
        decode: impl FnOnce(&[u8]) -> Option<C>,
    ) -> Result<Option<C>, ServiceError> {
        token
            .map(|token| decode(&self.verify(scope, token)?).ok_or(ServiceError::InvalidPageToken))
            .transpose()
    }

    /// One page of `items`, which were fetched with [`PageSize::fetch`] (one
    /// more than a page): the first `size` of them and, if there were more, a
    /// token for the page after the last one kept, resuming at
    /// `cursor(last)`.
    pub fn page<T>(
        &self,
        scope: &str,
        size: PageSize,
        mut items: Vec<T>,
        cursor: impl FnOnce(&T) -> Vec<u8>,
    ) -> Page<T> {
        let has_more = items.len() > size.as_usize();
        items.truncate(size.as_usize());
        let next_page_token = match items.last() {
            Some(last) if has_more => Some(self.issue(scope, &cursor(last))),
            _ => None,
        };
        Page {
            items,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new([7; 32])
    }

    #[test]
    fn a_page_keeps_its_size_and_resumes_after_its_last_item() {
        let size = PageSize::from_request(2).unwrap();
        assert_eq!(size.fetch(), 3);
        let page = tokens().page("scope", size, vec![1u8, 2, 3], |last| vec![*last]);
        assert_eq!(page.items, [1, 2]);
        let token = page.next_page_token.expect("more follow");
        assert_eq!(
            tokens()
                .cursor("scope", Some(&token), |raw| raw.first().copied())
                .unwrap(),
            Some(2)
        );
        let last = tokens().page("scope", size, vec![1u8, 2], |last| vec![*last]);
        assert_eq!((last.items, last.next_page_token), (vec![1, 2], None));
        assert_eq!(tokens().cursor("scope", None, |_| Some(())).unwrap(), None);
        assert!(matches!(
            tokens().cursor("scope", Some(&token), |_| None::<()>),
            Err(ServiceError::InvalidPageToken)
        ));
    }

    /// Asserts that `result` is the refusal of a page token.
    #[track_caller]
    fn assert_invalid_page_token(result: Result<Vec<u8>, ServiceError>, what: &str) {
        assert!(
            matches!(result, Err(ServiceError::InvalidPageToken)),
            "{what}: expected InvalidPageToken, got {result:?}"
        );
    }

    /// A version 1 token, as issued before tokens were encrypted.
    fn signed(tokens: &PageTokens, scope: &str, cursor: &[u8]) -> String {
        let tag = tokens.signature(scope, cursor).finalize().into_bytes();
        let mut raw = vec![SIGNED];
        raw.extend_from_slice(cursor);
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Both kinds of token for `cursor` in `scope`: as issued now, and as
    /// issued by version 1.
    fn both_versions(scope: &str, cursor: &[u8]) -> [(&'static str, String); 2] {
        [
            ("encrypted", tokens().issue(scope, cursor)),
            ("signed", signed(&tokens(), scope, cursor)),
        ]
    }

    #[test]
    fn round_trips_within_its_scope() {
        let token = tokens().issue("scope-a", b"cursor");
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap()[0], ENCRYPTED);
        assert_eq!(tokens().verify("scope-a", &token).unwrap(), b"cursor");
    }

    #[test]
    fn version_1_tokens_still_verify() {
        // Issued, with this key, by the version that signed cursors in clear.
        let issued_before = [
            (
                "scope",
                "AWN1cnNvcrQb79PpMk4wdZKyPU3teHU",
                b"cursor".to_vec(),
            ),
            (
                "ChangeToken",
                "AQAAAAAAAAAqi1jAl9aumr2oQlGLI-86nQ",
                42i64.to_be_bytes().to_vec(),
            ),
        ];
        for (scope, token, cursor) in issued_before {
            assert_eq!(signed(&tokens(), scope, &cursor), token);
            assert_eq!(tokens().verify(scope, token).unwrap(), cursor);
            assert_eq!(tokens().verify_up_to(scope, token, 1000).unwrap(), cursor);
        }
    }

    #[test]
    fn a_token_reveals_nothing_of_its_cursor() {
        let position = 0x0102_0304_0506_0708_i64.to_be_bytes();
        for cursor in [&position[..], b"a cursor in clear"] {
            let raw = URL_SAFE_NO_PAD
                .decode(tokens().issue("scope", cursor))
                .unwrap();
            assert!(
                !cursor
                    .windows(4)
                    .any(|part| raw.windows(4).any(|window| window == part)),
                "{raw:?} shows part of {cursor:?}"
            );
        }
        // Positions one bit apart: the tokens differ in about half their
        // bits (past the version byte), wherever the bit is.
        let (mut differing, mut compared) = (0, 0);
        for bit in 0..64 {
            let other = (0x0102_0304_0506_0708_i64 ^ (1 << bit)).to_be_bytes();
            let [a, b] = [position, other].map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(tokens().issue("scope", &cursor))
                    .unwrap()
            });
            assert_eq!((a.len(), a[0]), (b.len(), b[0]));
            let differ: u32 = a[1..]
                .iter()
                .zip(&b[1..])
                .map(|(x, y)| (x ^ y).count_ones())
                .sum();
            let bits = 8 * (a.len() as u32 - 1);
            assert!(
                differ * 4 > bits,
                "bit {bit}: {differ} of {bits} bits differ"
            );
            differing += differ;
            compared += bits;
        }
        let share = f64::from(differing) / f64::from(compared);
        assert!((0.45..0.55).contains(&share), "{share}");
    }

    #[test]
    fn refuses_another_scope_or_key() {
        for (what, token) in both_versions("scope-a", b"cursor") {
            assert_eq!(tokens().verify("scope-a", &token).unwrap(), b"cursor");
            assert_invalid_page_token(
                tokens().verify("scope-b", &token),
                &format!("{what}: another scope"),
            );
            assert_invalid_page_token(
                PageTokens::new([8; 32]).verify("scope-a", &token),
                &format!("{what}: another key"),
            );
        }
    }

    #[test]
    fn refuses_any_altered_bit_and_either_version_passed_off_as_the_other() {
        for (what, token) in both_versions("scope", &[1, 2, 3, 4]) {
            let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
            for i in 0..raw.len() {
                for bit in 0..8 {
                    let mut altered = raw.clone();
                    altered[i] ^= 1 << bit;
                    let altered = URL_SAFE_NO_PAD.encode(altered);
                    assert_invalid_page_token(
                        tokens().verify("scope", &altered),
                        &format!("{what}: byte {i}, bit {bit}"),
                    );
                }
            }
            for version in [SIGNED, ENCRYPTED] {
                if version != raw[0] {
                    let mut other = raw.clone();
                    other[0] = version;
                    let other = URL_SAFE_NO_PAD.encode(other);
                    assert_invalid_page_token(
                        tokens().verify("scope", &other),
                        &format!("{what} as version {version}"),
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_garbage_and_oversized_tokens() {
        let oversized = "A".repeat(MAX_PAGE_TOKEN_LEN + 1);
        let padded = format!("{}=", tokens().issue("scope", b"cursor"));
        for (what, bad) in [
            ("empty: no version and no tag", ""),
            ("not base64url", "!!!"),
            ("standard base64's alphabet", "ab+/"),
            ("too short for a version and a tag", "AAAA"),
            ("a valid token with padding", padded.as_str()),
            ("longer than the maximum", oversized.as_str()),
        ] {
            assert_invalid_page_token(tokens().verify("scope", bad), what);
        }
        // A version no one issues, however well formed.
        let mut unknown = URL_SAFE_NO_PAD
            .decode(tokens().issue("scope", b"cursor"))
            .unwrap();
        unknown[0] = 3;
        assert_invalid_page_token(
            tokens().verify("scope", &URL_SAFE_NO_PAD.encode(unknown)),
            "version 3",
        );
    }

    #[test]
    fn tokens_up_to_the_maximum_length_are_read_and_longer_ones_refused() {
        // 256 characters of base64url are 192 bytes: version, tag, cursor.
        let cursor = [9; 192 - 1 - TAG_LEN];
        for (what, longest) in both_versions("scope", &cursor) {
            assert_eq!(longest.len(), MAX_PAGE_TOKEN_LEN, "{what}");
            assert_eq!(
                tokens().verify("scope", &longest).unwrap(),
                cursor,
                "{what}"
            );
        }
        // A token we issued, but longer than the maximum, is refused unread.
        for (what, too_long) in both_versions("scope", &[9; 192 - TAG_LEN]) {
            assert!(too_long.len() > MAX_PAGE_TOKEN_LEN);
            assert_invalid_page_token(tokens().verify("scope", &too_long), what);
        }
    }

    #[test]
    fn verify_up_to_reads_longer_tokens_up_to_the_limit_it_is_given() {
        let cursor = [5; 300];
        for (what, token) in both_versions("scope", &cursor) {
            // Version, tag and cursor: 317 bytes, 423 characters.
            assert_eq!(token.len(), 423, "{what}");
            assert_invalid_page_token(tokens().verify("scope", &token), what);
            assert_eq!(
                tokens().verify_up_to("scope", &token, 423).unwrap(),
                cursor,
                "{what}"
            );
            assert_invalid_page_token(tokens().verify_up_to("scope", &token, 422), what);
            assert_invalid_page_token(tokens().verify_up_to("other", &token, 423), what);
        }
        let oversized = "A".repeat(1001);
        assert_invalid_page_token(tokens().verify_up_to("scope", &oversized, 1000), "1001");
    }

    #[test]
    fn an_empty_cursor_round_trips_and_a_token_shorter_than_a_tag_is_refused() {
        for (what, empty) in both_versions("scope", b"") {
            assert_eq!(tokens().verify("scope", &empty).unwrap(), b"", "{what}");
        }
        // A version byte, then less than a whole tag.
        for version in [SIGNED, ENCRYPTED] {
            let mut short = vec![version];
            short.extend_from_slice(&[0; TAG_LEN - 1]);
            let short = URL_SAFE_NO_PAD.encode(short);
            assert_invalid_page_token(
                tokens().verify("scope", &short),
                &format!("version {version}, shorter than a tag"),
            );
        }
    }
}
