use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{AccessToken, Refresh, RefreshError, TokenError, TokenSet};
use crate::secret::{SecretStore, SecretValue};

const TARGET: &str = "portcullis::token";
/// Lifetimes are capped so a hostile `expires_in` or record cannot overflow the clock.
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// Holds an access token, its refresh token and expiry, persisted in a [`SecretStore`], and
/// refreshes them ahead of expiry.
///
/// * **Refresh ahead**: a token with less than `refresh_margin` left is refreshed. While it
///   still has more than `min_validity` left it keeps being served and one background refresh
///   runs; below that, callers wait for the refresh.
/// * **Single flight**: however many callers wait, one refresh is in flight; each caller
///   re-checks after acquiring the refresh lock, so a finished refresh serves all of them.
/// * **Backoff**: after a failed refresh, callers get [`TokenError::BackingOff`] (or the still
///   valid stale token) until an exponentially growing, jittered delay has passed.
/// * **Shared store**: several processes (or sources) may share one store entry. A refresh
///   holds the store's entry lock ([`SecretStore::lock_entry`]: across processes for a
///   [`FileStore`](crate::secret::FileStore)) from a re-read of the record to the write of the
///   rotated one. If another process already rotated, its newer record is adopted (served
///   when still usable, its refresh token used otherwise) instead of refreshing with a
///   refresh token that is no longer current.
/// * **Rotation**: a rotated refresh token is written to the store (compare-and-swap against
///   the record last read) *before* any waiter gets the new access token.
/// * **invalid_grant**: the record is read again; if another writer stored a newer one
///   meanwhile (a store whose lock does not reach the other process), it is adopted and the
///   refresh retried with it. Otherwise exactly the rejected record is deleted
///   (compare-and-swap, never a blind delete), an alert event is emitted and every caller gets
///   [`TokenError::ReauthenticationRequired`] until [`TokenSource::seed`] or until another
///   process stores a new record (re-read on each call).
/// * **Removed record**: when the entry disappears from the store (another process's refresh
///   token was rejected, an operator deleted it), the source requires re-authentication
///   rather than going on with the tokens it holds in memory.
///
/// Clones share the same state. The record is JSON (`access_token`, `refresh_token`,
/// `expires_at` in Unix seconds) inside the store's encryption.
pub struct TokenSource<R, S> {
    inner: Arc<Inner<R, S>>,
}

impl<R, S> Clone for TokenSource<R, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Config {
    name: String,
    margin: Duration,
    min_validity: Duration,
    default_lifetime: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    timeout: Duration,
}

struct Inner<R, S> {
    refresher: R,
    store: S,
    config: Config,
    state: Mutex<State>,
    refresh_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    refresh_token: Option<Arc<SecretString>>,
    record: Option<SecretValue>,
    generation: u64,
    reauth: bool,
    failures: u32,
    backoff_until: Option<Instant>,
    last_error: Option<String>,
    background: bool,
}

struct Current {
    token: AccessToken,
    expires_at: Instant,
    rejected: bool,
}

enum Usable {
    Fresh(AccessToken),
    Stale(AccessToken),
    No,
}

/// Builds a [`TokenSource`]; see [`TokenSource::builder`].
pub struct TokenSourceBuilder<R, S> {
    refresher: R,
    store: S,
    config: Config,
}

