//! Change tokens: opaque, tamper-evident names of places in the change log.
//!
//! A token names a horizon: every change before it. A write returns the
//! token just after the event it wrote, so a reader that has reached that
//! token has seen the write. Tokens are signed like page tokens (same key,
//! their own scope), so one cannot be forged, altered, or passed off as a
//! page token.

use super::{PageTokens, ServiceError};

/// The scope change tokens are signed for.
const SCOPE: &str = "ChangeToken";

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

    /// The token of `horizon`: every change before that position.
    pub fn issue(&self, horizon: i64) -> String {
        self.tokens.issue(SCOPE, &horizon.to_be_bytes())
    }

    /// The horizon `token` names, if we issued it; `field` names the request
    /// field it came in, for the error.
    pub fn verify(&self, token: &str, field: &'static str) -> Result<i64, ServiceError> {
        let invalid = || ServiceError::InvalidChangeToken { field };
        let cursor = self.tokens.verify(SCOPE, token).map_err(|_| invalid())?;
        let bytes: [u8; 8] = cursor.try_into().map_err(|_| invalid())?;
        Ok(i64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_horizon_and_refuse_tampering_and_page_tokens() {
        let tokens = ChangeTokens::new(PageTokens::new([7; 32]));
        for horizon in [i64::MIN, -1, 0, 1, 1 << 40, i64::MAX] {
            assert_eq!(tokens.verify(&tokens.issue(horizon), "t").unwrap(), horizon);
        }
        let token = tokens.issue(42);
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let page_token = PageTokens::new([7; 32]).issue("ListConnections", &42i64.to_be_bytes());
        let other_key = ChangeTokens::new(PageTokens::new([8; 32])).issue(42);
        for bad in [
            String::new(),
            "not a token".to_owned(),
            String::from_utf8(tampered).unwrap(),
            page_token,
            other_key,
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
