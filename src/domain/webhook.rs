//! Webhook rules that need no I/O: which endpoint URLs and which network
//! addresses a delivery may go to (against server-side request forgery), and
//! the Standard Webhooks signature of a delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};

use super::{
    EventType, Named, OrganizationId, WebhookEndpointId, organization::MAX_DISPLAY_NAME_CHARS,
};

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

    /// The port connected to: the URL's, or its scheme's.
    pub fn port_or_default(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }

    /// The URL.
    pub fn url(&self) -> &url::Url {
        &self.0
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

    /// The key of `bytes` (a secret as stored).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
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

/// Longest endpoint description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A webhook endpoint as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Identifier (UUIDv7).
    pub id: WebhookEndpointId,
    /// The organization whose connections' events it receives.
    pub organization_id: OrganizationId,
    /// Where deliveries go.
    pub url: String,
    /// Free text for the owner.
    pub description: String,
    /// The event types it takes; empty: all.
    pub event_types: EventTypes,
    /// Whether deliveries are paused.
    pub disabled: bool,
    /// Why the server disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// What the audit log names it by: the origin of its URL (scheme, host
    /// and port, as `https://hooks.example.com:8443`), cut to
    /// [`MAX_DISPLAY_NAME_CHARS`] characters. Never the URL's path or query,
    /// which may carry the receiver's own secret (a URL such as
    /// `https://hooks.example.com/services/<token>` is a credential in
    /// itself), nor the description, the owner's free text.
    pub fn audit_name(&self) -> String {
        url::Url::parse(&self.url)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_default()
            .chars()
            .take(MAX_DISPLAY_NAME_CHARS)
            .collect()
    }
}

/// A set of event types, distinct and in declaration order; empty means
/// every type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTypes(Vec<EventType>);

impl EventTypes {
    /// The set of `types` (duplicates collapsed).
    pub fn new(types: impl IntoIterator<Item = EventType>) -> Self {
        let mut types: Vec<EventType> = types.into_iter().collect();
        types.sort_by_key(|t| *t as u8);
        types.dedup();
        Self(types)
    }

    /// The types; empty means all.
    pub fn as_slice(&self) -> &[EventType] {
        &self.0
    }

    /// Whether an event of type `event` is taken.
    pub fn takes(&self, event: EventType) -> bool {
        self.0.is_empty() || self.0.contains(&event)
    }

    /// The stored form: `""` for all, else `,CREATED,ACTIVATED,`, so that
    /// a type is matched with `LIKE '%,NAME,%'`.
    pub fn to_storage(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let mut stored = String::from(",");
        for t in &self.0 {
            stored.push_str(t.as_str());
            stored.push(',');
        }
        stored
    }

    /// Reads the stored form.
    pub fn from_storage(stored: &str) -> Result<Self, strum::ParseError> {
        stored
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }
}

/// The `type` of a delivery's body: `connection.` and the event's verb.
pub fn delivery_type(event: EventType) -> &'static str {
    match event {
        EventType::Created => "connection.created",
        EventType::Activated => "connection.activated",
        EventType::Deactivated => "connection.deactivated",
        EventType::Reactivated => "connection.reactivated",
        EventType::Expired => "connection.expired",
        EventType::DataTypesChanged => "connection.data_types_changed",
        EventType::DataTypesProposed => "connection.data_types_proposed",
        EventType::DataTypesApproved => "connection.data_types_approved",
        EventType::DataTypesDeclined => "connection.data_types_declined",
    }
}

/// What came of a delivery attempt (stored as its number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Succeeded = 1,
    /// It failed and will be tried again.
    WillRetry = 2,
    /// It failed for the last time (or the receiver answered 410).
    GaveUp = 3,
}

impl DeliveryOutcome {
    /// The outcome stored as `value`.
    pub fn from_stored(value: i16) -> Option<Self> {
        match value {
            1 => Some(Self::Succeeded),
            2 => Some(Self::WillRetry),
            3 => Some(Self::GaveUp),
            _ => None,
        }
    }
}

/// One attempt to deliver an event, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// Identifier (UUIDv7).
    pub id: uuid::Uuid,
    /// The endpoint.
    pub endpoint_id: WebhookEndpointId,
    /// The event sent (the `webhook-id`).
    pub event_id: uuid::Uuid,
    /// The change token sent with it.
    pub change_token: String,
    /// 1 for the first attempt of the event, then 2, 3, ...
    pub attempt: i32,
    /// The receiver's status, if one came.
    pub http_status: Option<u16>,
    /// Why no status came, or the start of the receiver's answer.
    pub error: Option<String>,
    /// From sending to the status (or the failure).
    pub duration: std::time::Duration,
    /// When it was made.
    pub attempt_time: DateTime<Utc>,
    /// When the event goes again, if it does.
    pub next_attempt_time: Option<DateTime<Utc>>,
    /// What came of it.
    pub outcome: DeliveryOutcome,
}

