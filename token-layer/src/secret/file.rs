//! The encrypted file store.
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

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hmac,
};
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

use super::{EntryLock, SecretStore, SecretValue, StoreError, check_name};

const MAGIC: &[u8; 8] = b"PCSTORE1";
const KDF_RAW: u8 = 0;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const CHECK_LEN: usize = 16;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Files larger than this are refused instead of read into memory.
const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;
/// The largest value the file store accepts.
const MAX_VALUE_LEN: usize = 1024 * 1024;

/// Argon2id cost parameters for passphrase-derived keys. They are recorded in the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (above OWASP's Argon2id minimum).
    pub const DEFAULT: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Custom costs: memory in KiB (at least 8 MiB), passes (at least 1), lanes (1 to 16).
    ///
    /// # Errors
    ///
    /// [`StoreError::Kdf`] when a cost is below the floor or above what Argon2 accepts.
    pub fn new(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Self, StoreError> {
        let params = Self {
            m_cost_kib,
            t_cost,
            p_cost,
        };
        params.check(true)?;
        Ok(params)
    }

    /// Cheap parameters for tests only (1 MiB, 1 pass): never use them for real secrets.
    #[doc(hidden)]
    pub fn insecure_for_tests() -> Self {
        Self {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        }
    }

    fn check(&self, enforce_floor: bool) -> Result<(), StoreError> {
        let floor = if enforce_floor { 8 * 1024 } else { 1024 };
        if self.m_cost_kib < floor || self.m_cost_kib > 4 * 1024 * 1024 {
            return Err(StoreError::Kdf {
                reason: format!(
                    "memory cost {} KiB out of range, expected {floor} to 4194304",
                    self.m_cost_kib
                ),
            });
        }
        if self.t_cost == 0 || self.t_cost > 64 {
            return Err(StoreError::Kdf {
                reason: format!("{} passes out of range, expected 1 to 64", self.t_cost),
            });
        }
        if self.p_cost == 0 || self.p_cost > 16 {
            return Err(StoreError::Kdf {
                reason: format!("{} lanes out of range, expected 1 to 16", self.p_cost),
            });
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where the file store's encryption key comes from.
#[derive(Clone)]
pub struct FileKey(KeyKind);

#[derive(Clone)]
enum KeyKind {
    Raw(Arc<Zeroizing<[u8; KEY_LEN]>>),
    Passphrase(SecretString, KdfParams),
}

impl FileKey {
    /// A raw 256-bit key (for example one kept in the OS keyring, see
    /// [`KeyringStore::file_key`](super::KeyringStore::file_key)).
    pub fn raw(key: [u8; KEY_LEN]) -> Self {
        Self(KeyKind::Raw(Arc::new(Zeroizing::new(key))))
    }

    /// A passphrase stretched with Argon2id ([`KdfParams::DEFAULT`]) and a random per-file salt.
    pub fn passphrase(passphrase: impl Into<SecretString>) -> Self {
        Self(KeyKind::Passphrase(passphrase.into(), KdfParams::DEFAULT))
    }

    /// Sets the Argon2id costs used when this key creates a new file. An existing file keeps
    /// the costs in its header.
    pub fn with_kdf_params(self, params: KdfParams) -> Self {
        match self.0 {
            KeyKind::Passphrase(p, _) => Self(KeyKind::Passphrase(p, params)),
            raw => Self(raw),
        }
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyKind::Raw(_) => f.write_str("FileKey::Raw([REDACTED])"),
            KeyKind::Passphrase(_, params) => {
                write!(f, "FileKey::Passphrase([REDACTED], {params:?})")
            }
        }
    }
}

/// The header fields that decide the key.
#[derive(Clone, PartialEq, Eq)]
enum KdfHeader {
    Raw,
    Argon2id {
        params: KdfParams,
        salt: [u8; SALT_LEN],
    },
}

impl KdfHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KdfHeader::Raw => out.push(KDF_RAW),
            KdfHeader::Argon2id { params, salt } => {
                out.push(KDF_ARGON2ID);
                out.extend_from_slice(&params.m_cost_kib.to_be_bytes());
                out.extend_from_slice(&params.t_cost.to_be_bytes());
                out.extend_from_slice(&params.p_cost.to_be_bytes());
                out.extend_from_slice(salt);
            }
        }
    }
}

/// A derived key and the header it belongs to.
struct Keyed {
    header: KdfHeader,
    key: Zeroizing<[u8; KEY_LEN]>,
    check: [u8; CHECK_LEN],
}

fn key_check(key: &[u8; KEY_LEN]) -> [u8; CHECK_LEN] {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"portcullis key check v1",
    );
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&tag.as_ref()[..CHECK_LEN]);
    out
}

