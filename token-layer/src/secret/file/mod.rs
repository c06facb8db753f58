//! The encrypted file store: [`FileStore`], its key ([`FileKey`], [`KdfParams`]) and its file
//! format (see `format.rs`).
//!
//! # File format (version 1)
//!
//! ```text
//! magic     8 bytes  "PCSTORE1"
//! kdf       1 byte   0 = raw 256-bit key, 1 = Argon2id passphrase
//! [kdf=1]   m_cost u32 BE (KiB), t_cost u32 BE, p_cost u32 BE, salt 16 bytes
//! check    16 bytes  HMAC-SHA256(key, "portcullis key check v1")[..16]
//! nonce    12 bytes  fresh random nonce for every write
//! sealed   AES-256-GCM(plaintext) || tag (16 bytes); AAD = every byte before the nonce
//! ```
//!
//! The plaintext is `count u32 BE` then, per entry, `name_len u16 BE, name, value_len u32 BE,
//! value`: names and values never appear in clear text.

mod format;
mod kdf;

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use zeroize::{Zeroize, Zeroizing};

use self::format::{
    Entries, MAGIC, MAX_FILE_LEN, MAX_VALUE_LEN, aead_key, decode_entries, encode_entries, parse,
};
pub use self::kdf::{FileKey, KdfParams};
use self::kdf::{KdfHeader, KeyKind, Keyed, derive, random};
use super::{EntryLock, SecretStore, SecretValue, StoreError, check_name};

/// An encrypted file [`SecretStore`]: every name and value sealed with AES-256-GCM in one file.
///
/// * The key is a raw 256-bit key (keep it in the OS keyring) or a passphrase stretched with
///   Argon2id; the KDF costs and salt live in the file header.
/// * The file is created with mode 0600. Writes go to a temporary file in the same directory,
///   which is fsynced, renamed over the store and followed by an fsync of the directory, so a
///   crash leaves either the old or the new file, never a torn one.
/// * Concurrent writers (tasks, `FileStore` instances and processes) are serialised with an
///   exclusive lock on `<file>.lock`, and each write re-reads the file under that lock, so
///   [`compare_and_swap`](SecretStore::compare_and_swap) is atomic across processes.
/// * [`lock_entry`](SecretStore::lock_entry) (held by a token refresh from its re-read to its
///   write) is an exclusive lock on `<file>.entry.lock`, one for all names so that the lock
///   file reveals none; it reaches every task, instance and process using the file.
/// * A wrong key, a changed byte or a truncated file is a typed error; the store is never
///   silently reset.
///
/// Blocking file I/O and key derivation run on tokio's blocking pool.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    entry_lock_path: PathBuf,
    key: KeyKind,
    keyed: Mutex<Option<Arc<Keyed>>>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (or prepares to create) the store at `path` and checks that `key` opens it.
    ///
    /// A missing file is an empty store; it is created by the first write.
    ///
    /// # Errors
    ///
    /// [`StoreError::WrongKey`], [`StoreError::Tampered`], [`StoreError::Truncated`] or
    /// [`StoreError::NotAStore`] when an existing file cannot be opened with this key;
    /// [`StoreError::Io`] when it cannot be read.
    pub async fn open(path: impl Into<PathBuf>, key: FileKey) -> Result<Self, StoreError> {
        let path = path.into();
        let sibling = |suffix: &str| {
            let mut name = path.file_name().unwrap_or_default().to_owned();
            name.push(suffix);
            path.with_file_name(name)
        };
        let lock_path = sibling(".lock");
        let entry_lock_path = sibling(".entry.lock");
        let store = Self {
            inner: Arc::new(Inner {
                path,
                lock_path,
                entry_lock_path,
                key: key.0,
                keyed: Mutex::new(None),
            }),
        };
        let inner = store.inner.clone();
        blocking(move || inner.read().map(drop)).await?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The stored names, sorted.
    ///
    /// # Errors
    ///
    /// As for [`FileStore::open`].
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.read()?.into_keys().collect())).await
    }

    async fn update<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Entries) -> (bool, T) + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.update(f)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl Inner {
    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    }

    fn keyed_for(&self, header: &KdfHeader) -> Result<Arc<Keyed>, StoreError> {
        let mut cached = self.keyed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = cached.as_ref()
            && k.header == *header
        {
            return Ok(k.clone());
        }
        let keyed = Arc::new(derive(&self.key, header)?);
        *cached = Some(keyed.clone());
        Ok(keyed)
    }

    fn new_header(&self) -> Result<KdfHeader, StoreError> {
        Ok(match &self.key {
            KeyKind::Raw(_) => KdfHeader::Raw,
            KeyKind::Passphrase(_, params) => KdfHeader::Argon2id {
                params: *params,
                salt: random()?,
            },
        })
    }

    /// Reads and decrypts the file. `Ok(empty)` when it does not exist.
    fn read(&self) -> Result<Entries, StoreError> {
        Ok(self.read_with_key()?.0)
    }

    fn read_with_key(&self) -> Result<(Entries, Option<Arc<Keyed>>), StoreError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Entries::new(), None)),
            Err(e) => return Err(self.io(&self.path)(e)),
        };
        let len = file.metadata().map_err(self.io(&self.path))?.len();
        if len > MAX_FILE_LEN {
            return Err(StoreError::NotAStore {
                path: self.path.clone(),
                reason: "file larger than 16 MiB",
            });
        }
        let mut data = Zeroizing::new(Vec::with_capacity(len as usize));
        file.read_to_end(&mut data).map_err(self.io(&self.path))?;
        let parsed = parse(&self.path, &data)?;
        let keyed = self.keyed_for(&parsed.header)?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&keyed.check, &parsed.check).is_err() {
            return Err(StoreError::WrongKey {
                path: self.path.clone(),
            });
        }
        let mut buf = Zeroizing::new(parsed.sealed.to_vec());
        let plain = aead_key(&keyed.key)
            .open_in_place(
                Nonce::assume_unique_for_key(parsed.nonce),
                Aad::from(parsed.aad),
                &mut buf,
            )
            .map_err(|_| StoreError::Tampered {
                path: self.path.clone(),
            })?;
        let map = decode_entries(&self.path, plain)?;
        Ok((map, Some(keyed)))
    }

    /// Opens (creating it 0600) and exclusively locks `path`; the lock lasts as long as the file.
    fn lock_file(&self, path: &Path) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode_0600()
            .open(path)
            .map_err(self.io(path))?;
        file.lock().map_err(self.io(path))?;
        Ok(file)
    }

    fn update<T>(&self, f: impl FnOnce(&mut Entries) -> (bool, T)) -> Result<T, StoreError> {
        let lock = self.lock_file(&self.lock_path)?;
        let (mut map, keyed) = self.read_with_key()?;
        let (changed, out) = f(&mut map);
        if changed {
            let keyed = match keyed {
                Some(k) => k,
                None => self.keyed_for(&self.new_header()?)?,
            };
            self.write(&keyed, &map)?;
        }
        drop(lock);
        Ok(out)
    }

    fn write(&self, keyed: &Keyed, map: &Entries) -> Result<(), StoreError> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        keyed.header.encode(&mut out);
        out.extend_from_slice(&keyed.check);
        let aad_len = out.len();
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut sealed = encode_entries(map);
        aead_key(&keyed.key)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..aad_len]),
                &mut *sealed,
            )
            .map_err(|_| StoreError::InvalidValue {
                reason: "store too large to seal",
            })?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        sealed.zeroize();

        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let suffix: [u8; 8] = random()?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(self.path.file_name().unwrap_or_default());
        tmp_name.push(format!(".tmp-{}", u64::from_be_bytes(suffix)));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&tmp)?;
            file.write_all(&out)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(&self.path)(e));
        }
        sync_dir(&dir).map_err(self.io(&dir))
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Windows cannot open a directory as a file; the rename is already durable there
    // (MoveFileEx with write-through is what std uses).
    Ok(())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    #[cfg(unix)]
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
    #[cfg(not(unix))]
    fn mode_0600(&mut self) -> &mut Self {
        self
    }
}

