//! Anomaly detection over sliding windows, per identity and per peer.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use serde::ser::{Serialize, SerializeMap, Serializer};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::schema::{self, SecurityEvent, action, field, reason};

/// The kinds of anomaly the [`Detector`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AnomalyKind {
    /// Repeated pin failures (`tls.pin.check` failures): a man in the middle, or a server
    /// whose key rotated without a backup pin.
    PinViolations,
    /// Repeated signature failures (`signature.verify` failures).
    SignatureFailures,
    /// Replayed requests (failures with `event.reason = "replayed"`).
    Replays,
    /// Tokens presented again (failures with `event.reason = "token_reuse"`, refresh
    /// failures with `invalid_grant`).
    TokenReuse,
    /// A burst of `401 Unauthorized` answers.
    UnauthorizedBurst,
    /// A burst of `429 Too Many Requests` answers.
    RateLimitedBurst,
    /// Several client addresses never seen before for one identity in a short time.
    NewClientAddresses,
}

impl AnomalyKind {
    /// Every kind, in a fixed order.
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::PinViolations,
        AnomalyKind::SignatureFailures,
        AnomalyKind::Replays,
        AnomalyKind::TokenReuse,
        AnomalyKind::UnauthorizedBurst,
        AnomalyKind::RateLimitedBurst,
        AnomalyKind::NewClientAddresses,
    ];

    /// The rule name used in `event.reason` and `rule.name` of anomaly events.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::PinViolations => "pin_violations",
            AnomalyKind::SignatureFailures => "signature_failures",
            AnomalyKind::Replays => "replays",
            AnomalyKind::TokenReuse => "token_reuse",
            AnomalyKind::UnauthorizedBurst => "unauthorized_burst",
            AnomalyKind::RateLimitedBurst => "rate_limited_burst",
            AnomalyKind::NewClientAddresses => "new_client_addresses",
        }
    }

    fn index(self) -> usize {
        match self {
            AnomalyKind::PinViolations => 0,
            AnomalyKind::SignatureFailures => 1,
            AnomalyKind::Replays => 2,
            AnomalyKind::TokenReuse => 3,
            AnomalyKind::UnauthorizedBurst => 4,
            AnomalyKind::RateLimitedBurst => 5,
            AnomalyKind::NewClientAddresses => 6,
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `count` signals within `window` make an anomaly fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    count: u32,
    window: Duration,
}

impl Threshold {
    /// `count` signals within `window`.
    pub const fn new(count: u32, window: Duration) -> Self {
        Threshold { count, window }
    }

    /// How many signals.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Within how long.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Who an anomaly is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subject {
    /// An identity (`user.id`: user, token subject, mTLS identity or key id).
    Identity(String),
    /// A peer address (`client.address` on the server side, `server.address` on the
    /// client side).
    Peer(String),
}

impl Subject {
    /// The identity or address.
    pub fn value(&self) -> &str {
        match self {
            Subject::Identity(v) | Subject::Peer(v) => v,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Identity(v) => write!(f, "identity {v:?}"),
            Subject::Peer(v) => write!(f, "peer {v:?}"),
        }
    }
}

/// An anomaly raised by the [`Detector`].
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub(crate) kind: AnomalyKind,
    pub(crate) subject: Subject,
    pub(crate) threshold: Threshold,
    pub(crate) user_id: Option<String>,
    pub(crate) client_address: Option<String>,
    pub(crate) server_address: Option<String>,
    pub(crate) detected_at: OffsetDateTime,
}

impl Anomaly {
    /// What was detected.
    pub fn kind(&self) -> AnomalyKind {
        self.kind
    }

    /// Who it is about.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The threshold that was reached.
    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    /// `user.id` of the event that made the anomaly fire.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// `client.address` of the event that made the anomaly fire.
    pub fn client_address(&self) -> Option<&str> {
        self.client_address.as_deref()
    }

    /// `server.address` of the event that made the anomaly fire.
    pub fn server_address(&self) -> Option<&str> {
        self.server_address.as_deref()
    }

