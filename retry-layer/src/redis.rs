//! A GCRA rate limiter in Redis, so replicas share quotas (feature `redis`).
//!
//! Every check is one atomic Lua script (`EVALSHA`, loaded on first use): it reads the key's
//! theoretical arrival time, decides with Redis' own clock (so replicas with skewed clocks
//! agree), writes the new time with an expiry of at most one burst period (so idle keys cost
//! Redis nothing), and returns the decision with what the `RateLimit-*` headers need.
//!
//! [`RedisRateLimitLayer`] is the server-side layer on top of it (429 with `Retry-After` and
//! `RateLimit-*` headers, like [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)).
//!
//! # Outages
//!
//! The connection heals itself: a dropped connection (a restart, a crash, a failover that
//! resets connections) is reopened in the background by a
//! [`ConnectionManager`](redis::aio::ConnectionManager), with backoff at most one second
//! apart; a connection that stops answering (a frozen server, a primary cut off the network)
//! or that lands on a read-only replica is replaced. Each check waits at most its
//! [call timeout](RedisRateLimiter::call_timeout) (500 ms by default) and then fails with a
//! [`RedisLimitError`]: the layer answers it with its [`OnBackendError`] policy (503 by
//! default) for as long as the outage lasts, and checks succeed again as soon as Redis
//! answers, without restarting the app.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::Quota;
use http::{Request, Response, StatusCode, header::HeaderValue};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower_layer::Layer;
use tower_service::Service;

use crate::rate_limit::{Allowed, Denied, KeyExtractor, MissingKey, RequestHead};

const GCRA: &str = r#"
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local limit = burst * t
local new_tat = tat + t
local allow_at = new_tat - limit
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((limit - (new_tat - now)) / t), 0, new_tat - now}
"#;

/// A failure talking to Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisLimitError {
    /// The connection or the script failed.
    Redis(redis::RedisError),
    /// The script answered something unexpected.
    BadReply(String),
    /// Redis did not answer within the call timeout.
    Timeout(Duration),
}

impl fmt::Display for RedisLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(e) => write!(f, "redis rate limiter unavailable: {e}"),
            Self::BadReply(what) => write!(
                f,
                "redis rate limiter got an unexpected script reply: {what} (expected 4 integers)"
            ),
            Self::Timeout(after) => write!(
                f,
                "redis rate limiter did not answer within {after:?}; the connection is replaced"
            ),
        }
    }
}

impl std::error::Error for RedisLimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) => Some(e),
            Self::BadReply(_) | Self::Timeout(_) => None,
        }
    }
}

impl From<redis::RedisError> for RedisLimitError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

/// The default bound on one check, connection included.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// How the connection manager reconnects: quickly, then at most one second apart, and one
/// connection attempt never longer than a second.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        // Every call is bounded by the limiter's own timeout, which also replaces a
        // connection that stopped answering (the manager itself only reconnects on errors).
        .set_response_timeout(None)
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

/// A self-healing connection: the current manager, replaced when it stops answering.
struct Backend {
    client: redis::Client,
    /// The manager in use and its generation, bumped on each replacement.
    current: Mutex<(u64, ConnectionManager)>,
}

impl Backend {
    async fn connect(client: redis::Client) -> redis::RedisResult<Self> {
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
        Ok(Self {
            client,
            current: Mutex::new((0, manager)),
        })
    }

    fn get(&self) -> (u64, ConnectionManager) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the manager of `generation` (once, however many calls saw it fail) with a
    /// fresh one that connects on first use.
    fn replace(&self, generation: u64, why: &str) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config()) {
            Ok(fresh) => {
                *current = (generation + 1, fresh);
                tracing::warn!(
                    target: "portcullis::ratelimit",
                    {
                        "event.kind" = "event",
                        "event.category" = "network",
                        "event.action" = "rate_limit.reconnect",
                        "event.outcome" = "success",
                        "event.reason" = why,
                    },
                    "redis connection replaced"
                );
            }
            Err(e) => tracing::error!(
                target: "portcullis::ratelimit",
                {
                    "event.kind" = "event",
                    "event.category" = "network",
                    "event.action" = "rate_limit.reconnect",
                    "event.outcome" = "failure",
                    "event.reason" = %e,
                },
                "redis connection could not be replaced"
            ),
        }
    }
}