impl<R, S> fmt::Debug for TokenSourceBuilder<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSourceBuilder")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<R: Refresh, S: SecretStore> TokenSourceBuilder<R, S> {
    /// The store entry holding the token record (default `portcullis.token`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Refresh when less than this is left (default 60 s).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.config.margin = margin;
        self
    }

    /// Serve a token during a background refresh only while more than this is left
    /// (default 10 s, capped at the refresh margin).
    pub fn min_validity(mut self, min: Duration) -> Self {
        self.config.min_validity = min;
        self
    }

    /// Lifetime assumed when the server omits `expires_in` (default 5 min).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = lifetime;
        self
    }

    /// Backoff after failed refreshes: starts at `min`, doubles, capped at `max`
    /// (default 1 s to 5 min).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max.max(min);
        self
    }

    /// Time limit for one refresh (default 30 s).
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Loads the stored record (if any) and returns the source.
    ///
    /// # Errors
    ///
    /// [`TokenError::Store`] when the store cannot be read, [`TokenError::Corrupt`] when the
    /// record is not one this crate wrote.
    pub async fn load(self) -> Result<TokenSource<R, S>, TokenError> {
        let mut config = self.config;
        config.min_validity = config.min_validity.min(config.margin);
        let record = self.store.get(&config.name).await?;
        let mut state = State::default();
        if let Some(record) = record {
            let decoded = decode_record(&config.name, &record)?;
            state.apply(decoded, Some(record));
        }
        Ok(TokenSource {
            inner: Arc::new(Inner {
                refresher: self.refresher,
                store: self.store,
                config,
                state: Mutex::new(state),
                refresh_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

impl State {
    fn apply(&mut self, decoded: Decoded, record: Option<SecretValue>) {
        self.generation += 1;
        self.current = decoded.access.map(|access| Current {
            token: AccessToken::new(Arc::new(access), self.generation),
            expires_at: decoded.expires_at,
            rejected: false,
        });
        self.refresh_token = decoded.refresh.map(Arc::new);
        self.record = record;
        self.reauth = false;
        self.failures = 0;
        self.backoff_until = None;
        self.last_error = None;
    }

    /// The token to serve without refreshing, if any.
    fn ready(&self, config: &Config, accept_stale: bool) -> Option<AccessToken> {
        match self.usable(config, Instant::now()) {
            Usable::Fresh(t) => Some(t),
            Usable::Stale(t) if accept_stale => Some(t),
            _ => None,
        }
    }

    fn clear_for_reauthentication(&mut self) {
        self.current = None;
        self.refresh_token = None;
        self.record = None;
        self.reauth = true;
    }

    fn usable(&self, config: &Config, now: Instant) -> Usable {
        match &self.current {
            Some(c) if !c.rejected => {
                let left = c.expires_at.saturating_duration_since(now);
                if left > config.margin {
                    Usable::Fresh(c.token.clone())
                } else if left > config.min_validity {
                    Usable::Stale(c.token.clone())
                } else {
                    Usable::No
                }
            }
            _ => Usable::No,
        }
    }
}

impl<R: Refresh, S: SecretStore> TokenSource<R, S> {
    /// Starts building a source that refreshes with `refresher` and persists in `store`.
    pub fn builder(refresher: R, store: S) -> TokenSourceBuilder<R, S> {
        TokenSourceBuilder {
            refresher,
            store,
            config: Config {
                name: "portcullis.token".into(),
                margin: Duration::from_secs(60),
                min_validity: Duration::from_secs(10),
                default_lifetime: Duration::from_secs(300),
                backoff_min: Duration::from_secs(1),
                backoff_max: Duration::from_secs(300),
                timeout: Duration::from_secs(30),
            },
        }
    }

    /// A usable access token, refreshing first when needed.
    ///
    /// # Errors
    ///
    /// See [`TokenError`]: re-authentication required, backing off after a failure, a failed
    /// refresh or a failing store.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        self.inner.refresh(true).await
    }

    /// The current token when it can be served without waiting (it may start a background
    /// refresh); `None` when the caller must wait for [`TokenSource::token`].
    pub fn cached(&self) -> Option<AccessToken> {
        let inner = &self.inner;
        let mut state = inner.lock();
        match state.usable(&inner.config, Instant::now()) {
            Usable::Fresh(t) => Some(t),
            Usable::Stale(t) => {
                let backing_off = state.backoff_until.is_some_and(|u| Instant::now() < u);
                if !state.background
                    && !backing_off
                    && let Ok(handle) = tokio::runtime::Handle::try_current()
                {
                    state.background = true;
                    drop(state);
                    let inner = inner.clone();
                    handle.spawn(async move {
                        let _ = inner.refresh(false).await;
                        inner.lock().background = false;
                    });
                }
                Some(t)
            }
            Usable::No => None,
        }
    }

    /// Marks `token` as rejected by a server (a 401 `invalid_token`) and returns a token that
    /// is not it, refreshing once however many callers report the same token.
    ///
    /// # Errors
    ///
    /// As for [`TokenSource::token`].
    pub async fn token_after_rejection(
        &self,
        rejected: &AccessToken,
    ) -> Result<AccessToken, TokenError> {
        self.mark_rejected(rejected);
        self.token().await
    }

    /// Marks `token` as rejected so the next [`TokenSource::token`] refreshes.
    pub fn mark_rejected(&self, rejected: &AccessToken) {
        let mut state = self.inner.lock();
        if let Some(c) = state.current.as_mut()
            && c.token.generation() == rejected.generation()
        {
            c.rejected = true;
        }
    }

    /// Stores new tokens (after a login) and clears a re-authentication state. Waits for a
    /// refresh in flight in another process sharing the store (the store's entry lock), so
    /// that refresh does not overwrite the new login.
    ///
    /// # Errors
    ///
    /// [`TokenError::Store`] when the store write fails (memory is not changed then).
    pub async fn seed(&self, tokens: TokenSet) -> Result<(), TokenError> {
        let inner = &self.inner;
        let _guard = inner.refresh_lock.lock().await;
        let _entry = inner.store.lock_entry(&inner.config.name).await?;
        let lifetime = tokens
            .expires_in
            .unwrap_or(inner.config.default_lifetime)
            .min(MAX_LIFETIME);
        let record = encode_record(
            tokens.access_token.as_ref(),
            tokens.refresh_token.as_ref(),
            lifetime,
        );
        inner.store.put(&inner.config.name, record.clone()).await?;
        inner.lock().apply(
            Decoded {
                access: tokens.access_token,
                refresh: tokens.refresh_token,
                expires_at: Instant::now() + lifetime,
            },
            Some(record),
        );
        Ok(())
    }

    /// Time left on the current access token, if there is one (not secret).
    pub fn expires_in(&self) -> Option<Duration> {
        let state = self.inner.lock();
        state
            .current
            .as_ref()
            .map(|c| c.expires_at.saturating_duration_since(Instant::now()))
    }
}

impl<R, S> fmt::Debug for TokenSource<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("TokenSource")
            .field("name", &self.inner.config.name)
            .field("has_access_token", &state.current.is_some())
            .field("has_refresh_token", &state.refresh_token.is_some())
            .field("reauthentication_required", &state.reauth)
            .field("failures", &state.failures)
            .finish_non_exhaustive()
    }
}

impl<R, S> Inner<R, S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many newer records stored by other writers one refresh call follows before it gives up.
const MAX_ADOPTIONS: u32 = 3;

/// What to do after the token endpoint answered `invalid_grant`.
enum AfterInvalidGrant {
    /// Another writer stored a newer record meanwhile: adopt it and go on.
    Adopt,
    /// The refresh token was really rejected.
    Reauthenticate,
}

impl<R: Refresh, S: SecretStore> Inner<R, S> {
    /// Refreshes unless, once the refresh lock is held, a usable token is there.
    /// `accept_stale`: a token inside the refresh margin counts as usable (foreground callers);
    /// the background refresh only stops on a fresh one.
    ///
    /// Under the store's entry lock (which other processes sharing a [`FileStore`] respect),
    /// the record is re-read first: a record another writer stored is adopted (served when
    /// usable, its refresh token used otherwise), and a removed entry means re-authentication.
    ///
    /// [`FileStore`]: crate::secret::FileStore
    async fn refresh(&self, accept_stale: bool) -> Result<AccessToken, TokenError> {
        let _guard = self.refresh_lock.lock().await;
        {
            let state = self.lock();
            // A source that needs re-authentication still re-reads the store below: another
            // process may have stored a new login.
            if !state.reauth {
                if let Some(token) = state.ready(&self.config, accept_stale) {
                    return Ok(token);
                }
                if let Some(until) = state.backoff_until {
                    let now = Instant::now();
                    if now < until {
                        return Err(TokenError::BackingOff {
                            retry_in: until - now,
                            last: state.last_error.clone().unwrap_or_default(),
                        });
                    }
                }
            }
        }

        // One refresh in flight across every process sharing the store: wait for the one
        // holding the lock, then re-read what it stored.
        let _entry = match tokio::time::timeout(
            self.config.timeout,
            self.store.lock_entry(&self.config.name),
        )
        .await
        {
            Ok(Ok(lock)) => lock,
            Ok(Err(e)) => return self.failed(TokenError::Store(e)),
            Err(_) => {
                return self.failed(TokenError::Refresh(RefreshError::Timeout(
                    self.config.timeout,
                )));
            }
        };

        let mut adoptions = 0;
        loop {
            if let Err(e) = self.sync_with_store().await {
                return self.failed(e);
            }
            let refresh_token = {
                let state = self.lock();
                if state.reauth {
                    return Err(TokenError::ReauthenticationRequired);
                }
                if let Some(token) = state.ready(&self.config, accept_stale) {
                    return Ok(token);
                }
                match (&state.refresh_token, &state.current, &state.record) {
                    (Some(rt), _, _) => rt.clone(),
                    (None, None, None) => {
                        return Err(TokenError::NoToken {
                            name: self.config.name.clone(),
                        });
                    }
                    (None, _, _) => return Err(TokenError::NoRefreshToken),
                }
            };

            let outcome = match tokio::time::timeout(
                self.config.timeout,
                self.refresher.refresh(&refresh_token),
            )
            .await
            {
                Ok(Ok(resp)) if resp.access_token.expose_secret().is_empty() => {
                    Err(RefreshError::InvalidResponse("empty access_token"))
                }
                Ok(result) => result,
                Err(_) => Err(RefreshError::Timeout(self.config.timeout)),
            };

            match outcome {
                Ok(resp) => return Ok(self.store_refreshed(resp, refresh_token).await),
                Err(RefreshError::InvalidGrant) => {
                    let may_adopt = adoptions < MAX_ADOPTIONS;
                    match self.after_invalid_grant(may_adopt).await {
                        Ok(AfterInvalidGrant::Adopt) => adoptions += 1,
                        Ok(AfterInvalidGrant::Reauthenticate) => {
                            return Err(TokenError::ReauthenticationRequired);
                        }
                        Err(e) => return self.failed(e),
                    }
                }
                Err(err) => return self.failed(TokenError::Refresh(err)),
            }
        }
    }

    /// Re-reads the stored record and brings memory in line with it: a record another writer
    /// stored (a rotation by another process, a new login) is adopted; a removed entry (another
    /// process's refresh token was rejected, or an operator deleted it) requires
    /// re-authentication. Unchanged: nothing happens.
    async fn sync_with_store(&self) -> Result<(), TokenError> {
        let stored = self.store.get(&self.config.name).await?;
        let decoded = stored
            .as_ref()
            .map(|record| decode_record(&self.config.name, record))
            .transpose()?;
        let mut state = self.lock();
        if stored == state.record {
            return Ok(());
        }
        match decoded {
            Some(decoded) => {
                state.apply(decoded, stored);
                tracing::info!(
                    target: TARGET,
                    {
                        "event.kind" = "event",
                        "event.category" = "authentication",
                        "event.action" = "token.adopt",
                        "event.outcome" = "success",
                        "event.reason" = "newer_record",
                    },
                    "adopted the token record another writer stored (another process rotated or signed in)"
                );
            }
            None => {
                state.clear_for_reauthentication();
                tracing::warn!(
                    target: TARGET,
                    {
                        "event.kind" = "event",
                        "event.category" = "authentication",
                        "event.action" = "token.adopt",
                        "event.outcome" = "failure",
                        "event.reason" = "record_removed",
                    },
                    "the stored token record was removed by another writer: re-authentication required"
                );
            }
        }
        Ok(())
    }

    /// After `invalid_grant`: if the record changed since it was read (another writer rotated
    /// first), adopt it; otherwise remove exactly the rejected record (compare-and-swap, so a
    /// record stored meanwhile survives) and require re-authentication.
    async fn after_invalid_grant(&self, may_adopt: bool) -> Result<AfterInvalidGrant, TokenError> {
        let rejected = self.lock().record.clone();
        let stored = self.store.get(&self.config.name).await?;
        if stored != rejected && may_adopt {
            return Ok(AfterInvalidGrant::Adopt);
        }
        let cleared = match (&stored, &rejected) {
            (Some(_), Some(rejected)) if stored.as_ref() == Some(rejected) => {
                let swapped = self
                    .store
                    .compare_and_swap(&self.config.name, Some(rejected), None)
                    .await?;
                if !swapped && may_adopt {
                    return Ok(AfterInvalidGrant::Adopt);
                }
                swapped
            }
            // Nothing stored, or a newer record this call may no longer follow: left alone.
            _ => false,
        };
        self.lock().clear_for_reauthentication();
        tracing::warn!(
            target: TARGET,
            {
                "event.kind" = "alert",
                "event.category" = "authentication",
                "event.action" = "token.refresh",
                "event.outcome" = "failure",
                "event.reason" = "invalid_grant",
                "token.store.cleared" = cleared,
            },
            "refresh token rejected (revoked or reused): stored tokens cleared, re-authentication required"
        );
        Ok(AfterInvalidGrant::Reauthenticate)
    }

    /// Records a failed attempt (backoff) and serves a still-valid token if there is one.
    fn failed(&self, err: TokenError) -> Result<AccessToken, TokenError> {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let delay = backoff(&self.config, state.failures);
        state.backoff_until = Some(Instant::now() + delay);
        state.last_error = Some(err.to_string());
        tracing::warn!(
            target: TARGET,
            {
                "event.kind" = "event",
                "event.category" = "authentication",
                "event.action" = "token.refresh",
                "event.outcome" = "failure",
                "event.reason" = %err,
                "token.refresh.failures" = state.failures,
                "token.refresh.retry_in_ms" = delay.as_millis() as u64,
            },
            "token refresh failed"
        );
        match state.usable(&self.config, Instant::now()) {
            Usable::Fresh(t) | Usable::Stale(t) => Ok(t),
            Usable::No => Err(err),
        }
    }

    async fn store_refreshed(
        &self,
        resp: super::TokenResponse,
        old_refresh: Arc<SecretString>,
    ) -> AccessToken {
        let lifetime = resp
            .expires_in
            .unwrap_or(self.config.default_lifetime)
            .min(MAX_LIFETIME);
        let rotated = resp.refresh_token.is_some();
        let refresh = match resp.refresh_token {
            Some(rt) => rt,
            None => (*old_refresh).clone(),
        };
        let record = encode_record(Some(&resp.access_token), Some(&refresh), lifetime);
        let expected = self.lock().record.clone();
        // Persist before any waiter is released (they wait on the refresh lock we hold).
        let persisted = match self
            .store
            .compare_and_swap(&self.config.name, expected.as_ref(), Some(record.clone()))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(
                    target: TARGET,
                    {
                        "event.kind" = "event",
                        "event.category" = "configuration",
                        "event.action" = "token.persist",
                        "event.outcome" = "success",
                        "event.reason" = "concurrent_writer",
                    },
                    "token record changed underneath (another process?): overwriting with the newest rotation"
                );
                self.store.put(&self.config.name, record.clone()).await
            }
            Err(e) => Err(e),
        };
        let token = {
            let mut state = self.lock();
            state.apply(
                Decoded {
                    access: Some(resp.access_token),
                    refresh: Some(refresh),
                    expires_at: Instant::now() + lifetime,
                },
                persisted.as_ref().ok().map(|()| record),
            );
            state.current.as_ref().map(|c| c.token.clone())
        };
        match persisted {
            Ok(()) => tracing::info!(
                target: TARGET,
                {
                    "event.kind" = "event",
                    "event.category" = "authentication",
                    "event.action" = "token.refresh",
                    "event.outcome" = "success",
                    "token.rotated" = rotated,
                    "token.expires_in_s" = lifetime.as_secs(),
                },
                "access token refreshed"
            ),
            Err(e) => tracing::error!(
                target: TARGET,
                {
                    "event.kind" = "alert",
                    "event.category" = "configuration",
                    "event.action" = "token.persist",
                    "event.outcome" = "failure",
                    "event.reason" = %e,
                },
                "refreshed tokens could not be persisted: they live in memory only until the next successful write"
            ),
        }
        token.unwrap_or_else(|| unreachable!("apply sets an access token"))
    }
}

