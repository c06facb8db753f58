//! What happens when an anomaly fires: user hooks and the ready-made [`PenaltyBox`].

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::detector::{Anomaly, AnomalyKind, Subject};

/// Called for each anomaly the detector raises.
///
/// Implemented for closures `Fn(&Anomaly)`, for `()` (does nothing) and by
/// [`PenaltyBox`]. A hook runs on the thread that emitted the event that made the anomaly
/// fire, possibly inside the `tracing` dispatcher: it must be quick, must not block, and
/// `tracing` events it emits itself may be dropped (the anomaly event itself is emitted by
/// the audit layer once the request completes, or by [`Auditor::flush`](crate::Auditor::flush)).
pub trait AnomalyHook: Send + Sync + 'static {
    /// Reacts to one anomaly.
    fn on_anomaly(&self, anomaly: &Anomaly);
}

impl<F> AnomalyHook for F
where
    F: Fn(&Anomaly) + Send + Sync + 'static,
{
    fn on_anomaly(&self, anomaly: &Anomaly) {
        self(anomaly)
    }
}

impl AnomalyHook for () {
    fn on_anomaly(&self, _anomaly: &Anomaly) {}
}

/// What a [`PenaltyBox`] does to a penalized identity or peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Penalty {
    /// Refuse every request for `period`.
    Block {
        /// How long.
        period: Duration,
    },
    /// Let one request through per `interval` for `period` (a much harder rate limit).
    Throttle {
        /// How long.
        period: Duration,
        /// At most one request per this interval.
        interval: Duration,
    },
}

impl Penalty {
    fn period(&self) -> Duration {
        match *self {
            Penalty::Block { period } | Penalty::Throttle { period, .. } => period,
        }
    }
}

/// The decision of [`PenaltyBox::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Blocked; the block ends after `retry_after`.
    Blocked {
        /// Time left.
        retry_after: Duration,
    },
    /// Throttled; the next request is allowed after `retry_after`.
    Throttled {
        /// Time until the next allowed request.
        retry_after: Duration,
    },
}

#[derive(Debug)]
struct Entry {
    until: Instant,
    next_allowed: Instant,
}

struct Inner {
    penalty: Penalty,
    kinds: Vec<AnomalyKind>,
    ipv6_prefix: u8,
    entries: Mutex<LruCache<Subject, Entry>>,
}

/// The ready hook for adaptive enforcement: penalizes (blocks or throttles) the identity or
/// peer an anomaly is about, for a period. Register it with
/// [`AuditorBuilder::on_anomaly`](crate::AuditorBuilder::on_anomaly) and put an
/// [`EnforceLayer`](crate::EnforceLayer) with a clone of it in the server stack.
///
/// Memory is bounded: at most `max_entries` subjects are held (10,000 by default; the least
/// recently penalized go first) and expired entries are dropped when met. Time is
/// [`tokio::time::Instant`].
///
/// ```
/// use std::time::Duration;
/// use portcullis_audit::{PenaltyBox, Subject, Verdict};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let penalties = PenaltyBox::block_for(Duration::from_secs(300));
/// penalties.penalize(Subject::Identity("mallory".into()));
/// assert!(matches!(penalties.check(Some("mallory"), None), Verdict::Blocked { .. }));
/// assert_eq!(penalties.check(Some("alice"), None), Verdict::Allow);
/// # }
/// ```
///
/// Peers are held by network: an IPv6 address by its /64 ([`PenaltyBox::ipv6_prefix`]), so a
/// penalized host cannot step to the next address of its prefix.
#[derive(Clone)]
pub struct PenaltyBox {
    inner: Arc<Inner>,
}

impl fmt::Debug for PenaltyBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PenaltyBox")
            .field("penalty", &self.inner.penalty)
            .field("kinds", &self.inner.kinds)
            .field("len", &self.len())
            .finish()
    }
}

impl PenaltyBox {
    /// Blocks a penalized subject for `period`.
    pub fn block_for(period: Duration) -> Self {
        Self::new(Penalty::Block { period })
    }

