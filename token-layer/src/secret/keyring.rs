use std::{fmt, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use zeroize::Zeroizing;

use super::{EntryLock, FileKey, SecretStore, SecretValue, StoreError, check_name};

/// A [`SecretStore`] in the OS credential store.
///
/// * Linux: the kernel keyutils keyring chosen with [`KeyringStore::linux_keyring`] (the
///   user keyring by default), used explicitly for every store, lookup and removal, whatever
///   the caller's session keyring links (see [`LinuxKeyring`]). With the `secret-service`
///   feature, `KeyringStore::secret_service` uses the freedesktop Secret Service instead.
/// * macOS / iOS: the Keychain (`apple-keychain` feature), through the `keyring` crate.
/// * Windows: the Credential Manager (`windows-credential-manager` feature), through the
///   `keyring` crate.
///
/// Where the platform's feature is off, every call fails with [`StoreError::Keyring`]: the
/// store never falls back to the `keyring` crate's in-memory mock.
///
/// Each secret is one entry, `service` + name (on Linux the key description
/// `portcullis:<service>:<name>`). The keyring calls block, so they run on tokio's blocking
/// pool.
///
/// # Atomicity
///
/// OS keyrings have no compare-and-swap. [`SecretStore::compare_and_swap`] and
/// [`SecretStore::lock_entry`] are atomic among clones of this store **in one process** (an
/// async lock), not across processes: two processes that rotate the same token through a
/// `KeyringStore` can still race (the token source then falls back on adopting the newer
/// record after an `invalid_grant`). Share a [`FileStore`](super::FileStore) between processes
/// when that matters; its compare-and-swap and entry lock reach every process.
#[derive(Clone)]
pub struct KeyringStore {
    service: Arc<str>,
    backend: Backend,
    cas: Arc<tokio::sync::Mutex<()>>,
    entry_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The Linux kernel keyring a [`KeyringStore`] keeps its entries in. Kernel keyrings live in
/// memory: **no kernel keyring survives a reboot**.
///
/// The store links the chosen keyring into the calling process's own keyring before each
/// operation, so the process possesses it whatever its session keyring is: a login session
/// (`pam_keyinit` links the user keyring into the session keyring), or a session that does not
/// link it, as `keyctl session -`, many service managers, containers and cron jobs create.
/// Without that, a key stored in the user keyring is visible to the kernel but unreadable
/// (its permissions grant read and search to possessors only), and a lookup reports it missing.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinuxKeyring {
    /// The user keyring (`@u`), shared by every process of the user in this user namespace.
    /// Since Linux 5.3 it is kept until reboot; on older kernels it is destroyed when the
    /// user's last process exits (logout, the end of a cron job).
    #[default]
    User,
    /// The user's persistent keyring (`keyctl get_persistent`): survives logout on every
    /// kernel, but expires after `/proc/sys/kernel/keys/persistent_keyring_expiry` seconds
    /// (3 days by default) without use; every operation of this store renews it. Needs a
    /// kernel built with `CONFIG_PERSISTENT_KEYRINGS`.
    Persistent,
}

#[cfg(target_os = "linux")]
impl LinuxKeyring {
    fn label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Persistent => "persistent",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    #[cfg(target_os = "linux")]
    Kernel(LinuxKeyring),
    #[cfg(not(target_os = "linux"))]
    Platform,
    #[cfg(all(target_os = "linux", feature = "secret-service"))]
    SecretService,
}

impl fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringStore")
            .field("service", &self.service)
            .field("backend", &self.backend)
            .finish()
    }
}