/// The waits between a failed attempt and the next: after the last, the
/// event is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<std::time::Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse("5s,5m,30m,2h,5h,10h,10h").expect("the default schedule parses")
    }
}

impl RetrySchedule {
    /// Reads a comma-separated list of durations, each a whole number and a
    /// unit (`ms`, `s`, `m`, `h`), e.g. `5s,5m,30m`. At most 20 waits, each
    /// at most 7 days; an empty list means no retry.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut waits = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let split = part
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("{part:?} has no unit (ms, s, m or h)"))?;
            let (number, unit) = part.split_at(split);
            let number: u64 = number
                .parse()
                .map_err(|_| format!("{part:?} does not start with a whole number"))?;
            let wait = match unit {
                "ms" => std::time::Duration::from_millis(number),
                "s" => std::time::Duration::from_secs(number),
                "m" => std::time::Duration::from_secs(number.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(number.saturating_mul(3600)),
                _ => return Err(format!("{part:?}: the unit must be ms, s, m or h")),
            };
            if wait > std::time::Duration::from_secs(7 * 24 * 3600) {
                return Err(format!("{part:?} is longer than 7 days"));
            }
            waits.push(wait);
        }
        if waits.len() > 20 {
            return Err("at most 20 retries".to_owned());
        }
        Ok(Self(waits))
    }

    /// The wait after failed attempt number `attempt` (1 for the first),
    /// before jitter; `None` once the attempts are spent.
    pub fn after(&self, attempt: i32) -> Option<std::time::Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }

    /// The wait, with up to 20% added at random (`unit` in `[0, 1)`), so
    /// that deliveries failed together do not all come back together; at
    /// least `retry_after` when the receiver asked for it.
    pub fn jittered(
        wait: std::time::Duration,
        unit: f64,
        retry_after: Option<std::time::Duration>,
    ) -> std::time::Duration {
        let jittered = wait.mul_f64(1.0 + 0.2 * unit.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |asked| jittered.max(asked))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_types_are_stored_so_that_one_type_matches_by_like() {
        let types = EventTypes::new([
            EventType::Deactivated,
            EventType::Created,
            EventType::Created,
        ]);
        assert_eq!(types.to_storage(), ",CREATED,DEACTIVATED,");
        assert_eq!(
            EventTypes::from_storage(&types.to_storage()).unwrap(),
            types
        );
        assert!(types.takes(EventType::Created) && !types.takes(EventType::Activated));
        assert_eq!(EventTypes::default().to_storage(), "");
        assert!(EventTypes::default().takes(EventType::Reactivated));
        assert!(EventTypes::from_storage(",NOPE,").is_err());
    }

    #[test]
    fn an_endpoint_is_named_in_the_audit_log_by_its_url_s_origin_only() {
        let named = |url: &str| {
            WebhookEndpoint {
                id: WebhookEndpointId::generate(),
                organization_id: OrganizationId::generate(),
                url: url.to_owned(),
                description: "secret-looking text".to_owned(),
                event_types: EventTypes::default(),
                disabled: false,
                disabled_reason: None,
                create_time: DateTime::UNIX_EPOCH,
                update_time: DateTime::UNIX_EPOCH,
            }
            .audit_name()
        };
        assert_eq!(
            named("https://hooks.example.com/services/T0/B0/tok3n?key=s3cret"),
            "https://hooks.example.com"
        );
        assert_eq!(named("http://127.0.0.1:8080/h"), "http://127.0.0.1:8080");
        let long = format!("https://{}.example.com/", "a".repeat(300));
        assert_eq!(named(&long).chars().count(), MAX_DISPLAY_NAME_CHARS);
    }

    #[test]
    fn the_retry_schedule_reads_units_and_ends_after_its_last_wait() {
        use std::time::Duration;
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.after(1), Some(Duration::from_secs(5)));
        assert_eq!(schedule.after(2), Some(Duration::from_secs(300)));
        assert_eq!(schedule.after(7), Some(Duration::from_secs(36_000)));
        assert_eq!(schedule.after(8), None);
        assert_eq!(schedule.after(0), None);
        let short = RetrySchedule::parse("100ms, 1s").unwrap();
        assert_eq!(short.after(1), Some(Duration::from_millis(100)));
        assert_eq!(RetrySchedule::parse("").unwrap().after(1), None);
        for bad in ["5", "5x", "s", "-1s", "8d", "200h"] {
            assert!(RetrySchedule::parse(bad).is_err(), "{bad}");
        }
        let wait = Duration::from_secs(10);
        assert_eq!(RetrySchedule::jittered(wait, 0.0, None), wait);
        assert_eq!(RetrySchedule::jittered(wait, 0.999_999, None).as_secs(), 11);
        assert_eq!(
            RetrySchedule::jittered(wait, 0.5, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }

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
