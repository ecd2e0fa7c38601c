//! Webhook rules that need no I/O: which endpoint URLs and which network
//! addresses a delivery may go to (against server-side request forgery), and
//! the Standard Webhooks signature of a delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest endpoint URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// The start of a signing secret as the Standard Webhooks libraries take it.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why an address may not be reached by a delivery: each class of address
/// that leads into the server's own network rather than to a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum BlockedAddress {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`, `fc00::/7` (unique local).
    Private,
    /// `169.254/16` (cloud metadata services among them), `fe80::/10`.
    LinkLocal,
    /// `100.64/10`, carrier-grade NAT (some clouds' metadata services too).
    Shared,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// Anything else not routed on the internet: `192.0.0/24` (another
    /// cloud's metadata service), documentation and benchmarking ranges,
    /// `240/4`, broadcast, deprecated IPv6 site-local, Teredo.
    Reserved,
}

/// The class that keeps `ip` from being reached, if any. IPv6 addresses that
/// carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by it.
pub fn blocked(ip: IpAddr) -> Option<BlockedAddress> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<BlockedAddress> {
    use BlockedAddress as B;
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => B::Unspecified,
        (127, _, _) => B::Loopback,
        (10, _, _) | (192, 168, _) => B::Private,
        (172, 16..=31, _) => B::Private,
        (169, 254, _) => B::LinkLocal,
        (100, 64..=127, _) => B::Shared,
        (224..=239, _, _) => B::Multicast,
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => B::Reserved,
        (198, 18..=19, _) | (240..=255, _, _) => B::Reserved,
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<BlockedAddress> {
    use BlockedAddress as B;
    let segments = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some(B::Unspecified);
    }
    if ip.is_loopback() {
        return Some(B::Loopback);
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        return blocked_v4(embedded_v4(segments[6], segments[7]));
    }
    // NAT64's well-known prefix, 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(embedded_v4(segments[6], segments[7]));
    }
    // 6to4, 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if segments[0] == 0x2002 {
        return blocked_v4(embedded_v4(segments[1], segments[2]));
    }
    Some(match segments[0] {
        s if s & 0xfe00 == 0xfc00 => B::Private,
        s if s & 0xffc0 == 0xfe80 => B::LinkLocal,
        s if s & 0xffc0 == 0xfec0 => B::Reserved,
        s if s & 0xff00 == 0xff00 => B::Multicast,
        // Teredo (2001::/32) and documentation (2001:db8::/32).
        0x2001 if segments[1] == 0 || segments[1] == 0xdb8 => B::Reserved,
        _ => return None,
    })
}

/// Why a URL cannot be a webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Longer than [`MAX_URL_CHARS`].
    #[error("must be at most {MAX_URL_CHARS} characters")]
    TooLong,
    /// Not an absolute URL.
    #[error("is not an absolute URL: {0}")]
    Malformed(String),
    /// Not `https` (or, where private addresses are allowed, `http`).
    #[error("must use https")]
    NotHttps,
    /// Carries a user name or password, which would be stored and shown.
    #[error("must not carry a user name or password")]
    Credentials,
    /// Has a `#fragment`, which is never sent.
    #[error("must not have a fragment")]
    Fragment,
    /// Names an address, or a name for one, that leads into the server's
    /// own network.
    #[error("must not name a {0} address")]
    Blocked(BlockedAddress),
}

/// An endpoint URL that passed the rules checked without resolving its host
/// name (which is checked, like every address, when it is connected to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Checks `value`; `allow_private` admits `http` and the blocked
    /// addresses (for development and tests).
    pub fn parse(value: &str, allow_private: bool) -> Result<Self, UrlProblem> {
        if value.chars().count() > MAX_URL_CHARS {
            return Err(UrlProblem::TooLong);
        }
        let url = url::Url::parse(value).map_err(|err| UrlProblem::Malformed(err.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_private => {}
            _ => return Err(UrlProblem::NotHttps),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlProblem::Credentials);
        }
        if url.fragment().is_some() {
            return Err(UrlProblem::Fragment);
        }
        let host = url
            .host()
            .ok_or_else(|| UrlProblem::Malformed("no host".to_owned()))?;
        if !allow_private {
            let class = match host {
                url::Host::Ipv4(ip) => blocked(IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => blocked(IpAddr::V6(ip)),
                // RFC 6761: these names are loopback wherever they resolve.
                url::Host::Domain(name) => {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    (name == "localhost" || name.ends_with(".localhost"))
                        .then_some(BlockedAddress::Loopback)
                }
            };
            if let Some(class) = class {
                return Err(UrlProblem::Blocked(class));
            }
        }
        Ok(Self(url))
    }

    /// The URL, normalised.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The host name to resolve, if the host is not an IP address.
    pub fn domain(&self) -> Option<&str> {
        self.0.domain()
    }
}