#[cfg_attr(
    all(target_os = "linux", not(feature = "secret-service")),
    allow(dead_code, reason = "used by the keyring crate backends only")
)]
fn keyring_err(err: keyring::Error) -> StoreError {
    // Never format the error itself: `BadEncoding` carries the secret bytes.
    let reason = match err {
        keyring::Error::PlatformFailure(e) => format!("platform failure: {e}"),
        keyring::Error::NoStorageAccess(e) => format!("no access to the credential store: {e}"),
        keyring::Error::NoEntry => "no such entry".to_owned(),
        keyring::Error::BadEncoding(_) => "entry is not valid UTF-8".to_owned(),
        keyring::Error::TooLong(attr, max) => format!("{attr} is longer than {max} bytes"),
        keyring::Error::Invalid(attr, why) => format!("{attr} is invalid: {why}"),
        keyring::Error::Ambiguous(_) => "several entries match".to_owned(),
        _ => "unknown keyring failure".to_owned(),
    };
    StoreError::Keyring { reason }
}

impl KeyringStore {
    /// A store whose entries are named `service` + secret name, in the platform's keyring (on
    /// Linux, the kernel user keyring: see [`LinuxKeyring`] for what survives what).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into().into(),
            #[cfg(target_os = "linux")]
            backend: Backend::Kernel(LinuxKeyring::User),
            #[cfg(not(target_os = "linux"))]
            backend: Backend::Platform,
            cas: Arc::default(),
            entry_lock: Arc::default(),
        }
    }

    /// Keeps the entries in this Linux kernel keyring (default [`LinuxKeyring::User`]).
    /// Every store, lookup and removal uses this keyring, never the session keyring.
    #[cfg(target_os = "linux")]
    pub fn linux_keyring(mut self, keyring: LinuxKeyring) -> Self {
        self.backend = Backend::Kernel(keyring);
        self
    }

    /// A store in the freedesktop Secret Service (GNOME Keyring, KWallet) instead of keyutils.
    #[cfg(all(target_os = "linux", feature = "secret-service"))]
    pub fn secret_service(service: impl Into<String>) -> Self {
        Self {
            backend: Backend::SecretService,
            ..Self::new(service)
        }
    }

    /// The service name entries are filed under.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Loads the 256-bit [`FileStore`](super::FileStore) key kept under `name`, creating a
    /// random one the first time.
    ///
    /// # Security
    ///
    /// The file can be opened only while this entry exists. On Linux the kernel keyring never
    /// survives a reboot (see [`LinuxKeyring`]): keep a passphrase-protected copy of anything
    /// that must outlive one, or use [`FileKey::passphrase`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Keyring`] when the keyring fails, or [`StoreError::InvalidValue`] when the
    /// entry does not hold a key made by this method.
    pub async fn file_key(&self, name: &str) -> Result<FileKey, StoreError> {
        let _guard = self.cas.lock().await;
        if let Some(existing) = self.get(name).await? {
            let decoded =
                Zeroizing::new(STANDARD_NO_PAD.decode(existing.expose()).map_err(|_| {
                    StoreError::InvalidValue {
                        reason: "keyring entry is not a base64 file key",
                    }
                })?);
            let key: [u8; 32] =
                decoded
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::InvalidValue {
                        reason: "keyring entry is not a 32-byte file key",
                    })?;
            return Ok(FileKey::raw(key));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| StoreError::Kdf {
            reason: "system random generator failed".into(),
        })?;
        let encoded = STANDARD_NO_PAD.encode(key.as_ref());
        self.put(name, SecretValue::from(encoded)).await?;
        Ok(FileKey::raw(*key))
    }

    async fn run<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(Slot) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        check_name(name)?;
        let service = self.service.clone();
        let name = name.to_owned();
        let backend = self.backend;
        tokio::task::spawn_blocking(move || f(slot(backend, &service, &name)?))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// One entry of the chosen backend.
enum Slot {
    #[cfg(target_os = "linux")]
    Kernel(kernel::KernelEntry),
    #[cfg(any(not(target_os = "linux"), feature = "secret-service"))]
    #[cfg_attr(
        not(any(
            target_os = "linux",
            feature = "apple-keychain",
            feature = "windows-credential-manager"
        )),
        allow(dead_code, reason = "no native backend compiled in: never constructed")
    )]
    Entry(keyring::Entry),
}

