use std::fmt;
use std::time::Duration;

/// One attempt took longer than the per-attempt timeout (a transient failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    pub(crate) after: Duration,
}

impl AttemptTimedOut {
    /// The per-attempt timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempt timed out after {:?} (raise `attempt_timeout` if the server is slow)",
            self.after
        )
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The overall deadline of a request (all attempts and backoffs) passed (a final failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    pub(crate) deadline: Duration,
}

impl DeadlineExceeded {
    /// The configured overall deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request deadline of {:?} exceeded across all attempts",
            self.deadline
        )
    }
}

impl std::error::Error for DeadlineExceeded {}