    /// Wall-clock time of detection.
    pub fn detected_at(&self) -> OffsetDateTime {
        self.detected_at
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "anomaly {} for {}: {} signals within {:?}",
            self.kind, self.subject, self.threshold.count, self.threshold.window
        )
    }
}

impl Serialize for Anomaly {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        schema::write_header(
            &mut map,
            self.detected_at,
            schema::AUDIT_TARGET,
            tracing::Level::WARN,
        )?;
        map.serialize_entry(field::EVENT_KIND, schema::kind::ALERT)?;
        map.serialize_entry(field::EVENT_CATEGORY, schema::category::INTRUSION_DETECTION)?;
        map.serialize_entry(field::EVENT_ACTION, action::ANOMALY)?;
        map.serialize_entry(field::EVENT_REASON, self.kind.as_str())?;
        map.serialize_entry(field::RULE_NAME, self.kind.as_str())?;
        if let Some(v) = &self.user_id {
            map.serialize_entry(field::USER_ID, v)?;
        }
        if let Some(v) = &self.client_address {
            map.serialize_entry(field::CLIENT_ADDRESS, v)?;
        }
        if let Some(v) = &self.server_address {
            map.serialize_entry(field::SERVER_ADDRESS, v)?;
        }
        map.serialize_entry(field::ANOMALY_COUNT, &self.threshold.count)?;
        map.serialize_entry(
            field::ANOMALY_WINDOW_MS,
            &u64::try_from(self.threshold.window.as_millis()).unwrap_or(u64::MAX),
        )?;
        map.end()
    }
}

/// Thresholds and memory bounds of a [`Detector`].
///
/// Defaults: 1 pin violation per minute, 5 signature failures per minute, 2 replays per
/// minute, 1 token reuse per minute, 10 `401` per minute, 20 `429` per minute, 3 new client
/// addresses per identity in 10 minutes; at most 10,000 tracked subjects and 8 remembered
/// addresses per identity.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    thresholds: [Option<Threshold>; 7],
    max_subjects: usize,
    max_known_addresses: usize,
    ipv6_prefix: u8,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        const MIN: Duration = Duration::from_secs(60);
        DetectorConfig {
            thresholds: [
                Some(Threshold::new(1, MIN)),
                Some(Threshold::new(5, MIN)),
                Some(Threshold::new(2, MIN)),
                Some(Threshold::new(1, MIN)),
                Some(Threshold::new(10, MIN)),
                Some(Threshold::new(20, MIN)),
                Some(Threshold::new(3, Duration::from_secs(600))),
            ],
            max_subjects: 10_000,
            max_known_addresses: 8,
            ipv6_prefix: portcullis_core::DEFAULT_IPV6_PREFIX,
        }
    }
}

impl DetectorConfig {
    /// The default thresholds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the threshold of one kind.
    pub fn threshold(mut self, kind: AnomalyKind, threshold: Threshold) -> Self {
        self.thresholds[kind.index()] = Some(threshold);
        self
    }

    /// Turns one kind off.
    pub fn disable(mut self, kind: AnomalyKind) -> Self {
        self.thresholds[kind.index()] = None;
        self
    }

    /// The threshold of one kind, `None` when it is off.
    pub fn get_threshold(&self, kind: AnomalyKind) -> Option<Threshold> {
        self.thresholds[kind.index()]
    }

    /// How many identities and peers are tracked at most; the least recently seen are
    /// forgotten first. This bounds memory under a flood of identities.
    pub fn max_subjects(mut self, max: usize) -> Self {
        self.max_subjects = max;
        self
    }

