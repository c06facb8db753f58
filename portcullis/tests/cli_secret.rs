//! `portcullis secret`, driven through the real binary: put/get/list/delete, no clear text in
//! the file, and one-line non-zero exits for a wrong passphrase, tampering, truncation and a
//! missing name; the key can also come from the kernel keyring.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn tmp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-cli-secret-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `portcullis secret --file FILE <args>` with the passphrase in the environment.
fn secret(file: &Path, passphrase: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("secret")
        .arg("--file")
        .arg(file)
        // The floor cost keeps the debug-build test fast; the default is 64 MiB / 3 passes.
        .args(["--kdf-memory-kib", "8192", "--kdf-passes", "1"])
        .args(args)
        .env_remove("PORTCULLIS_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = passphrase {
        cmd.env("PORTCULLIS_PASSPHRASE", p);
    }
    let mut child = cmd.spawn().unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_one_line_failure(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, got {o:?}");
    let err = stderr(o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line reason expected: {err:?}"
    );
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

#[test]
fn put_get_list_delete_round_trip_without_clear_text() {
    let dir = tmp("rt");
    let file = dir.join("app.pcs");
    let pass = Some("operator passphrase");
    let o = secret(
        &file,
        pass,
        &["put", "api/refresh-token"],
        Some(b"rt-CLI-SECRET-991\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = secret(&file, pass, &["put", "db"], Some(b"pw-CLI-SECRET-17"));
    assert!(o.status.success(), "{}", stderr(&o));

    let o = secret(&file, pass, &["list"], None);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "api/refresh-token\ndb\n");

    // Without --reveal, the value is not printed.
    let o = secret(&file, pass, &["get", "api/refresh-token"], None);
    assert!(o.status.success());
    assert!(!stdout(&o).contains("CLI-SECRET") && !stderr(&o).contains("CLI-SECRET"));
    assert!(stdout(&o).contains("--reveal"));
    let o = secret(&file, pass, &["get", "api/refresh-token", "--reveal"], None);
    assert!(o.status.success());
    assert_eq!(o.stdout, b"rt-CLI-SECRET-991");

    let raw = std::fs::read(&file).unwrap();
    for needle in [
        &b"CLI-SECRET"[..],
        b"api/refresh-token",
        b"operator passphrase",
    ] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Rotate: put again replaces the value.
    let o = secret(
        &file,
        pass,
        &["put", "api/refresh-token"],
        Some(b"rt-rotated"),
    );
    assert!(o.status.success());
    let o = secret(&file, pass, &["get", "api/refresh-token", "--reveal"], None);
    assert_eq!(o.stdout, b"rt-rotated");

    let o = secret(&file, pass, &["delete", "db"], None);
    assert!(o.status.success());
    let o = secret(&file, pass, &["get", "db"], None);
    assert_one_line_failure(&o, "no secret named \"db\"");
    let o = secret(&file, pass, &["delete", "db"], None);
    assert_one_line_failure(&o, "no secret named \"db\"");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_passphrase_tampering_truncation_and_missing_key_fail_with_one_line() {
    let dir = tmp("fail");
    let file = dir.join("app.pcs");
    let o = secret(&file, Some("right"), &["put", "n"], Some(b"value"));
    assert!(o.status.success(), "{}", stderr(&o));
    let good = std::fs::read(&file).unwrap();

    assert_one_line_failure(
        &secret(&file, Some("wrong"), &["list"], None),
        "wrong key or passphrase",
    );
    assert_one_line_failure(
        &secret(&file, None, &["list"], None),
        "PORTCULLIS_PASSPHRASE is not set",
    );

    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    assert_one_line_failure(
        &secret(&file, Some("right"), &["get", "n"], None),
        "tampered",
    );

    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    assert_one_line_failure(
        &secret(&file, Some("right"), &["get", "n"], None),
        "truncated",
    );

    std::fs::write(&file, &good).unwrap();
    assert_one_line_failure(
        &secret(&file, Some("right"), &["put", "n"], Some(b"")),
        "empty value",
    );
    let o = secret(&file, Some("right"), &["get", "n", "--reveal"], None);
    assert_eq!(o.stdout, b"value");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn keyring_held_file_key_round_trip() {
    let dir = tmp("keyring");
    let file = dir.join("kr.pcs");
    let mut rnd = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
        .unwrap();
    let service = format!("portcullis-cli-test-{}", u32::from_be_bytes(rnd));
    let args = |extra: &[&str]| -> Vec<String> {
        ["--keyring", "--keyring-service", service.as_str()]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str], input: Option<&[u8]>| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        secret(&file, None, &refs, input)
    };
    let o = run(&["put", "k"], Some(b"from-keyring"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["get", "k", "--reveal"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"from-keyring");
    // The passphrase cannot open a keyring-keyed file.
    assert_one_line_failure(
        &secret(&file, Some("guess"), &["list"], None),
        "wrong key or passphrase",
    );
    // Clean the kernel keyring entry.
    let _ = Command::new("keyctl")
        .args(["purge", "-p", "user", &format!("portcullis:{service}:")])
        .output();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reading_a_store_that_does_not_exist_says_so_and_creates_nothing() {
    let dir = tmp("missing");
    let file = dir.join("typo.bin");
    for args in [&["get", "api"][..], &["list"][..], &["delete", "api"][..]] {
        let out = secret(&file, Some("pw"), args, None);
        assert_one_line_failure(&out, "no secret store at");
        assert!(
            stderr(&out).contains("the first `put` creates it"),
            "{}",
            stderr(&out)
        );
        assert!(!file.exists(), "{args:?} must not create the store");
    }
    // Only put creates it.
    let out = secret(&file, Some("pw"), &["put", "api"], Some(b"s3cret\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(file.exists());
    let out = secret(&file, Some("pw"), &["list"], None);
    assert_eq!(stdout(&out).trim(), "api");
    let _ = std::fs::remove_dir_all(&dir);
}