impl Slot {
    fn get(&self) -> Result<Option<SecretValue>, StoreError> {
        match self {
            #[cfg(target_os = "linux")]
            Slot::Kernel(entry) => entry.get(),
            #[cfg(any(not(target_os = "linux"), feature = "secret-service"))]
            Slot::Entry(entry) => match entry.get_secret() {
                Ok(bytes) => Ok(Some(SecretValue::new(bytes))),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(keyring_err(e)),
            },
        }
    }

    fn put(&self, value: &SecretValue) -> Result<(), StoreError> {
        match self {
            #[cfg(target_os = "linux")]
            Slot::Kernel(entry) => entry.put(value),
            #[cfg(any(not(target_os = "linux"), feature = "secret-service"))]
            Slot::Entry(entry) => entry.set_secret(value.expose()).map_err(keyring_err),
        }
    }

    fn delete(&self) -> Result<bool, StoreError> {
        match self {
            #[cfg(target_os = "linux")]
            Slot::Kernel(entry) => entry.delete(),
            #[cfg(any(not(target_os = "linux"), feature = "secret-service"))]
            Slot::Entry(entry) => match entry.delete_credential() {
                Ok(()) => Ok(true),
                Err(keyring::Error::NoEntry) => Ok(false),
                Err(e) => Err(keyring_err(e)),
            },
        }
    }
}

#[cfg(target_os = "linux")]
fn slot(backend: Backend, service: &str, name: &str) -> Result<Slot, StoreError> {
    match backend {
        Backend::Kernel(which) => Ok(Slot::Kernel(kernel::KernelEntry::open(
            which,
            format!("portcullis:{service}:{name}"),
        )?)),
        #[cfg(feature = "secret-service")]
        Backend::SecretService => {
            let credential =
                keyring::secret_service::SsCredential::new_with_target(None, service, name)
                    .map_err(keyring_err)?;
            Ok(Slot::Entry(keyring::Entry::new_with_credential(Box::new(
                credential,
            ))))
        }
    }
}

/// Kernel keyutils, used directly so that the keyring is explicit and possessed.
#[cfg(target_os = "linux")]
mod kernel {
    use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};

    use super::{LinuxKeyring, SecretValue, StoreError};

    pub(super) struct KernelEntry {
        ring: KeyRing,
        which: LinuxKeyring,
        description: String,
    }

    fn absent(e: &KeyError) -> bool {
        matches!(
            e,
            KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired
        )
    }

    impl KernelEntry {
        /// Resolves the keyring and links it into this process's keyring, which makes the
        /// process its possessor (and so able to search and read the keys in it) whatever the
        /// session keyring links. The process keyring is private to this process: nothing
        /// changes for the caller's session or for other processes.
        pub(super) fn open(which: LinuxKeyring, description: String) -> Result<Self, StoreError> {
            let fail = |step: &str, e: KeyError| StoreError::Keyring {
                reason: format!(
                    "cannot open the kernel {} keyring ({step}): {}",
                    which.label(),
                    match e {
                        KeyError::OperationNotSupported => {
                            "not supported by this kernel".to_owned()
                        }
                        other => format!("{other:?}"),
                    }
                ),
            };
            let ring = match which {
                LinuxKeyring::User => {
                    let user = KeyRing::from_special_id(KeyRingIdentifier::User, true)
                        .map_err(|e| fail("look up @u", e))?;
                    let process = KeyRing::from_special_id(KeyRingIdentifier::Process, true)
                        .map_err(|e| fail("create the process keyring", e))?;
                    process
                        .link_keyring(user)
                        .map_err(|e| fail("link @u into the process keyring", e))?;
                    user
                }
                LinuxKeyring::Persistent => KeyRing::get_persistent(KeyRingIdentifier::Process)
                    .map_err(|e| fail("get_persistent", e))?,
            };
            Ok(Self {
                ring,
                which,
                description,
            })
        }

        fn fail(&self, step: &str, e: KeyError) -> StoreError {
            StoreError::Keyring {
                reason: format!(
                    "cannot {step} an entry of the kernel {} keyring: {e:?}",
                    self.which.label()
                ),
            }
        }

        pub(super) fn get(&self) -> Result<Option<SecretValue>, StoreError> {
            let key = match self.ring.search(&self.description) {
                Ok(key) => key,
                Err(e) if absent(&e) => return Ok(None),
                Err(e) => return Err(self.fail("search", e)),
            };
            match key.read_to_vec() {
                Ok(bytes) => Ok(Some(SecretValue::new(bytes))),
                // Removed between the search and the read.
                Err(e) if absent(&e) => Ok(None),
                Err(e) => Err(self.fail("read", e)),
            }
        }

        /// `add_key` replaces an entry of the same description in the same keyring atomically.
        pub(super) fn put(&self, value: &SecretValue) -> Result<(), StoreError> {
            self.ring
                .add_key(&self.description, value.expose())
                .map(drop)
                .map_err(|e| self.fail("write", e))
        }

        pub(super) fn delete(&self) -> Result<bool, StoreError> {
            let key = match self.ring.search(&self.description) {
                Ok(key) => key,
                Err(e) if absent(&e) => return Ok(false),
                Err(e) => return Err(self.fail("search", e)),
            };
            match key.invalidate() {
                Ok(()) => Ok(true),
                Err(e) if absent(&e) => Ok(false),
                Err(e) => Err(self.fail("remove", e)),
            }
        }
    }
}