    /// The IPv6 prefix length a client is tracked (and penalized) by (default 64): one host
    /// usually holds a whole /64. Give [`PenaltyBox::ipv6_prefix`](crate::PenaltyBox::ipv6_prefix)
    /// the same value.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// How many client addresses are remembered per identity for the
    /// [`NewClientAddresses`](AnomalyKind::NewClientAddresses) rule.
    pub fn max_known_addresses(mut self, max: usize) -> Self {
        self.max_known_addresses = max;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::BuildError> {
        for kind in AnomalyKind::ALL {
            if let Some(t) = self.thresholds[kind.index()]
                && (t.count == 0 || t.window.is_zero())
            {
                return Err(crate::BuildError::InvalidThreshold {
                    kind,
                    count: t.count,
                    window: t.window,
                });
            }
        }
        if self.max_subjects == 0 {
            return Err(crate::BuildError::ZeroCapacity {
                what: "detector max_subjects",
            });
        }
        if self.max_known_addresses == 0 {
            return Err(crate::BuildError::ZeroCapacity {
                what: "detector max_known_addresses",
            });
        }
        Ok(())
    }
}

const SHARDS: usize = 8;

#[derive(Debug, Default)]
struct Window {
    hits: VecDeque<Instant>,
    quiet_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct SubjectState {
    windows: Vec<(AnomalyKind, Window)>,
    known_addresses: VecDeque<String>,
}

/// Turns security events into [`Anomaly`]s: sliding windows of signals per identity
/// (`user.id`) and per peer (`client.address`, or `server.address` when there is none).
///
/// Signals:
/// - any failure with `event.reason` `replayed` (or `replay`, `*_replayed`):
///   [`Replays`](AnomalyKind::Replays);
/// - any failure with `event.reason = "token_reuse"`, or a `token.refresh` failure with
///   `invalid_grant`: [`TokenReuse`](AnomalyKind::TokenReuse);
/// - a `tls.pin.check` (or `pin.verify`, `tls.pin.*`) failure, or any failure with a reason
///   starting with `pin_mismatch`: [`PinViolations`](AnomalyKind::PinViolations);
/// - other `signature.verify` failures: [`SignatureFailures`](AnomalyKind::SignatureFailures);
/// - `http.response.status_code` 401 / 429: the two bursts;
/// - a `client.address` not among the identity's remembered addresses (the first address
///   of an identity is its baseline, not a signal): new client addresses.
///
/// Once a rule fires for a subject its window is emptied and it stays quiet for one
/// window, so a flood raises one anomaly per window, not one per event.
///
/// Memory is bounded: at most `max_subjects` subjects (least recently seen evicted), at
/// most `count` timestamps per rule and `max_known_addresses` addresses per subject.
/// Time is [`tokio::time::Instant`], so tests drive it with `tokio::time::pause()`.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    shards: Box<[Mutex<LruCache<Subject, SubjectState>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Detector {
    /// A detector with `config`.
    ///
    /// # Errors
    ///
    /// A threshold of zero signals or a zero window, or a zero capacity.
    pub fn new(config: DetectorConfig) -> Result<Self, crate::BuildError> {
        config.validate()?;
        let per_shard = config.max_subjects.div_ceil(SHARDS).max(1);
        let cap = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(LruCache::new(cap)))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Detector {
            config,
            shards,
            hasher: Default::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// How many subjects (identities and peers) are tracked now.
    pub fn tracked_subjects(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    /// The most subjects ever tracked at once (the memory bound).
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.cap().get()).unwrap_or(0))
            .sum()
    }

    /// Feeds one event, now; returns the anomalies it made fire.
    pub fn observe(&self, event: &SecurityEvent) -> Vec<Anomaly> {
        self.observe_at(event, Instant::now(), true)
    }

    /// Feeds one event at time `now`. `count_status` says whether its status code counts
    /// towards the 401/429 bursts (the collector passes `false` for events inside an audited
    /// request, whose request record counts instead).
    pub fn observe_at(
        &self,
        event: &SecurityEvent,
        now: Instant,
        count_status: bool,
    ) -> Vec<Anomaly> {
        let status = if count_status {
            event.status_code()
        } else {
            None
        };
        self.observe_parts(
            Parts {
                failure: classify_failure(event),
                status,
                user: event.user_id(),
                client: event.client_address(),
                server: event.server_address(),
            },
            now,
        )
    }