    /// Lets a penalized subject through at most once per `interval`, for `period`.
    pub fn throttle_for(period: Duration, interval: Duration) -> Self {
        Self::new(Penalty::Throttle { period, interval })
    }

    /// A penalty box applying `penalty`, on every kind of anomaly.
    pub fn new(penalty: Penalty) -> Self {
        Self::with_capacity(penalty, AnomalyKind::ALL.to_vec(), 10_000)
    }

    fn with_capacity(penalty: Penalty, kinds: Vec<AnomalyKind>, max: usize) -> Self {
        Self::with_settings(penalty, kinds, max, portcullis_core::DEFAULT_IPV6_PREFIX)
    }

    fn with_settings(penalty: Penalty, kinds: Vec<AnomalyKind>, max: usize, prefix: u8) -> Self {
        let cap = NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN);
        PenaltyBox {
            inner: Arc::new(Inner {
                penalty,
                kinds,
                ipv6_prefix: prefix.min(128),
                entries: Mutex::new(LruCache::new(cap)),
            }),
        }
    }

    /// Only these kinds of anomaly penalize (all of them by default).
    pub fn on_kinds(self, kinds: &[AnomalyKind]) -> Self {
        let max = self.capacity();
        Self::with_settings(
            self.inner.penalty,
            kinds.to_vec(),
            max,
            self.inner.ipv6_prefix,
        )
    }

    /// Holds at most `max` penalized subjects (at least 1).
    pub fn max_entries(self, max: usize) -> Self {
        let kinds = self.inner.kinds.clone();
        Self::with_settings(self.inner.penalty, kinds, max, self.inner.ipv6_prefix)
    }

    /// Looks a client up by its IPv6 network of `bits` bits (default 64, as the detector's
    /// [`DetectorConfig::ipv6_prefix`](crate::DetectorConfig::ipv6_prefix), which names the
    /// penalized peers): one penalized address blocks its whole /64.
    pub fn ipv6_prefix(self, bits: u8) -> Self {
        let kinds = self.inner.kinds.clone();
        Self::with_settings(self.inner.penalty, kinds, self.capacity(), bits)
    }

    /// The penalty applied.
    pub fn penalty(&self) -> Penalty {
        self.inner.penalty
    }

    /// Penalizes `subject` from now on, for the penalty's period.
    pub fn penalize(&self, subject: Subject) {
        let subject = match subject {
            Subject::Peer(p) => {
                Subject::Peer(portcullis_core::peer_key(&p, self.inner.ipv6_prefix).into_owned())
            }
            other => other,
        };
        let now = Instant::now();
        let until = now + self.inner.penalty.period();
        if let Ok(mut entries) = self.inner.entries.lock() {
            entries.put(
                subject,
                Entry {
                    until,
                    next_allowed: now,
                },
            );
        }
    }

    /// Lifts the penalty of `subject`.
    pub fn forgive(&self, subject: &Subject) {
        if let Ok(mut entries) = self.inner.entries.lock() {
            entries.pop(subject);
        }
    }

    /// Decides on a request from `identity` and/or `peer` (a client address). A throttled
    /// subject that is let through uses up its interval.
    pub fn check(&self, identity: Option<&str>, peer: Option<&str>) -> Verdict {
        if identity.is_none() && peer.is_none() {
            return Verdict::Allow;
        }
        let now = Instant::now();
        let Ok(mut entries) = self.inner.entries.lock() else {
            return Verdict::Allow;
        };
        if entries.is_empty() {
            return Verdict::Allow;
        }
        let mut verdict = Verdict::Allow;
        let subjects = [
            identity.map(|i| Subject::Identity(i.to_owned())),
            peer.map(|p| {
                Subject::Peer(portcullis_core::peer_key(p, self.inner.ipv6_prefix).into_owned())
            }),
        ];
        for subject in subjects.into_iter().flatten() {
            let Some(entry) = entries.get_mut(&subject) else {
                continue;
            };
            if now >= entry.until {
                entries.pop(&subject);
                continue;
            }
            let v = match self.inner.penalty {
                Penalty::Block { .. } => Verdict::Blocked {
                    retry_after: entry.until - now,
                },
                Penalty::Throttle { interval, .. } => {
                    if now >= entry.next_allowed {
                        entry.next_allowed = now + interval;
                        Verdict::Allow
                    } else {
                        Verdict::Throttled {
                            retry_after: entry.next_allowed - now,
                        }
                    }
                }
            };
            if verdict == Verdict::Allow {
                verdict = v;
            }
        }
        verdict
    }

    /// How many subjects are held now (expired ones included until met).
    pub fn len(&self) -> usize {
        self.inner.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// `true` if nobody is penalized.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most subjects held at once.
    pub fn capacity(&self) -> usize {
        self.inner
            .entries
            .lock()
            .map(|e| e.cap().get())
            .unwrap_or(0)
    }
}

