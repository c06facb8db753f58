use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;

use super::Retry;
use super::backoff::FullJitterBackoffMaker;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: FullJitterBackoffMaker,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Arc<dyn Budget + Send + Sync>,
    pub(crate) max_body_bytes: u64,
    pub(crate) add_idempotency_key: bool,
    pub(crate) extra_transient: Option<ErrorPredicate>,
}

pub(crate) type ErrorPredicate =
    Arc<dyn Fn(&(dyn std::error::Error + 'static)) -> bool + Send + Sync>;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_retry_after", &self.max_retry_after)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("add_idempotency_key", &self.add_idempotency_key)
            .field("extra_transient", &self.extra_transient.is_some())
            .finish_non_exhaustive()
    }
}

/// Retries transient failures of replayable requests; never retries security failures.
///
/// Defaults: 3 attempts, full-jitter backoff from 100 ms up to 10 s, 30 s overall deadline,
/// 10 s per attempt, `Retry-After` honoured up to 30 s, tower's default [`TpsBudget`]
/// (10 s window, 10 retries per second, 20 % extra load), bodies buffered up to 64 KiB,
/// idempotent methods only (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) unless the
/// request has an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    config: Arc<Config>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A layer with the defaults above.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                max_attempts: 3,
                backoff: FullJitterBackoffMaker::default(),
                deadline: Some(Duration::from_secs(30)),
                attempt_timeout: Some(Duration::from_secs(10)),
                max_retry_after: Duration::from_secs(30),
                budget: Arc::new(TpsBudget::default()),
                max_body_bytes: 64 * 1024,
                add_idempotency_key: false,
                extra_transient: None,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The maximum number of attempts, the first included (at least 1; 1 disables retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config().max_attempts = attempts.max(1);
        self
    }

    /// Full-jitter exponential backoff: delay `n` is uniform in `[0, min(max, base * 2^n)]`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config().backoff = FullJitterBackoffMaker::new(base, max);
        self
    }

    /// The overall deadline of a request, over all attempts and backoffs.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config().deadline = Some(deadline);
        self
    }

    /// Removes the overall deadline (attempts and the attempt timeout still bound the time).
    pub fn no_deadline(mut self) -> Self {
        self.config().deadline = None;
        self
    }

    /// The timeout of each attempt (a timed-out attempt is transient).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config().attempt_timeout = Some(timeout);
        self
    }

    /// The longest `Retry-After` honoured; a server asking for more gets its answer returned.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config().max_retry_after = max;
        self
    }

    /// The retry budget shared by every clone of this layer (tower's [`TpsBudget`] or any
    /// [`Budget`]), so retries cannot multiply the load on a struggling server.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.config().budget = Arc::new(budget);
        self
    }

    /// The largest request body buffered for replay; longer bodies, and bodies of unknown
    /// length, are streamed once and never retried.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.config().max_body_bytes = bytes;
        self
    }

    /// Also treats errors matching `predicate` as transient (for your own transport's error
    /// types). Security failures (a `rustls::Error` in the chain) stay final whatever it says.
    pub fn retry_errors_where(
        mut self,
        predicate: impl Fn(&(dyn std::error::Error + 'static)) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config().extra_transient = Some(Arc::new(predicate));
        self
    }

    /// Adds a random `Idempotency-Key` to non-idempotent requests that lack one, making them
    /// retryable. Only use it with servers that deduplicate on that header.
    pub fn add_idempotency_key(mut self) -> Self {
        self.config().add_idempotency_key = true;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_config(inner, self.config.clone())
    }
}