    /// The detector's core, on borrowed parts (no event to build for request records).
    pub(crate) fn observe_parts(&self, parts: Parts<'_>, now: Instant) -> Vec<Anomaly> {
        let mut signals: [bool; 7] = [false; 7];
        if let Some(kind) = parts.failure {
            signals[kind.index()] = true;
        }
        match parts.status {
            Some(401) => signals[AnomalyKind::UnauthorizedBurst.index()] = true,
            Some(429) => signals[AnomalyKind::RateLimitedBurst.index()] = true,
            _ => {}
        }
        let user = parts.user;
        // Clients are tracked by network (an IPv6 /64 by default), not by address.
        let prefix = self.config.ipv6_prefix;
        let client = parts.client.map(|c| portcullis_core::peer_key(c, prefix));
        let client = client.as_deref();
        let peer = client.or(parts.server);
        let any_signal = signals.iter().any(|s| *s);
        let track_address = user.is_some()
            && client.is_some()
            && self
                .config
                .get_threshold(AnomalyKind::NewClientAddresses)
                .is_some();
        if !any_signal && !track_address {
            return Vec::new();
        }

        let mut out = Vec::new();
        let subjects = [
            user.map(|u| Subject::Identity(u.to_owned())),
            peer.map(|p| Subject::Peer(p.to_owned())),
        ];
        for subject in subjects.into_iter().flatten() {
            let is_identity = matches!(subject, Subject::Identity(_));
            if !any_signal && !is_identity {
                continue;
            }
            let shard = &self.shards[self.shard_of(&subject)];
            let Ok(mut shard) = shard.lock() else {
                continue;
            };
            let mut fired = Vec::new();
            {
                let state = shard.get_or_insert_mut(subject.clone(), SubjectState::default);
                for kind in AnomalyKind::ALL {
                    let signalled = if kind == AnomalyKind::NewClientAddresses {
                        is_identity
                            && client.is_some_and(|c| {
                                remember_address(state, c, self.config.max_known_addresses)
                            })
                    } else {
                        signals[kind.index()]
                    };
                    if !signalled {
                        continue;
                    }
                    let Some(threshold) = self.config.get_threshold(kind) else {
                        continue;
                    };
                    if hit(state, kind, threshold, now) {
                        fired.push((kind, threshold));
                    }
                }
            }
            drop(shard);
            for (kind, threshold) in fired {
                out.push(Anomaly {
                    kind,
                    subject: subject.clone(),
                    threshold,
                    user_id: user.map(str::to_owned),
                    client_address: client.map(str::to_owned),
                    server_address: parts.server.map(str::to_owned),
                    detected_at: OffsetDateTime::now_utc(),
                });
            }
        }
        out
    }

    fn shard_of(&self, subject: &Subject) -> usize {
        (self.hasher.hash_one(subject) as usize) % SHARDS
    }
}

/// What the detector looks at in one event or record.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Parts<'a> {
    pub(crate) failure: Option<AnomalyKind>,
    pub(crate) status: Option<u64>,
    pub(crate) user: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
    pub(crate) server: Option<&'a str>,
}

/// The signal a failed event carries, if any.
fn classify_failure(event: &SecurityEvent) -> Option<AnomalyKind> {
    if !event.is_failure() {
        return None;
    }
    let reason = event.reason().unwrap_or("");
    let action = event.action().unwrap_or("");
    if reason == reason::REPLAYED || reason == "replay" || reason.ends_with("_replayed") {
        return Some(AnomalyKind::Replays);
    }
    if reason == reason::TOKEN_REUSE
        || (action == action::TOKEN_REFRESH && reason == reason::INVALID_GRANT)
    {
        return Some(AnomalyKind::TokenReuse);
    }
    if action == action::PIN_CHECK
        || action == "pin.verify"
        || action.starts_with("tls.pin.")
        || reason.starts_with(reason::PIN_MISMATCH)
    {
        return Some(AnomalyKind::PinViolations);
    }
    if action == action::SIGNATURE_VERIFY {
        return Some(AnomalyKind::SignatureFailures);
    }
    None
}