/// A signing secret's key: the bytes after [`SECRET_PREFIX`], base64-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key of a secret as the Standard Webhooks libraries take it:
    /// `whsec_` and base64 of 24 to 64 bytes.
    pub fn from_secret(secret: &str) -> Option<Self> {
        let encoded = secret.strip_prefix(SECRET_PREFIX)?;
        let bytes = STANDARD.decode(encoded).ok()?;
        (24..=64).contains(&bytes.len()).then_some(Self(bytes))
    }

    /// The secret of `bytes`, as it is shown once to its owner.
    pub fn secret_of(bytes: &[u8]) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
    }

    /// `v1,` and base64 of HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header of a delivery: one signature per key,
/// space-separated (two during a rotation's overlap).
pub fn signature_header(keys: &[&SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_into_the_server_s_network_are_blocked_by_class() {
        use BlockedAddress as B;
        for (address, class) in [
            ("0.0.0.0", B::Unspecified),
            ("127.0.0.1", B::Loopback),
            ("127.255.0.9", B::Loopback),
            ("10.1.2.3", B::Private),
            ("172.16.0.1", B::Private),
            ("172.31.255.255", B::Private),
            ("192.168.1.1", B::Private),
            ("169.254.169.254", B::LinkLocal),
            ("100.64.0.1", B::Shared),
            ("100.100.100.200", B::Shared),
            ("224.0.0.1", B::Multicast),
            ("192.0.0.192", B::Reserved),
            ("255.255.255.255", B::Reserved),
            ("::", B::Unspecified),
            ("::1", B::Loopback),
            ("fd00:ec2::254", B::Private),
            ("fe80::1", B::LinkLocal),
            ("ff02::1", B::Multicast),
            ("::ffff:127.0.0.1", B::Loopback),
            ("::ffff:169.254.169.254", B::LinkLocal),
            ("64:ff9b::a00:1", B::Private),
            ("2002:7f00:1::", B::Loopback),
            ("2001:db8::1", B::Reserved),
        ] {
            assert_eq!(blocked(ip(address)), Some(class), "{address}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert_eq!(blocked(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn endpoint_urls_must_be_https_to_a_public_host_without_credentials() {
        assert!(WebhookUrl::parse("https://hooks.example.com/connections", false).is_ok());
        assert!(WebhookUrl::parse("https://93.184.216.34:8443/x?y=1", false).is_ok());
        for (url, problem) in [
            ("http://hooks.example.com/", UrlProblem::NotHttps),
            ("ftp://hooks.example.com/", UrlProblem::NotHttps),
            (
                "https://user:pw@hooks.example.com/",
                UrlProblem::Credentials,
            ),
            ("https://hooks.example.com/#x", UrlProblem::Fragment),
            (
                "https://127.0.0.1/",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
            (
                "https://[::1]:8443/",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
            (
                "https://localhost/",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
            (
                "https://api.LOCALHOST./",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
            (
                "https://169.254.169.254/latest/meta-data",
                UrlProblem::Blocked(BlockedAddress::LinkLocal),
            ),
            // Other spellings of an address are normalised before the check.
            (
                "https://2130706433/",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
            (
                "https://0x7f.1/",
                UrlProblem::Blocked(BlockedAddress::Loopback),
            ),
        ] {
            assert_eq!(WebhookUrl::parse(url, false), Err(problem), "{url}");
        }
        assert!(matches!(
            WebhookUrl::parse("not a url", false),
            Err(UrlProblem::Malformed(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(WebhookUrl::parse(&long, false), Err(UrlProblem::TooLong));
        // For development and tests: http and private addresses.
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/hook", true).is_ok());
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:8080/hook", false),
            Err(UrlProblem::NotHttps)
        );
    }

    #[test]
    fn signatures_match_the_standard_webhooks_reference_vector() {
        // The vector of the official Standard Webhooks libraries' tests.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(&[&key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // During a rotation: both, space-separated, the new one first.
        let new = SigningKey::from_secret(&SigningKey::secret_of(&[7; 32])).unwrap();
        let both = signature_header(
            &[&new, &key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn only_well_formed_secrets_give_keys_and_keys_never_print() {
        assert!(SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(SigningKey::from_secret("whsec_not base64!").is_none());
        assert!(SigningKey::from_secret(&SigningKey::secret_of(&[1; 8])).is_none());
        let key = SigningKey::from_secret(&SigningKey::secret_of(&[1; 32])).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }
}