/// Whether `e` means the connection must be replaced: the manager reconnects by itself on a
/// dropped connection, not on a timeout or a primary turned read-only replica.
fn needs_new_connection(e: &redis::RedisError) -> bool {
    e.is_timeout() || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A GCRA limiter whose state lives in Redis. Clones share the connection, which reconnects
/// by itself (see [Outages](crate::redis#outages)).
#[derive(Clone)]
pub struct RedisRateLimiter {
    backend: Arc<Backend>,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
    interval_us: u64,
    burst: u32,
    timeout: Duration,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Connects to `url` (`redis://host:port/db`) and limits to `quota`, with keys stored
    /// under `prefix:`. The connection reconnects by itself after an outage.
    ///
    /// # Errors
    /// When the URL is malformed or Redis cannot be reached now (the message never contains
    /// the URL, which may hold a password).
    pub async fn connect(url: &str, quota: Quota, prefix: &str) -> Result<Self, RedisLimitError> {
        let client = redis::Client::open(url)?;
        let backend = Backend::connect(client).await?;
        Ok(Self {
            backend: Arc::new(backend),
            script: Arc::new(redis::Script::new(GCRA)),
            prefix: prefix.into(),
            interval_us: (quota.replenish_interval().as_micros() as u64).max(1),
            burst: quota.burst_size().get(),
            timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Bounds each check, waiting for a reconnection included (default 500 ms). A check
    /// that takes longer fails with [`RedisLimitError::Timeout`] and the connection is
    /// replaced.
    #[must_use]
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Counts one request for `key`, atomically across every instance sharing the Redis.
    ///
    /// # Errors
    /// [`RedisLimitError`] when Redis fails; the inner `Result` is the decision.
    pub async fn check(&self, key: &str) -> Result<Result<Allowed, Denied>, RedisLimitError> {
        let (generation, mut conn) = self.backend.get();
        let mut invocation = self.script.key(format!("{}:{}", self.prefix, key));
        invocation.arg(self.interval_us).arg(self.burst);
        let reply: Vec<i64> =
            match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    if needs_new_connection(&e) {
                        self.backend.replace(generation, "redis error");
                    }
                    return Err(e.into());
                }
                Err(_) => {
                    self.backend
                        .replace(generation, "no answer within the call timeout");
                    return Err(RedisLimitError::Timeout(self.timeout));
                }
            };
        let &[allowed, remaining, retry_us, reset_us] = reply.as_slice() else {
            return Err(RedisLimitError::BadReply(format!("{} values", reply.len())));
        };
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(if allowed == 1 {
            Ok(Allowed {
                limit: self.burst,
                remaining: (remaining.max(0) as u32).min(self.burst),
                reset: us(reset_us),
            })
        } else {
            Err(Denied {
                limit: self.burst,
                retry_after: us(retry_us),
            })
        })
    }
}

/// What the Redis layer does when Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnBackendError {
    /// Answer `503 Service Unavailable` with `Retry-After: 1` (the default: limits hold).
    #[default]
    FailClosed,
    /// Let the request through unlimited (and log it).
    FailOpen,
}

/// Server-side rate limiting shared by replicas through Redis (see the module docs).
pub struct RedisRateLimitLayer<X> {
    limiter: RedisRateLimiter,
    extractor: Arc<X>,
    missing: MissingKey,
    on_error: OnBackendError,
}

impl<X> Clone for RedisRateLimitLayer<X> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            missing: self.missing,
            on_error: self.on_error,
        }
    }
}

