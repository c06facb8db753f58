//! Threat: someone with write access to the disk (malware, a backup restore gone wrong, a
//! curious user) truncates the encrypted token store, flips bits in it, or swaps in another
//! store's file, hoping the client loads a garbage or attacker-chosen secret, resets the store,
//! or crashes. Defence: the token layer's `FileStore` (AES-256-GCM over the whole content, the
//! header bound as associated data, a key check): every such file is a typed `StoreError`
//! (`Truncated`, `NotAStore`, `WrongKey`, `Tampered`) from `open`, from every read of an
//! already-open store and from `TokenSource::load`; the file is never rewritten or reset, and
//! no error text carries a secret.

use std::path::Path;
use std::time::Duration;

use portcullis::token::TokenSource;
use portcullis::token::secret::{
    FileKey, FileStore, KdfParams, SecretStore, SecretValue, StoreError,
};
use portcullis::token::token::{RefreshError, TokenError, TokenResponse, TokenSet};

use crate::support::TempDir;

const SECRET: &str = "rt-SECRET-7c1f9a";
const MAGIC_LEN: usize = 8;
/// magic, KDF kind, key check (16), nonce (12), GCM tag (16): the shortest raw-key file.
const RAW_MIN: usize = MAGIC_LEN + 1 + 16 + 12 + 16;

fn raw(byte: u8) -> FileKey {
    FileKey::raw([byte; 32])
}

fn pass(p: &str) -> FileKey {
    FileKey::passphrase(p).with_kdf_params(portcullis::token::secret::danger::insecure_kdf_params())
}

/// A store at `dir/name` holding [`SECRET`] and a token record written by a `TokenSource`.
async fn make_store(dir: &Path, name: &str, key: FileKey) -> Vec<u8> {
    let path = dir.join(name);
    let store = FileStore::open(&path, key).await.unwrap();
    store.put("api/refresh", SECRET.into()).await.unwrap();
    let source = TokenSource::builder(never_refresh, store)
        .load()
        .await
        .unwrap();
    source
        .seed(TokenSet::new(
            "at-SECRET-1",
            Duration::from_secs(600),
            Some(SECRET.into()),
        ))
        .await
        .unwrap();
    std::fs::read(&path).unwrap()
}

async fn never_refresh(_: secrecy::SecretString) -> Result<TokenResponse, RefreshError> {
    Err(RefreshError::InvalidResponse("not in this test"))
}

/// Opens `bytes` written at `path` with `key`: the error, checked to be clean.
async fn open_err(path: &Path, bytes: &[u8], key: FileKey) -> StoreError {
    std::fs::write(path, bytes).unwrap();
    let err = match FileStore::open(path, key).await {
        Ok(store) => {
            let got = store.get("api/refresh").await;
            panic!(
                "a damaged file opened: get gave {:?}",
                got.map(|v| v.map(|s| s.len()))
            );
        }
        Err(e) => e,
    };
    let text = format!("{err} {err:?}");
    assert!(!text.contains("SECRET"), "{text}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes,
        "the file was not rewritten"
    );
    err
}

#[tokio::test]
async fn every_truncation_is_a_typed_error() {
    let dir = TempDir::new("store-trunc");
    let good = make_store(dir.path(), "raw.pcs", raw(1)).await;
    let path = dir.path().join("victim.pcs");
    // Every length through the header, then every fifth through the sealed content.
    let lengths = (0..=RAW_MIN).chain((RAW_MIN + 1..good.len()).step_by(5));
    for n in lengths {
        let err = open_err(&path, &good[..n], raw(1)).await;
        if n < RAW_MIN {
            assert!(
                matches!(err, StoreError::Truncated { len, expected, .. }
                    if len == n as u64 && expected as usize <= RAW_MIN && expected > len),
                "{n} bytes: {err:?}"
            );
        } else {
            assert!(
                matches!(err, StoreError::Tampered { .. }),
                "{n} bytes: {err:?}"
            );
        }
    }

    // A passphrase store: its longer header truncated, then its sealed content.
    let good = make_store(dir.path(), "pass.pcs", pass("correct horse")).await;
    let header = MAGIC_LEN + 1 + 12 + 16;
    for n in [5, MAGIC_LEN + 1, header + 20] {
        let err = open_err(&path, &good[..n], pass("correct horse")).await;
        assert!(
            matches!(err, StoreError::Truncated { .. }),
            "{n} bytes: {err:?}"
        );
    }
    for n in [good.len() - 1] {
        let err = open_err(&path, &good[..n], pass("correct horse")).await;
        assert!(
            matches!(err, StoreError::Tampered { .. }),
            "{n} bytes: {err:?}"
        );
    }
}

