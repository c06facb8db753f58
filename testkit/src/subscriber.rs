//! Scoped `tracing` subscribers that see every event of their thread, however tests are
//! scheduled.
//!
//! tracing-core caches each callsite's interest process-wide and, while a single dispatcher
//! is registered, computes it from the default dispatcher of whichever thread reaches the
//! callsite first. A test thread with a capturing subscriber and a parallel test without one
//! then race: when the other thread registers a callsite first, it is cached as "never" and
//! the capturing thread's events at that callsite are lost. [`set_default`] keeps a second,
//! silent dispatcher registered for the life of the process, so interest is always the union
//! over every live dispatcher and the race cannot happen.

use std::sync::OnceLock;

use tracing::subscriber::{DefaultGuard, NoSubscriber};
use tracing::{Dispatch, Subscriber};

/// Installs `subscriber` as this thread's default for the life of the guard, as
/// [`tracing::subscriber::set_default`] does, without losing events to another thread's
/// earlier interest (see the [module docs](self)).
pub fn set_default<S>(subscriber: S) -> DefaultGuard
where
    S: Subscriber + Send + Sync + 'static,
{
    static SECOND_DISPATCHER: OnceLock<Dispatch> = OnceLock::new();
    SECOND_DISPATCHER.get_or_init(|| Dispatch::new(NoSubscriber::default()));
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites registered before this thread's subscriber existed were cached as "never".
    tracing::callsite::rebuild_interest_cache();
    guard
}
