use std::{io, path::PathBuf};

/// Why a secret store operation failed. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the store file failed.
    #[error("secret store i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key or passphrase does not open this file.
    #[error("cannot open secret store {path}: wrong key or passphrase (the file was not changed)")]
    WrongKey {
        /// The store file.
        path: PathBuf,
    },
    /// The file fails authentication: a byte was changed.
    #[error(
        "secret store {path} is corrupt or was tampered with: authentication failed; restore it from a backup (it was not reset)"
    )]
    Tampered {
        /// The store file.
        path: PathBuf,
    },
    /// The file is shorter than its header says.
    #[error(
        "secret store {path} is truncated: {len} bytes, expected at least {expected}; restore it from a backup (it was not reset)"
    )]
    Truncated {
        /// The store file.
        path: PathBuf,
        /// Bytes found.
        len: u64,
        /// Minimum bytes expected.
        expected: u64,
    },
    /// The file is not a Portcullis secret store or has an unknown version.
    #[error("{path} is not a portcullis secret store: {reason}")]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
    /// A name the store cannot hold.
    #[error("invalid secret name: {reason}")]
    InvalidName {
        /// What was expected.
        reason: &'static str,
    },
    /// A value the store cannot hold.
    #[error("invalid secret value: {reason}")]
    InvalidValue {
        /// What was expected.
        reason: &'static str,
    },
    /// Key-derivation parameters out of range.
    #[error("invalid key derivation parameters: {reason}")]
    Kdf {
        /// What was expected.
        reason: String,
    },
    /// The OS credential store failed.
    #[error("os keyring error: {reason}")]
    Keyring {
        /// What the keyring reported (never a secret).
        reason: String,
    },
    /// A blocking store task was cancelled or panicked.
    #[error("secret store task failed: {0}")]
    Task(String),
}