#[tokio::test]
async fn every_flipped_bit_is_a_typed_error_and_an_open_store_notices() {
    let dir = TempDir::new("store-flip");
    let good = make_store(dir.path(), "raw.pcs", raw(2)).await;
    let path = dir.path().join("victim.pcs");
    let (kdf, check_end) = (MAGIC_LEN, MAGIC_LEN + 1 + 16);
    for i in 0..good.len() {
        // One bit per byte, each bit position in turn.
        let bit = i % 8;
        let mut bad = good.clone();
        bad[i] ^= 1 << bit;
        let err = open_err(&path, &bad, raw(2)).await;
        let ok = match i {
            i if i < kdf => matches!(err, StoreError::NotAStore { .. }),
            // Another KDF kind: unknown, or Argon2id whose "header" fails the key check.
            i if i == kdf => matches!(
                err,
                StoreError::NotAStore { .. } | StoreError::WrongKey { .. }
            ),
            i if i < check_end => matches!(err, StoreError::WrongKey { .. }),
            // Nonce, ciphertext and tag: authentication fails.
            _ => matches!(err, StoreError::Tampered { .. }),
        };
        assert!(ok, "byte {i} bit {bit} (of {}): {err:?}", good.len());
    }

    // A store already open in the client: the next read and write after the flip fail
    // closed, and the write does not overwrite the evidence.
    std::fs::write(&path, &good).unwrap();
    let store = FileStore::open(&path, raw(2)).await.unwrap();
    assert_eq!(
        store
            .get("api/refresh")
            .await
            .unwrap()
            .and_then(|v| v.expose_str().map(str::to_owned)),
        Some(SECRET.to_owned())
    );
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        store.get("api/refresh").await,
        Err(StoreError::Tampered { .. })
    ));
    assert!(matches!(
        store
            .put("api/refresh", SecretValue::from("attacker"))
            .await,
        Err(StoreError::Tampered { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bad, "not reset");

    // The token source on top of it refuses to start.
    match TokenSource::builder(never_refresh, store).load().await {
        Err(TokenError::Store(StoreError::Tampered { path: p })) => assert_eq!(p, path),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a token source loaded from a tampered store"),
    }
}

#[tokio::test]
async fn another_stores_file_swapped_in_is_refused() {
    let dir = TempDir::new("store-swap");
    let path = dir.path().join("victim.pcs");
    let other_raw = make_store(dir.path(), "other-raw.pcs", raw(9)).await;
    let other_pass = make_store(dir.path(), "other-pass.pcs", pass("another passphrase")).await;

    // The victim's key is its own: another key's file never opens with it.
    for (what, bytes) in [
        ("raw-key store", &other_raw),
        ("passphrase store", &other_pass),
    ] {
        let err = open_err(&path, bytes, raw(3)).await;
        assert!(
            matches!(err, StoreError::WrongKey { .. }),
            "{what}: {err:?}"
        );
        let err = open_err(&path, bytes, pass("victim passphrase")).await;
        assert!(
            matches!(err, StoreError::WrongKey { .. }),
            "{what}: {err:?}"
        );
    }
    assert!(
        open_err(&path, &other_raw, raw(3))
            .await
            .to_string()
            .contains("wrong key or passphrase (the file was not changed)")
    );

    // Not a store at all: a JSON token file, an empty file, a file past the 16 MiB cap.
    let json = br#"{"access_token":"at","refresh_token":"rt"}"#;
    let err = open_err(&path, json, raw(3)).await;
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    let err = open_err(&path, b"", raw(3)).await;
    assert!(
        matches!(err, StoreError::Truncated { len: 0, .. }),
        "{err:?}"
    );
    let huge = dir.path().join("huge.pcs");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap(); // sparse: nothing is written
    drop(f);
    let err = FileStore::open(&huge, raw(3)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotAStore { reason, .. } if reason.contains("16 MiB")),
        "{err:?}"
    );
}