/// Remembers `address` for the identity; returns `true` if it is new and the identity
/// already had a baseline address.
fn remember_address(state: &mut SubjectState, address: &str, max: usize) -> bool {
    if let Some(pos) = state.known_addresses.iter().position(|a| a == address) {
        // Most recently seen last.
        if let Some(a) = state.known_addresses.remove(pos) {
            state.known_addresses.push_back(a);
        }
        return false;
    }
    let had_baseline = !state.known_addresses.is_empty();
    if state.known_addresses.len() >= max {
        state.known_addresses.pop_front();
    }
    let mut a = address.to_owned();
    schema::truncate(&mut a, 64);
    state.known_addresses.push_back(a);
    had_baseline
}

/// Records one signal; returns `true` if the rule fires.
fn hit(state: &mut SubjectState, kind: AnomalyKind, threshold: Threshold, now: Instant) -> bool {
    let window = match state.windows.iter_mut().position(|(k, _)| *k == kind) {
        Some(i) => &mut state.windows[i].1,
        None => {
            state.windows.push((kind, Window::default()));
            let last = state.windows.len() - 1;
            &mut state.windows[last].1
        }
    };
    while let Some(&front) = window.hits.front() {
        if now.saturating_duration_since(front) >= threshold.window {
            window.hits.pop_front();
        } else {
            break;
        }
    }
    window.hits.push_back(now);
    let cap = threshold.count as usize;
    while window.hits.len() > cap {
        window.hits.pop_front();
    }
    if window.quiet_until.is_some_and(|q| now < q) {
        return false;
    }
    if window.hits.len() >= cap {
        window.hits.clear();
        window.quiet_until = Some(now + threshold.window);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::outcome;

    fn failure(action: &'static str) -> SecurityEvent {
        SecurityEvent::new("portcullis::test")
            .with(field::EVENT_ACTION, action)
            .with(field::EVENT_OUTCOME, outcome::FAILURE)
    }

    fn detector(config: DetectorConfig) -> Detector {
        Detector::new(config).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn signature_failures_fire_at_threshold_within_window() {
        let d = detector(DetectorConfig::new().threshold(
            AnomalyKind::SignatureFailures,
            Threshold::new(3, Duration::from_secs(60)),
        ));
        let ev = failure(action::SIGNATURE_VERIFY).with(field::USER_ID, "key-1");
        assert!(d.observe(&ev).is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(d.observe(&ev).is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        let fired = d.observe(&ev);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind(), AnomalyKind::SignatureFailures);
        assert_eq!(fired[0].subject(), &Subject::Identity("key-1".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_client_rotating_addresses_in_its_64_is_one_peer_and_one_penalty() {
        let d = detector(DetectorConfig::new().threshold(
            AnomalyKind::UnauthorizedBurst,
            Threshold::new(3, Duration::from_secs(60)),
        ));
        let from = |addr: &str| {
            SecurityEvent::new("portcullis::audit")
                .with(field::HTTP_RESPONSE_STATUS_CODE, 401u16)
                .with(field::CLIENT_ADDRESS, addr.to_owned())
        };
        assert!(d.observe(&from("2001:db8:5:6::1")).is_empty());
        assert!(d.observe(&from("2001:db8:5:6::2")).is_empty());
        let fired = d.observe(&from("2001:db8:5:6:ffff::3"));
        assert_eq!(fired.len(), 1, "three addresses of one /64 are one peer");
        assert_eq!(
            fired[0].subject(),
            &Subject::Peer("2001:db8:5:6::/64".into())
        );

        let penalties = crate::PenaltyBox::block_for(Duration::from_secs(60));
        penalties.penalize(fired[0].subject().clone());
        assert_ne!(
            penalties.check(None, Some("2001:db8:5:6::9999")),
            crate::Verdict::Allow,
            "the next address of the same /64 is still penalized"
        );
        assert_eq!(
            penalties.check(None, Some("2001:db8:5:7::1")),
            crate::Verdict::Allow
        );
        let per_address = crate::PenaltyBox::block_for(Duration::from_secs(60)).ipv6_prefix(128);
        per_address.penalize(Subject::Peer("2001:db8:5:6::1".into()));
        assert_eq!(
            per_address.check(None, Some("2001:db8:5:6::2")),
            crate::Verdict::Allow
        );
    }

    #[tokio::test(start_paused = true)]
    async fn signals_older_than_the_window_slide_out() {
        let d = detector(DetectorConfig::new().threshold(
            AnomalyKind::SignatureFailures,
            Threshold::new(3, Duration::from_secs(60)),
        ));
        let ev = failure(action::SIGNATURE_VERIFY).with(field::USER_ID, "key-1");
        for _ in 0..5 {
            assert!(d.observe(&ev).is_empty());
            assert!(d.observe(&ev).is_empty());
            // The first two slide out before the third arrives.
            tokio::time::advance(Duration::from_secs(61)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_fires_once_per_window() {
        let d = detector(DetectorConfig::new());
        let ev = failure(action::PIN_CHECK).with(field::SERVER_ADDRESS, "api.example.com");
        let fired: usize = (0..100).map(|_| d.observe(&ev).len()).sum();
        assert_eq!(fired, 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        let fired = d.observe(&ev);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind(), AnomalyKind::PinViolations);
        assert_eq!(fired[0].subject(), &Subject::Peer("api.example.com".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn classifies_replays_token_reuse_and_status_bursts() {
        let d = detector(
            DetectorConfig::new()
                .threshold(
                    AnomalyKind::UnauthorizedBurst,
                    Threshold::new(2, Duration::from_secs(1)),
                )
                .threshold(
                    AnomalyKind::RateLimitedBurst,
                    Threshold::new(2, Duration::from_secs(1)),
                )
                .threshold(
                    AnomalyKind::Replays,
                    Threshold::new(1, Duration::from_secs(1)),
                ),
        );
        let replay = failure(action::SIGNATURE_VERIFY)
            .with(field::EVENT_REASON, reason::REPLAYED)
            .with(field::USER_ID, "k");
        let kinds: Vec<_> = d.observe(&replay).iter().map(Anomaly::kind).collect();
        assert_eq!(kinds, [AnomalyKind::Replays]);

        let reuse = failure(action::TOKEN_VALIDATE)
            .with(field::EVENT_REASON, reason::TOKEN_REUSE)
            .with(field::USER_ID, "u");
        let kinds: Vec<_> = d.observe(&reuse).iter().map(Anomaly::kind).collect();
        assert_eq!(kinds, [AnomalyKind::TokenReuse]);
        let invalid_grant = failure(action::TOKEN_REFRESH)
            .with(field::EVENT_REASON, reason::INVALID_GRANT)
            .with(field::SERVER_ADDRESS, "auth.example.com");
        let kinds: Vec<_> = d
            .observe(&invalid_grant)
            .iter()
            .map(Anomaly::kind)
            .collect();
        assert_eq!(kinds, [AnomalyKind::TokenReuse]);

        // The pin layer's shape: dotted action, reason with a suffix.
        let pin = failure("tls.pin.check")
            .with(field::EVENT_REASON, "pin_mismatch_entry_expired")
            .with(field::SERVER_ADDRESS, "api.example.com");
        let kinds: Vec<_> = d.observe(&pin).iter().map(Anomaly::kind).collect();
        assert_eq!(kinds, [AnomalyKind::PinViolations]);

        // An empty user.id (a layer writing `keyid.unwrap_or("")`) is no identity.
        let anon = failure(action::SIGNATURE_VERIFY).with(field::USER_ID, "");
        assert!(d.observe(&anon).is_empty());
        // k, u, auth.example.com, api.example.com: no subject for the empty id.
        assert_eq!(d.tracked_subjects(), 4);

        let r401 = SecurityEvent::new("portcullis::audit")
            .with(field::HTTP_RESPONSE_STATUS_CODE, 401u16)
            .with(field::CLIENT_ADDRESS, "10.0.0.1");
        assert!(d.observe(&r401).is_empty());
        // Not counted: a status inside an audited request.
        assert!(d.observe_at(&r401, Instant::now(), false).is_empty());
        let fired = d.observe(&r401);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind(), AnomalyKind::UnauthorizedBurst);
        assert_eq!(fired[0].subject(), &Subject::Peer("10.0.0.1".into()));

        let r429 = SecurityEvent::new("portcullis::audit")
            .with(field::HTTP_RESPONSE_STATUS_CODE, 429u16)
            .with(field::USER_ID, "u");
        assert!(d.observe(&r429).is_empty());
        let kinds: Vec<_> = d.observe(&r429).iter().map(Anomaly::kind).collect();
        assert_eq!(kinds, [AnomalyKind::RateLimitedBurst]);

        // A success with a reason is not a signal.
        let ok = SecurityEvent::new("portcullis::attest")
            .with(field::EVENT_ACTION, action::SIGNATURE_VERIFY)
            .with(field::EVENT_OUTCOME, outcome::SUCCESS)
            .with(field::USER_ID, "k");
        for _ in 0..10 {
            assert!(d.observe(&ok).is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn new_client_addresses_for_one_identity() {
        let d = detector(DetectorConfig::new().threshold(
            AnomalyKind::NewClientAddresses,
            Threshold::new(2, Duration::from_secs(600)),
        ));
        let from = |addr: &str| {
            SecurityEvent::new("portcullis::audit")
                .with(field::USER_ID, "alice")
                .with(field::CLIENT_ADDRESS, addr)
        };
        // Baseline, then the same address again: nothing.
        assert!(d.observe(&from("192.0.2.1")).is_empty());
        assert!(d.observe(&from("192.0.2.1")).is_empty());
        // One new address: below threshold.
        assert!(d.observe(&from("198.51.100.7")).is_empty());
        assert!(d.observe(&from("192.0.2.1")).is_empty());
        // A second new address within the window fires, for the identity only.
        let fired = d.observe(&from("203.0.113.9"));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind(), AnomalyKind::NewClientAddresses);
        assert_eq!(fired[0].subject(), &Subject::Identity("alice".into()));
        assert_eq!(fired[0].client_address(), Some("203.0.113.9"));
    }

    #[tokio::test(start_paused = true)]
    async fn new_addresses_spread_over_time_do_not_fire() {
        let d = detector(DetectorConfig::new().threshold(
            AnomalyKind::NewClientAddresses,
            Threshold::new(2, Duration::from_secs(600)),
        ));
        for i in 0..6 {
            let ev = SecurityEvent::new("portcullis::audit")
                .with(field::USER_ID, "bob")
                .with(field::CLIENT_ADDRESS, format!("192.0.2.{i}"));
            assert!(d.observe(&ev).is_empty(), "address {i}");
            tokio::time::advance(Duration::from_secs(601)).await;
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_identities() {
        let d = detector(DetectorConfig::new().max_subjects(1_000));
        let cap = d.capacity();
        assert!((1_000..1_100).contains(&cap), "capacity {cap}");
        for i in 0..100_000u32 {
            let ev = failure(action::SIGNATURE_VERIFY)
                .with(field::USER_ID, format!("user-{i}"))
                .with(
                    field::CLIENT_ADDRESS,
                    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                );
            d.observe(&ev);
        }
        let tracked = d.tracked_subjects();
        assert!(tracked <= cap, "tracked {tracked} > capacity {cap}");
        assert!(tracked >= 1_000 / 2, "tracked {tracked}");
    }

    #[test]
    fn rejects_zero_thresholds_and_capacity() {
        let err = Detector::new(
            DetectorConfig::new()
                .threshold(AnomalyKind::Replays, Threshold::new(0, Duration::ZERO)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("replays"), "{err}");
        assert!(Detector::new(DetectorConfig::new().max_subjects(0)).is_err());
    }
}
