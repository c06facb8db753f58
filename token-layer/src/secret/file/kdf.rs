//! Where the store key comes from: a raw 256-bit key or an Argon2id passphrase, and the key
//! check recorded in the header.

use std::{fmt, sync::Arc};

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::format::{CHECK_LEN, KDF_ARGON2ID, KDF_RAW, KEY_LEN, SALT_LEN};
use crate::secret::StoreError;

/// Argon2id cost parameters for passphrase-derived keys. They are recorded in the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub(super) m_cost_kib: u32,
    pub(super) t_cost: u32,
    pub(super) p_cost: u32,
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

    /// Cheap parameters (1 MiB, 1 pass), below the floor [`KdfParams::new`] enforces: reached
    /// only through [`crate::secret::danger::insecure_kdf_params`].
    pub(crate) const INSECURE: Self = Self {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };

    pub(super) fn check(&self, enforce_floor: bool) -> Result<(), StoreError> {
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
pub struct FileKey(pub(super) KeyKind);

#[derive(Clone)]
pub(super) enum KeyKind {
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
pub(super) enum KdfHeader {
    Raw,
    Argon2id {
        params: KdfParams,
        salt: [u8; SALT_LEN],
    },
}

impl KdfHeader {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
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
pub(super) struct Keyed {
    pub(super) header: KdfHeader,
    pub(super) key: Zeroizing<[u8; KEY_LEN]>,
    pub(super) check: [u8; CHECK_LEN],
}

pub(super) fn key_check(key: &[u8; KEY_LEN]) -> [u8; CHECK_LEN] {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"portcullis key check v1",
    );
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&tag.as_ref()[..CHECK_LEN]);
    out
}

pub(super) fn derive(kind: &KeyKind, header: &KdfHeader) -> Result<Keyed, StoreError> {
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

pub(super) fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| StoreError::Kdf {
        reason: "system random generator failed".into(),
    })?;
    Ok(out)
}
