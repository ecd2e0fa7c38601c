//! Opaque, tamper-evident page tokens.
//!
//! A token is `base64url(version || cursor || tag)`, where `tag` is a truncated
//! HMAC-SHA256 over the version, the cursor and a *scope*: the method, the
//! caller and the filters the token was issued for. A token that was altered,
//! or is presented by another caller or with other filters, fails verification.
//! The key is shared by all replicas through the database.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Page, ServiceError};
use crate::domain::PageSize;

type HmacSha256 = Hmac<Sha256>;

const TOKEN_VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// Longest page token accepted; longer ones are refused without decoding.
pub const MAX_PAGE_TOKEN_LEN: usize = 256;

/// Issues and verifies page tokens with one key.
#[derive(Clone)]
pub struct PageTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens { .. }")
    }
}

impl PageTokens {
    /// Name of the shared key in the `server_secrets` table.
    pub const SECRET_NAME: &'static str = "page_token_hmac_sha256";

    /// Tokens signed with `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn tag(&self, scope: &str, cursor: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&[TOKEN_VERSION]);
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(cursor);
        mac
    }

    /// A token that resumes after `cursor`, valid only for `scope`.
    pub fn issue(&self, scope: &str, cursor: &[u8]) -> String {
        let tag = self.tag(scope, cursor).finalize().into_bytes();
        let mut raw = Vec::with_capacity(1 + cursor.len() + TAG_LEN);
        raw.push(TOKEN_VERSION);
        raw.extend_from_slice(cursor);
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor in `token`, if it was issued by us for `scope`.
    pub fn verify(&self, scope: &str, token: &str) -> Result<Vec<u8>, ServiceError> {
        self.verify_up_to(scope, token, MAX_PAGE_TOKEN_LEN)
    }

    /// Like [`verify`](Self::verify), for tokens of up to `max_len`
    /// characters.
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
        if raw.len() < 1 + TAG_LEN || raw[0] != TOKEN_VERSION {
            return Err(ServiceError::InvalidPageToken);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        let cursor = &body[1..];
        self.tag(scope, cursor)
            .verify_truncated_left(tag)
            .map_err(|_| ServiceError::InvalidPageToken)?;
        Ok(cursor.to_vec())
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

    #[test]
    fn round_trips_within_its_scope() {
        let token = tokens().issue("scope-a", b"cursor");
        assert_eq!(tokens().verify("scope-a", &token).unwrap(), b"cursor");
    }

    #[test]
    fn refuses_another_scope_or_key() {
        let token = tokens().issue("scope-a", b"cursor");
        assert_invalid_page_token(tokens().verify("scope-b", &token), "another scope");
        assert_invalid_page_token(
            PageTokens::new([8; 32]).verify("scope-a", &token),
            "another key",
        );
    }

    #[test]
    fn refuses_any_altered_byte() {
        let token = tokens().issue("scope", &[1, 2, 3, 4]);
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 0x01;
            let altered = URL_SAFE_NO_PAD.encode(altered);
            assert_invalid_page_token(tokens().verify("scope", &altered), &format!("byte {i}"));
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
    }

    #[test]
    fn tokens_up_to_the_maximum_length_are_read_and_longer_ones_refused() {
        // 256 characters of base64url are 192 bytes: version, cursor, tag.
        let longest = tokens().issue("scope", &[9; 192 - 1 - TAG_LEN]);
        assert_eq!(longest.len(), MAX_PAGE_TOKEN_LEN);
        assert_eq!(
            tokens().verify("scope", &longest).unwrap(),
            [9; 192 - 1 - TAG_LEN]
        );
        // A token we issued, but longer than the maximum, is refused unread.
        let too_long = tokens().issue("scope", &[9; 192 - TAG_LEN]);
        assert!(too_long.len() > MAX_PAGE_TOKEN_LEN);
        assert_invalid_page_token(tokens().verify("scope", &too_long), "too long");
    }

    #[test]
    fn an_empty_cursor_round_trips_and_a_token_shorter_than_a_tag_is_refused() {
        let empty = tokens().issue("scope", b"");
        assert_eq!(tokens().verify("scope", &empty).unwrap(), b"");
        // The version byte, then less than a whole tag.
        let mut short = vec![TOKEN_VERSION];
        short.extend_from_slice(&[0; TAG_LEN - 1]);
        let short = URL_SAFE_NO_PAD.encode(short);
        assert_invalid_page_token(tokens().verify("scope", &short), "shorter than a tag");
    }
}
