//! Secret storage: an async [`SecretStore`] trait and its backends.
//!
//! | backend | use |
//! |---|---|
//! | [`MemoryStore`] | tests and ephemeral processes |
//! | [`FileStore`] | the embedded default: one AEAD-encrypted file, crash-safe writes |
//! | [`KeyringStore`] | the OS credential store (Linux kernel keyutils, macOS Keychain, Windows Credential Manager, Secret Service) |
//!
//! Values are [`SecretValue`]s: zeroized on drop, redacted in `Debug`, compared in constant time.

pub mod danger;
mod error;
mod file;
mod keyring;
mod memory;

use std::{fmt, future::Future, sync::Arc};

use secrecy::{ExposeSecret, SecretSlice};

pub use self::error::StoreError;
#[cfg(feature = "fuzzing")]
pub(crate) use self::file::fuzz_file;
pub use self::file::{FileKey, FileStore, KdfParams};
pub use self::keyring::KeyringStore;
#[cfg(target_os = "linux")]
pub use self::keyring::LinuxKeyring;
pub use self::memory::MemoryStore;

/// A secret byte string: zeroized when dropped, redacted in `Debug`, never `Display`ed.
#[derive(Clone, Default)]
pub struct SecretValue(SecretSlice<u8>);

impl SecretValue {
    /// Wraps bytes; the vector is moved, not copied.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretSlice::from(bytes))
    }

    /// The secret bytes. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The secret as UTF-8, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(self.expose()).ok()
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }
}

impl PartialEq for SecretValue {
    /// Constant-time comparison (the length is not secret).
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.expose(), other.expose()).is_ok()
    }
}

impl Eq for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([REDACTED; {} bytes])", self.len())
    }
}

/// An async store of named secrets.
///
/// Names are not secret but backends still keep them out of clear text where they can (the
/// [`FileStore`] encrypts them). Implementations must make every write atomic: a reader sees
/// the old value or the new one, never a mix.
pub trait SecretStore: Send + Sync + 'static {
    /// Reads a secret; `Ok(None)` when the name is not stored.
    fn get(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<SecretValue>, StoreError>> + Send;

    /// Stores a secret, replacing any previous value.
    fn put(
        &self,
        name: &str,
        value: SecretValue,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a secret; `Ok(false)` when it was not stored.
    fn delete(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Atomically replaces the value of `name` with `new` (or removes it when `new` is `None`)
    /// if and only if the current value equals `expected` (`None`: not stored).
    ///
    /// Returns whether the swap happened. Token rotation uses this so that two writers never
    /// silently overwrite each other's refresh token.
    ///
    /// How far "atomically" reaches depends on the backend: across processes for
    /// [`FileStore`], within one process only for [`KeyringStore`] (OS keyrings have no
    /// compare-and-swap) and for [`MemoryStore`] (which lives in one process).
    fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&SecretValue>,
        new: Option<SecretValue>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes an exclusive lock for a read-modify-write of `name` longer than one
    /// [`compare_and_swap`](SecretStore::compare_and_swap), such as a token refresh (read the
    /// record, ask the token endpoint, write the rotated record). The lock is held until the
    /// returned [`EntryLock`] drops; every caller of `lock_entry` on the same store waits for it,
    /// while `get`, `put`, `delete` and `compare_and_swap` never do.
    ///
    /// Where it reaches: other processes for [`FileStore`] (a lock file next to the store);
    /// clones of the store in this process for [`MemoryStore`] and [`KeyringStore`]. The
    /// default implementation holds nothing, which leaves compare-and-swap as the only guard.
    ///
    /// # Errors
    ///
    /// When the backend cannot take the lock ([`StoreError::Io`] for the lock file).
    fn lock_entry(&self, name: &str) -> impl Future<Output = Result<EntryLock, StoreError>> + Send {
        let _ = name;
        std::future::ready(Ok(EntryLock::none()))
    }
}

/// An exclusive lock from [`SecretStore::lock_entry`], released when dropped.
pub struct EntryLock {
    held: Option<Box<dyn Send + Sync>>,
}

impl EntryLock {
    /// A lock that holds `guard` (a mutex guard, a locked file) until it drops.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            held: Some(Box::new(guard)),
        }
    }

    /// A lock that holds nothing, for stores with nothing to lock.
    pub fn none() -> Self {
        Self { held: None }
    }
}

impl fmt::Debug for EntryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryLock")
            .field("held", &self.held.is_some())
            .finish()
    }
}

impl<T: SecretStore> SecretStore for Arc<T> {
    fn get(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<SecretValue>, StoreError>> + Send {
        (**self).get(name)
    }

    fn put(
        &self,
        name: &str,
        value: SecretValue,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put(name, value)
    }

    fn delete(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).delete(name)
    }

    fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&SecretValue>,
        new: Option<SecretValue>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).compare_and_swap(name, expected, new)
    }

    fn lock_entry(&self, name: &str) -> impl Future<Output = Result<EntryLock, StoreError>> + Send {
        (**self).lock_entry(name)
    }
}

/// Rejects names the backends cannot hold: empty, over 255 bytes, or with control characters.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName {
            reason: "expected 1 to 255 bytes of printable UTF-8",
        });
    }
    Ok(())
}