impl SecretStore for FileStore {
    async fn get(&self, name: &str) -> Result<Option<SecretValue>, StoreError> {
        check_name(name)?;
        let inner = self.inner.clone();
        let name = name.to_owned();
        blocking(move || Ok(inner.read()?.remove(&name))).await
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<(), StoreError> {
        check_name(name)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(StoreError::InvalidValue {
                reason: "larger than 1 MiB",
            });
        }
        let name = name.to_owned();
        self.update(move |map| {
            map.insert(name, value);
            (true, ())
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        let name = name.to_owned();
        self.update(move |map| {
            let found = map.remove(&name).is_some();
            (found, found)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&SecretValue>,
        new: Option<SecretValue>,
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        if new.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN) {
            return Err(StoreError::InvalidValue {
                reason: "larger than 1 MiB",
            });
        }
        let name = name.to_owned();
        let expected = expected.cloned();
        self.update(move |map| {
            if map.get(&name) != expected.as_ref() {
                return (false, false);
            }
            match new {
                Some(v) => map.insert(name, v),
                None => map.remove(&name),
            };
            (true, true)
        })
        .await
    }

    async fn lock_entry(&self, name: &str) -> Result<EntryLock, StoreError> {
        check_name(name)?;
        let inner = self.inner.clone();
        blocking(move || Ok(EntryLock::new(inner.lock_file(&inner.entry_lock_path)?))).await
    }
}

#[cfg(feature = "fuzzing")]
/// Fuzz entry: parses a store file header and, as if it were decrypted, its entry table.
pub(crate) fn fuzz_file(data: &[u8]) {
    let path = Path::new("fuzz");
    if let Ok(parsed) = parse(path, data) {
        // A raw key opens only raw-key headers; the AEAD check must fail cleanly.
        if let Ok(keyed) = derive(
            &KeyKind::Raw(Arc::new(Zeroizing::new([0u8; format::KEY_LEN]))),
            &KdfHeader::Raw,
        ) {
            let mut buf = parsed.sealed.to_vec();
            let _ = aead_key(&keyed.key).open_in_place(
                Nonce::assume_unique_for_key(parsed.nonce),
                Aad::from(parsed.aad),
                &mut buf,
            );
        }
    }
    let _ = decode_entries(path, data);
}