#[cfg(all(
    not(target_os = "linux"),
    any(
        all(
            any(target_os = "macos", target_os = "ios"),
            feature = "apple-keychain"
        ),
        all(target_os = "windows", feature = "windows-credential-manager"),
    )
))]
fn slot(_backend: Backend, service: &str, name: &str) -> Result<Slot, StoreError> {
    Ok(Slot::Entry(
        keyring::Entry::new(service, name).map_err(keyring_err)?,
    ))
}

/// Without a native backend the `keyring` crate falls back to an in-memory mock: refuse
/// instead of silently losing secrets.
#[cfg(all(
    not(target_os = "linux"),
    not(any(
        all(
            any(target_os = "macos", target_os = "ios"),
            feature = "apple-keychain"
        ),
        all(target_os = "windows", feature = "windows-credential-manager"),
    ))
))]
fn slot(_backend: Backend, _service: &str, _name: &str) -> Result<Slot, StoreError> {
    Err(StoreError::Keyring {
        reason: "no OS keyring backend compiled in for this platform: enable the \
                 apple-keychain or windows-credential-manager feature of portcullis-token"
            .to_owned(),
    })
}

impl SecretStore for KeyringStore {
    async fn get(&self, name: &str) -> Result<Option<SecretValue>, StoreError> {
        self.run(name, |slot| slot.get()).await
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<(), StoreError> {
        if value.is_empty() {
            return Err(StoreError::InvalidValue {
                reason: "the OS keyring cannot hold an empty value",
            });
        }
        self.run(name, move |slot| slot.put(&value)).await
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        self.run(name, |slot| slot.delete()).await
    }

    /// Atomic among clones of this store in this process only: see
    /// [`KeyringStore`](KeyringStore#atomicity).
    async fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&SecretValue>,
        new: Option<SecretValue>,
    ) -> Result<bool, StoreError> {
        let _guard = self.cas.lock().await;
        if self.get(name).await?.as_ref() != expected {
            return Ok(false);
        }
        match new {
            Some(value) => self.put(name, value).await?,
            None => {
                self.delete(name).await?;
            }
        }
        Ok(true)
    }

    /// Held among clones of this store in this process only: see
    /// [`KeyringStore`](KeyringStore#atomicity).
    async fn lock_entry(&self, name: &str) -> Result<EntryLock, StoreError> {
        check_name(name)?;
        Ok(EntryLock::new(self.entry_lock.clone().lock_owned().await))
    }
}