fn backoff(config: &Config, failures: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    // Equal jitter: half fixed, half random, so a fleet of clients does not retry in step.
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    capped / 2 + (capped / 2).mul_f64(f64::from(byte[0]) / 255.0)
}

struct Decoded {
    access: Option<SecretString>,
    refresh: Option<SecretString>,
    expires_at: Instant,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    expires_at: u64,
}

#[derive(Deserialize)]
struct RecordIn {
    v: u32,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: u64,
}

fn encode_record(
    access: Option<&SecretString>,
    refresh: Option<&SecretString>,
    lifetime: Duration,
) -> SecretValue {
    let expires_at = SystemTime::now()
        .checked_add(lifetime)
        .unwrap_or(SystemTime::now())
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = RecordOut {
        v: 1,
        access_token: access.map(|s| s.expose_secret()),
        refresh_token: refresh.map(|s| s.expose_secret()),
        expires_at,
    };
    SecretValue::new(serde_json::to_vec(&out).unwrap_or_default())
}

fn decode_record(name: &str, record: &SecretValue) -> Result<Decoded, TokenError> {
    let corrupt = |reason| TokenError::Corrupt {
        name: name.to_owned(),
        reason,
    };
    // Never surface serde's message: it may quote the token.
    let parsed: RecordIn =
        serde_json::from_slice(record.expose()).map_err(|_| corrupt("not a token record"))?;
    if parsed.v != 1 {
        return Err(corrupt("unknown record version"));
    }
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = Duration::from_secs(parsed.expires_at.saturating_sub(now_unix)).min(MAX_LIFETIME);
    Ok(Decoded {
        access: parsed
            .access_token
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        refresh: parsed
            .refresh_token
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        expires_at: Instant::now() + left,
    })
}

#[cfg(feature = "fuzzing")]
/// Fuzz entry: decodes a stored token record.
pub(crate) fn fuzz_record(data: &[u8]) {
    let _ = decode_record("fuzz", &SecretValue::new(data.to_vec()));
}