impl<X> fmt::Debug for RedisRateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("missing", &self.missing)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl<X> RedisRateLimitLayer<X>
where
    X: KeyExtractor,
    X::Key: fmt::Display,
{
    /// Limits each key from `extractor` with `limiter`.
    pub fn new(limiter: RedisRateLimiter, extractor: X) -> Self {
        Self {
            limiter,
            extractor: Arc::new(extractor),
            missing: MissingKey::Reject,
            on_error: OnBackendError::FailClosed,
        }
    }

    /// What to do with requests that have no key (default: reject with 403).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.missing = policy;
        self
    }

    /// What to do when Redis fails (default: fail closed with 503).
    pub fn on_backend_error(mut self, policy: OnBackendError) -> Self {
        self.on_error = policy;
        self
    }
}

impl<S, X> Layer<S> for RedisRateLimitLayer<X> {
    type Service = RedisRateLimit<S, X>;

    fn layer(&self, inner: S) -> RedisRateLimit<S, X> {
        RedisRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware made by [`RedisRateLimitLayer`].
pub struct RedisRateLimit<S, X> {
    inner: S,
    layer: RedisRateLimitLayer<X>,
}

impl<S: Clone, X> Clone for RedisRateLimit<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, X> fmt::Debug for RedisRateLimit<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, X> RedisRateLimit<S, X> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Response future of [`RedisRateLimit`] (boxed: every call waits on the network anyway).
pub type RedisResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn answer<B: Default>(status: StatusCode, retry_after: Option<u64>, limit: u32) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = status;
    if let Some(wait) = retry_after {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
        if status == StatusCode::TOO_MANY_REQUESTS {
            crate::rate_limit::add_headers(res.headers_mut(), limit, 0, wait);
        }
    }
    res
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl<S, X, B, ResB> Service<Request<B>> for RedisRateLimit<S, X>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    X: KeyExtractor,
    X::Key: fmt::Display,
    B: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RedisResponseFuture<Response<ResB>, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let key = match self.layer.extractor.extract(&RequestHead::of(&req)) {
            Some(key) => key.to_string(),
            None if self.layer.missing == MissingKey::SharedBucket => "\u{0}keyless".to_string(),
            None => return Box::pin(async { Ok(answer(StatusCode::FORBIDDEN, None, 0)) }),
        };
        let limiter = self.layer.limiter.clone();
        let on_error = self.layer.on_error;
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            match limiter.check(&key).await {
                Ok(Ok(allowed)) => {
                    let mut res = inner.call(req).await?;
                    crate::rate_limit::allowed_headers(res.headers_mut(), &allowed);
                    Ok(res)
                }
                Ok(Err(denied)) => {
                    tracing::warn!(
                        target: "portcullis::ratelimit",
                        {
                            "event.kind" = "event",
                            "event.category" = "network",
                            "event.action" = "rate_limit.check",
                            "event.outcome" = "failure",
                            "event.reason" = "quota exhausted",
                            "http.request.method" = %method,
                            "url.path" = path,
                            "http.response.status_code" = 429
                        },
                        "request refused by the shared rate limiter"
                    );
                    let wait = secs_ceil(denied.retry_after).max(1);
                    Ok(answer(
                        StatusCode::TOO_MANY_REQUESTS,
                        Some(wait),
                        denied.limit,
                    ))
                }
                Err(error) => {
                    tracing::error!(
                        target: "portcullis::ratelimit",
                        {
                            "event.kind" = "event",
                            "event.category" = "network",
                            "event.action" = "rate_limit.backend",
                            "event.outcome" = "failure",
                            "event.reason" = %error,
                            fail_open = on_error == OnBackendError::FailOpen
                        },
                        "shared rate limiter unavailable"
                    );
                    match on_error {
                        OnBackendError::FailOpen => inner.call(req).await,
                        OnBackendError::FailClosed => {
                            Ok(answer(StatusCode::SERVICE_UNAVAILABLE, Some(1), 0))
                        }
                    }
                }
            }
        })
    }
}
