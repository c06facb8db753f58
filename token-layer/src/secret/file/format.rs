//! The store's file format and its sealing.
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

use std::{collections::BTreeMap, path::Path};

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, NONCE_LEN, UnboundKey};
use zeroize::Zeroizing;

use super::kdf::{KdfHeader, KdfParams};
use crate::secret::{SecretValue, StoreError};

pub(super) const MAGIC: &[u8; 8] = b"PCSTORE1";
pub(super) const KDF_RAW: u8 = 0;
pub(super) const KDF_ARGON2ID: u8 = 1;
pub(super) const SALT_LEN: usize = 16;
pub(super) const CHECK_LEN: usize = 16;
pub(super) const TAG_LEN: usize = 16;
pub(super) const KEY_LEN: usize = 32;
/// Files larger than this are refused instead of read into memory.
pub(super) const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;
/// The largest value the file store accepts.
pub(super) const MAX_VALUE_LEN: usize = 1024 * 1024;

pub(super) struct Parsed<'a> {
    pub(super) header: KdfHeader,
    pub(super) check: [u8; CHECK_LEN],
    pub(super) aad: &'a [u8],
    pub(super) nonce: [u8; NONCE_LEN],
    pub(super) sealed: &'a [u8],
}

pub(super) fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<Parsed<'a>, StoreError> {
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

pub(super) type Entries = BTreeMap<String, SecretValue>;

pub(super) fn decode_entries(path: &Path, plain: &[u8]) -> Result<Entries, StoreError> {
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

pub(super) fn encode_entries(map: &Entries) -> Zeroizing<Vec<u8>> {
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

pub(super) fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256-GCM accepts every 32-byte key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!()))
}
