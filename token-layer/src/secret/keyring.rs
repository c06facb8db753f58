use std::{fmt, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use zeroize::Zeroizing;

use super::{FileKey, SecretStore, SecretValue, StoreError, check_name};

/// A [`SecretStore`] in the OS credential store, through the `keyring` crate.
///
/// * Linux: the kernel keyutils **user** keyring (`@u`), which every process of the user can
///   reach and which lives until reboot. With the `secret-service` feature,
///   `KeyringStore::secret_service` uses the freedesktop Secret Service instead.
/// * macOS / iOS: the Keychain (`apple-keychain` feature).
/// * Windows: the Credential Manager (`windows-credential-manager` feature).
///
/// Where the platform's feature is off, every call fails with [`StoreError::Keyring`]: the
/// store never falls back to the `keyring` crate's in-memory mock.
///
/// Each secret is one entry, `service` + name. The keyring calls block, so they run on tokio's
/// blocking pool. OS keyrings have no compare-and-swap: [`SecretStore::compare_and_swap`] is
/// atomic among clones of this store in one process (an async lock), not across processes.
#[derive(Clone)]
pub struct KeyringStore {
    service: Arc<str>,
    backend: Backend,
    cas: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
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
    /// A store whose entries are named `service` + secret name, in the platform's keyring.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into().into(),
            backend: Backend::Platform,
            cas: Arc::default(),
        }
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
        f: impl FnOnce(keyring::Entry) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        check_name(name)?;
        let service = self.service.clone();
        let name = name.to_owned();
        let backend = self.backend;
        tokio::task::spawn_blocking(move || f(entry(backend, &service, &name)?))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(target_os = "linux")]
fn entry(backend: Backend, service: &str, name: &str) -> Result<keyring::Entry, StoreError> {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    match backend {
        Backend::Platform => {
            let ring = KeyRing::from_special_id(KeyRingIdentifier::User, true).map_err(|e| {
                StoreError::Keyring {
                    reason: format!("cannot open the kernel user keyring: {e:?}"),
                }
            })?;
            let credential = keyring::keyutils::KeyutilsCredential {
                session: ring,
                persistent: None,
                description: format!("portcullis:{service}:{name}"),
            };
            Ok(keyring::Entry::new_with_credential(Box::new(credential)))
        }
        #[cfg(feature = "secret-service")]
        Backend::SecretService => {
            let credential =
                keyring::secret_service::SsCredential::new_with_target(None, service, name)
                    .map_err(keyring_err)?;
            Ok(keyring::Entry::new_with_credential(Box::new(credential)))
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
fn entry(_backend: Backend, service: &str, name: &str) -> Result<keyring::Entry, StoreError> {
    keyring::Entry::new(service, name).map_err(keyring_err)
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
fn entry(_backend: Backend, _service: &str, _name: &str) -> Result<keyring::Entry, StoreError> {
    Err(StoreError::Keyring {
        reason: "no OS keyring backend compiled in for this platform: enable the \
                 apple-keychain or windows-credential-manager feature of portcullis-token"
            .to_owned(),
    })
}

impl SecretStore for KeyringStore {
    async fn get(&self, name: &str) -> Result<Option<SecretValue>, StoreError> {
        self.run(name, |entry| match entry.get_secret() {
            Ok(bytes) => Ok(Some(SecretValue::new(bytes))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(keyring_err(e)),
        })
        .await
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<(), StoreError> {
        if value.is_empty() {
            return Err(StoreError::InvalidValue {
                reason: "the OS keyring cannot hold an empty value",
            });
        }
        self.run(name, move |entry| {
            entry.set_secret(value.expose()).map_err(keyring_err)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        self.run(name, |entry| match entry.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(keyring_err(e)),
        })
        .await
    }

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
}
