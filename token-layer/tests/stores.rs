//! Secret store backends: memory, encrypted file (round trip, wrong key, tampering,
//! truncation, concurrency, crash-safe writes) and the real OS keyring.

use std::{path::PathBuf, sync::Arc};

use portcullis_token::secret::{
    FileKey, FileStore, KdfParams, KeyringStore, MemoryStore, SecretStore, SecretValue, StoreError,
};

fn tmpdir(tag: &str) -> PathBuf {
    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-token-{tag}-{}-{}",
        std::process::id(),
        u64::from_be_bytes(rnd)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn raw_key(byte: u8) -> FileKey {
    FileKey::raw([byte; 32])
}

fn pass(p: &str) -> FileKey {
    FileKey::passphrase(p).with_kdf_params(portcullis_token::secret::danger::insecure_kdf_params())
}

#[tokio::test]
async fn memory_store_round_trip_and_cas() {
    let store = MemoryStore::new();
    assert_eq!(store.get("a").await.unwrap(), None);
    store.put("a", "one".into()).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some("one".into()));
    assert!(
        !store
            .compare_and_swap("a", Some(&"wrong".into()), Some("two".into()))
            .await
            .unwrap()
    );
    assert!(
        store
            .compare_and_swap("a", Some(&"one".into()), Some("two".into()))
            .await
            .unwrap()
    );
    assert_eq!(store.get("a").await.unwrap(), Some("two".into()));
    assert!(
        store
            .compare_and_swap("b", None, Some("x".into()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_swap("b", None, Some("y".into()))
            .await
            .unwrap()
    );
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert!(matches!(
        store.get("").await,
        Err(StoreError::InvalidName { .. })
    ));
}

#[tokio::test]
async fn file_store_round_trips_with_a_passphrase_and_hides_names_and_values() {
    let dir = tmpdir("rt");
    let path = dir.join("secrets.pcs");
    let store = FileStore::open(&path, pass("correct horse")).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
    store
        .put("api/refresh-token", SecretValue::from("rt-value-7f3a9c"))
        .await
        .unwrap();
    store
        .put("db-password", "hunter2-hunter2".into())
        .await
        .unwrap();

    let reopened = FileStore::open(&path, pass("correct horse")).await.unwrap();
    assert_eq!(
        reopened.get("api/refresh-token").await.unwrap(),
        Some("rt-value-7f3a9c".into())
    );
    assert_eq!(
        reopened.list().await.unwrap(),
        vec!["api/refresh-token".to_owned(), "db-password".to_owned()]
    );

    let raw = std::fs::read(&path).unwrap();
    for needle in [
        &b"rt-value-7f3a9c"[..],
        b"hunter2",
        b"api/refresh-token",
        b"db-password",
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "clear text found in the file"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn file_store_refuses_a_wrong_passphrase_and_a_wrong_key() {
    let dir = tmpdir("wrongkey");
    let path = dir.join("s.pcs");
    let store = FileStore::open(&path, pass("right")).await.unwrap();
    store.put("n", "v".into()).await.unwrap();
    let err = FileStore::open(&path, pass("wrong")).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong key or passphrase"));
    let err = FileStore::open(&path, raw_key(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");

    let path2 = dir.join("raw.pcs");
    FileStore::open(&path2, raw_key(7))
        .await
        .unwrap()
        .put("n", "v".into())
        .await
        .unwrap();
    let err = FileStore::open(&path2, raw_key(8)).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    // The file is untouched by failed opens.
    let store = FileStore::open(&path2, raw_key(7)).await.unwrap();
    assert_eq!(store.get("n").await.unwrap(), Some("v".into()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn every_flipped_byte_is_an_error_never_a_panic_or_a_silent_reset() {
    let dir = tmpdir("tamper");
    let path = dir.join("s.pcs");
    let store = FileStore::open(&path, pass("p")).await.unwrap();
    store.put("name", "value".into()).await.unwrap();
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let store = FileStore::open(&path, pass("p")).await;
        let err = store
            .err()
            .unwrap_or_else(|| panic!("byte {i} flipped but the file opened"));
        assert!(
            matches!(
                err,
                StoreError::Tampered { .. }
                    | StoreError::WrongKey { .. }
                    | StoreError::NotAStore { .. }
                    | StoreError::Kdf { .. }
                    | StoreError::Truncated { .. }
            ),
            "byte {i}: {err}"
        );
    }
    // A flipped ciphertext byte is reported as tampering specifically.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    std::fs::write(&path, &bad).unwrap();
    let err = FileStore::open(&path, pass("p")).await.unwrap_err();
    assert!(matches!(err, StoreError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("tampered"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn truncated_and_empty_files_are_errors_not_resets() {
    let dir = tmpdir("trunc");
    let path = dir.join("s.pcs");
    let store = FileStore::open(&path, raw_key(3)).await.unwrap();
    store.put("name", "value".into()).await.unwrap();
    let good = std::fs::read(&path).unwrap();
    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        let err = FileStore::open(&path, raw_key(3))
            .await
            .err()
            .unwrap_or_else(|| panic!("truncated to {len} bytes but opened"));
        assert!(
            matches!(
                err,
                StoreError::Truncated { .. } | StoreError::Tampered { .. }
            ),
            "len {len}: {err}"
        );
    }
    std::fs::write(&path, b"").unwrap();
    let err = FileStore::open(&path, raw_key(3)).await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::write(&path, b"{\"not\": \"a store\"}").unwrap();
    let err = FileStore::open(&path, raw_key(3)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_from_separate_instances_lose_nothing() {
    let dir = tmpdir("concurrent");
    let path = dir.join("s.pcs");
    let a = FileStore::open(&path, raw_key(9)).await.unwrap();
    let b = FileStore::open(&path, raw_key(9)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .put(&format!("k{i}"), format!("v{i}").into())
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let names = a.list().await.unwrap();
    assert_eq!(names.len(), 40);
    for i in 0..40 {
        assert_eq!(
            b.get(&format!("k{i}")).await.unwrap(),
            Some(format!("v{i}").into())
        );
    }
    // Compare-and-swap from many writers: exactly one wins each round.
    let winners = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let winners = winners.clone();
        tasks.push(tokio::spawn(async move {
            if store
                .compare_and_swap("k0", Some(&"v0".into()), Some(format!("w{i}").into()))
                .await
                .unwrap()
            {
                winners.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(winners.load(std::sync::atomic::Ordering::SeqCst), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn kdf_parameters_below_the_floor_are_refused() {
    assert!(KdfParams::new(1024, 1, 1).is_err());
    assert!(KdfParams::new(64 * 1024, 0, 1).is_err());
    assert!(KdfParams::new(64 * 1024, 3, 1).is_ok());
}

#[tokio::test]
async fn keyring_store_round_trips_through_the_kernel_keyring() {
    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    let service = format!("portcullis-test-{}", u64::from_be_bytes(rnd));
    let store = KeyringStore::new(&service);
    assert_eq!(store.get("refresh").await.unwrap(), None);
    store.put("refresh", "kr-secret-1".into()).await.unwrap();
    assert_eq!(
        store.get("refresh").await.unwrap(),
        Some("kr-secret-1".into())
    );
    // A second handle (as another process would) sees the same entry.
    let other = KeyringStore::new(&service);
    assert_eq!(
        other.get("refresh").await.unwrap(),
        Some("kr-secret-1".into())
    );
    assert!(
        other
            .compare_and_swap(
                "refresh",
                Some(&"kr-secret-1".into()),
                Some("kr-secret-2".into())
            )
            .await
            .unwrap()
    );
    assert!(
        !other
            .compare_and_swap(
                "refresh",
                Some(&"kr-secret-1".into()),
                Some("kr-secret-3".into())
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.get("refresh").await.unwrap(),
        Some("kr-secret-2".into())
    );
    assert!(store.delete("refresh").await.unwrap());
    assert_eq!(store.get("refresh").await.unwrap(), None);
    assert!(matches!(
        store.put("refresh", SecretValue::new(Vec::new())).await,
        Err(StoreError::InvalidValue { .. })
    ));

    // The keyring can hold the file store's key.
    let key = store.file_key("file-key").await.unwrap();
    let again = store.file_key("file-key").await.unwrap();
    let dir = tmpdir("kr");
    let path = dir.join("s.pcs");
    FileStore::open(&path, key)
        .await
        .unwrap()
        .put("x", "y".into())
        .await
        .unwrap();
    let reopened = FileStore::open(&path, again).await.unwrap();
    assert_eq!(reopened.get("x").await.unwrap(), Some("y".into()));
    store.delete("file-key").await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

const KEYRING_CHILD: &str = "PORTCULLIS_KEYRING_CHILD";

/// Child half of the keyring session test: runs the store operations in
/// `PORTCULLIS_KEYRING_CHILD` (`<service> <user|persistent> <op>,<op>...`, ops `get`, `put=V`,
/// `cas=OLD>NEW`, `delete`) in whatever session keyring it was started with, one `=> result`
/// line each. Does nothing when run as a normal test.
#[tokio::test]
async fn keyring_session_child() {
    let Ok(script) = std::env::var(KEYRING_CHILD) else {
        return;
    };
    let mut parts = script.split(' ');
    let (service, ring, ops) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let store = KeyringStore::new(service);
    let store = match ring {
        "user" => store,
        "persistent" => store.linux_keyring(portcullis_token::secret::LinuxKeyring::Persistent),
        other => panic!("unknown keyring {other}"),
    };
    let show = |v: Option<SecretValue>| {
        v.map_or("none".to_owned(), |v| v.expose_str().unwrap().to_owned())
    };
    for op in ops.split(',') {
        let result = match op.split_once('=') {
            None if op == "get" => show(store.get("entry").await.unwrap()),
            None if op == "delete" => store.delete("entry").await.unwrap().to_string(),
            Some(("put", v)) => {
                store.put("entry", v.into()).await.unwrap();
                "ok".to_owned()
            }
            Some(("cas", swap)) => {
                let (old, new) = swap.split_once('>').unwrap();
                store
                    .compare_and_swap("entry", Some(&old.into()), Some(new.into()))
                    .await
                    .unwrap()
                    .to_string()
            }
            _ => panic!("unknown op {op}"),
        };
        println!("=> {result}");
    }
}

/// Runs [`keyring_session_child`] in a new session keyring (`keyctl session -`) that links
/// the user keyring when `links_user` (as a login session does) and does not otherwise (as
/// service managers, containers and cron set it up).
fn in_new_session(links_user: bool, script: &str) -> Vec<String> {
    let mut cmd = std::process::Command::new("keyctl");
    cmd.args(["session", "-"]);
    if links_user {
        cmd.args([
            "sh",
            "-c",
            "keyctl link @u @s >/dev/null && exec \"$@\"",
            "sh",
        ]);
    }
    let out = cmd
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "keyring_session_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KEYRING_CHILD, script)
        .output()
        .expect("keyctl (Debian package keyutils) must be installed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        // libtest prints `test keyring_session_child ... ` before the first line.
        .filter_map(|l| l.split_once("=> ").map(|(_, r)| r.to_owned()))
        .collect()
}

#[test]
fn keyring_store_finds_its_entries_whether_or_not_the_session_links_the_user_keyring() {
    for ring in ["user", "persistent"] {
        let mut rnd = [0u8; 8];
        aws_lc_rs::rand::fill(&mut rnd).unwrap();
        let service = format!("portcullis-session-test-{}", u64::from_be_bytes(rnd));
        let script = |ops: &str| format!("{service} {ring} {ops}");
        // A session that does not link @u: what is put is found, by this process...
        assert_eq!(
            in_new_session(false, &script("get,put=v1,get,cas=v1>v2,get")),
            ["none", "ok", "v1", "true", "v2"],
            "{ring} keyring, unlinked session"
        );
        // ...by another process in another such session...
        assert_eq!(
            in_new_session(false, &script("get")),
            ["v2"],
            "{ring} keyring, second unlinked session"
        );
        // ...and by a login-style session linking @u, and the other way round.
        assert_eq!(
            in_new_session(true, &script("get,put=v3")),
            ["v2", "ok"],
            "{ring} keyring, session linking @u"
        );
        assert_eq!(
            in_new_session(false, &script("get,delete,get")),
            ["v3", "true", "none"],
            "{ring} keyring, unlinked session after a linked one"
        );
    }
    // The two keyrings are distinct: an entry in one is not found through the other.
    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    let service = format!("portcullis-session-test-{}", u64::from_be_bytes(rnd));
    assert_eq!(
        in_new_session(false, &format!("{service} persistent put=p")),
        ["ok"]
    );
    assert_eq!(
        in_new_session(false, &format!("{service} user get")),
        ["none"]
    );
    assert_eq!(
        in_new_session(true, &format!("{service} persistent get,delete")),
        ["p", "true"]
    );
}