impl AnomalyHook for PenaltyBox {
    fn on_anomaly(&self, anomaly: &Anomaly) {
        if self.inner.kinds.contains(&anomaly.kind()) {
            self.penalize(anomaly.subject().clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn block_expires_after_its_period() {
        let pb = PenaltyBox::block_for(Duration::from_secs(30));
        pb.penalize(Subject::Peer("10.0.0.9".into()));
        assert_eq!(
            pb.check(None, Some("10.0.0.9")),
            Verdict::Blocked {
                retry_after: Duration::from_secs(30)
            }
        );
        assert_eq!(pb.check(Some("alice"), Some("10.0.0.1")), Verdict::Allow);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(
            pb.check(Some("anyone"), Some("10.0.0.9")),
            Verdict::Blocked { .. }
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pb.check(None, Some("10.0.0.9")), Verdict::Allow);
        assert!(pb.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_lets_one_request_per_interval() {
        let pb = PenaltyBox::throttle_for(Duration::from_secs(60), Duration::from_secs(10));
        pb.penalize(Subject::Identity("bob".into()));
        assert_eq!(pb.check(Some("bob"), None), Verdict::Allow);
        assert_eq!(
            pb.check(Some("bob"), None),
            Verdict::Throttled {
                retry_after: Duration::from_secs(10)
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pb.check(Some("bob"), None), Verdict::Allow);
        assert!(matches!(
            pb.check(Some("bob"), None),
            Verdict::Throttled { .. }
        ));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(pb.check(Some("bob"), None), Verdict::Allow);
        assert_eq!(pb.check(Some("bob"), None), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn only_configured_kinds_penalize() {
        let pb = PenaltyBox::block_for(Duration::from_secs(60)).on_kinds(&[AnomalyKind::Replays]);
        let anomaly = |kind| Anomaly {
            kind,
            subject: Subject::Identity("k".into()),
            threshold: crate::Threshold::new(1, Duration::from_secs(1)),
            user_id: Some("k".into()),
            client_address: None,
            server_address: None,
            detected_at: time::OffsetDateTime::now_utc(),
        };
        pb.on_anomaly(&anomaly(AnomalyKind::UnauthorizedBurst));
        assert_eq!(pb.check(Some("k"), None), Verdict::Allow);
        pb.on_anomaly(&anomaly(AnomalyKind::Replays));
        assert!(matches!(pb.check(Some("k"), None), Verdict::Blocked { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_box_memory_is_bounded() {
        let pb = PenaltyBox::block_for(Duration::from_secs(60)).max_entries(500);
        for i in 0..100_000 {
            pb.penalize(Subject::Identity(format!("id-{i}")));
        }
        assert_eq!(pb.capacity(), 500);
        assert!(pb.len() <= 500);
        // The most recent ones are still blocked.
        assert!(matches!(
            pb.check(Some("id-99999"), None),
            Verdict::Blocked { .. }
        ));
    }
}