fn derive(kind: &KeyKind, header: &KdfHeader) -> Result<Keyed, StoreError> {
    let key = match (kind, header) {
        (KeyKind::Raw(key), _) => Zeroizing::new(***key),
        (KeyKind::Passphrase(pass, _), KdfHeader::Argon2id { params, salt }) => {
            params.check(false)?;
            let argon_params = argon2::Params::new(
                params.m_cost_kib,
                params.t_cost,
                params.p_cost,
                Some(KEY_LEN),
            )
            .map_err(|e| StoreError::Kdf {
                reason: e.to_string(),
            })?;
            let argon = argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                argon_params,
            );
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            argon
                .hash_password_into(pass.expose_secret().as_bytes(), salt, out.as_mut())
                .map_err(|e| StoreError::Kdf {
                    reason: e.to_string(),
                })?;
            out
        }
        (KeyKind::Passphrase(..), KdfHeader::Raw) => {
            // A passphrase cannot open a raw-key file: report it as a wrong key.
            let mut zero = Zeroizing::new([0u8; KEY_LEN]);
            aws_lc_rs::rand::fill(zero.as_mut()).map_err(|_| StoreError::Kdf {
                reason: "system random generator failed".into(),
            })?;
            zero
        }
    };
    let check = key_check(&key);
    Ok(Keyed {
        header: header.clone(),
        key,
        check,
    })
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| StoreError::Kdf {
        reason: "system random generator failed".into(),
    })?;
    Ok(out)
}

struct Parsed<'a> {
    header: KdfHeader,
    check: [u8; CHECK_LEN],
    aad: &'a [u8],
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<Parsed<'a>, StoreError> {
    let truncated = |expected: usize| StoreError::Truncated {
        path: path.to_owned(),
        len: data.len() as u64,
        expected: expected as u64,
    };
    if data.len() < MAGIC.len() {
        if data.is_empty() || MAGIC.starts_with(data) {
            return Err(truncated(MAGIC.len() + 1 + CHECK_LEN + NONCE_LEN + TAG_LEN));
        }
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
            reason: "missing the PCSTORE1 magic bytes",
        });
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
            reason: if data.starts_with(b"PCSTORE") {
                "unsupported format version (expected 1)"
            } else {
                "missing the PCSTORE1 magic bytes"
            },
        });
    }
    let mut pos = MAGIC.len();
    let kdf = *data
        .get(pos)
        .ok_or_else(|| truncated(pos + 1 + CHECK_LEN + NONCE_LEN + TAG_LEN))?;
    pos += 1;
    let header = match kdf {
        KDF_RAW => KdfHeader::Raw,
        KDF_ARGON2ID => {
            let need = pos + 12 + SALT_LEN;
            let Some(bytes) = data.get(pos..need) else {
                return Err(truncated(need + CHECK_LEN + NONCE_LEN + TAG_LEN));
            };
            let word =
                |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            let mut salt = [0u8; SALT_LEN];
            salt.copy_from_slice(&bytes[12..]);
            pos = need;
            KdfHeader::Argon2id {
                params: KdfParams {
                    m_cost_kib: word(0),
                    t_cost: word(4),
                    p_cost: word(8),
                },
                salt,
            }
        }
        _ => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: "unknown key derivation kind",
            });
        }
    };
    let min = pos + CHECK_LEN + NONCE_LEN + TAG_LEN;
    if data.len() < min {
        return Err(truncated(min));
    }
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&data[pos..pos + CHECK_LEN]);
    pos += CHECK_LEN;
    let aad = &data[..pos];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[pos..pos + NONCE_LEN]);
    pos += NONCE_LEN;
    Ok(Parsed {
        header,
        check,
        aad,
        nonce,
        sealed: &data[pos..],
    })
}

type Entries = BTreeMap<String, SecretValue>;

fn decode_entries(path: &Path, plain: &[u8]) -> Result<Entries, StoreError> {
    // The plaintext is authenticated, so a malformed one means a bug or a forged key; still
    // never panic on it.
    let corrupt = || StoreError::NotAStore {
        path: path.to_owned(),
        reason: "authenticated content is malformed",
    };
    let mut rest = plain;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(corrupt());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
    let mut map = Entries::new();
    for _ in 0..count {
        let name_len = u16::from_be_bytes(take(2)?.try_into().map_err(|_| corrupt())?);
        let name = std::str::from_utf8(take(name_len.into())?)
            .map_err(|_| corrupt())?
            .to_owned();
        let value_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
        let value = take(value_len as usize)?.to_vec();
        map.insert(name, SecretValue::new(value));
    }
    if !rest.is_empty() {
        return Err(corrupt());
    }
    Ok(map)
}

fn encode_entries(map: &Entries) -> Zeroizing<Vec<u8>> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    out.extend_from_slice(&(map.len() as u32).to_be_bytes());
    for (name, value) in map {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.expose());
    }
    out
}

fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256-GCM accepts every 32-byte key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!()))
}

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

/// Fuzz entry: parses a store file header and, as if it were decrypted, its entry table.
pub(crate) fn fuzz_file(data: &[u8]) {
    let path = Path::new("fuzz");
    if let Ok(parsed) = parse(path, data) {
        // A raw key opens only raw-key headers; the AEAD check must fail cleanly.
        if let Ok(keyed) = derive(
            &KeyKind::Raw(Arc::new(Zeroizing::new([0u8; KEY_LEN]))),
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
