//! Threat: a run whose session keyring does not link the user keyring (`keyctl session -`, as
//! under service managers, containers and cron) stores the encrypted file's key in the kernel
//! keyring, and the next run cannot read it back: the key sits in the user keyring but is not
//! possessed, so lookups report it missing, the run fails (or makes a new key) and the secrets
//! are out of reach. Defence: the keyring store names the keyring it uses and possesses it
//! through the process keyring whatever the session links, and the CLI refuses to make a new
//! key for a file whose key is gone.
//!
//! Driven through the real `portcullis` binary and the real `keyctl`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// How the new session keyring is set up.
#[derive(Clone, Copy, Debug)]
enum Session {
    /// `keyctl session -`: a fresh anonymous session keyring that does not link `@u`.
    Bare,
    /// A fresh session keyring linking `@u`, as `pam_keyinit` sets up a login.
    LinksUser,
}

fn run_in(session: Session, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("keyctl");
    cmd.args(["session", "-"]);
    if let Session::LinksUser = session {
        cmd.args([
            "sh",
            "-c",
            "keyctl link @u @s >/dev/null && exec \"$@\"",
            "sh",
        ]);
    }
    let mut child = cmd
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyctl (Debian package keyutils) must be installed for this test");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

struct Case {
    dir: PathBuf,
    file: PathBuf,
    service: String,
}

impl Case {
    fn new(tag: &str) -> Self {
        let mut rnd = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
            .unwrap();
        let n = u64::from_be_bytes(rnd);
        let dir = std::env::temp_dir().join(format!("portcullis-adv-keyring-{tag}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            file: dir.join("app.pcs"),
            dir,
            service: format!("portcullis-adv-{tag}-{n}"),
        }
    }

    fn secret(&self, session: Session, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let file = self.file.to_str().unwrap();
        let mut all = vec![
            "secret",
            "--file",
            file,
            "--keyring",
            "--keyring-service",
            &self.service,
        ];
        all.extend_from_slice(args);
        run_in(session, &all, stdin)
    }

    fn put(&self, session: Session, name: &str, value: &[u8]) {
        let o = self.secret(session, &["put", name], Some(value));
        assert!(
            o.status.success(),
            "put in a {session:?} session failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("not a reboot"),
            "put must say what the key survives: {err}"
        );
    }

    fn get(&self, session: Session, name: &str) -> Output {
        self.secret(session, &["get", name, "--reveal"], None)
    }

    fn assert_get(&self, session: Session, name: &str, value: &[u8]) {
        let o = self.get(session, name);
        assert!(
            o.status.success(),
            "get in a {session:?} session failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.stdout, value, "get in a {session:?} session");
    }
}

/// Removes every kernel keyring entry of `service`, from a session that can see them.
fn forget_keys(service: &str) {
    let _ = Command::new("keyctl")
        .args([
            "session",
            "-",
            "sh",
            "-c",
            "keyctl link @u @s >/dev/null; keyctl purge -p user \"$1\" >/dev/null",
            "sh",
        ])
        .arg(format!("portcullis:{service}:"))
        .output();
}

impl Drop for Case {
    fn drop(&mut self) {
        forget_keys(&self.service);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn cli_put_then_get_works_in_a_session_that_does_not_link_the_user_keyring() {
    let case = Case::new("bare");
    case.put(Session::Bare, "api/refresh-token", b"rt-bare-session");
    // Every command runs in its own new session, as separate cron runs do.
    case.assert_get(Session::Bare, "api/refresh-token", b"rt-bare-session");
    case.put(Session::Bare, "second", b"two");
    case.assert_get(Session::Bare, "second", b"two");
    case.assert_get(Session::Bare, "api/refresh-token", b"rt-bare-session");
    // A login-style session opens the same file with the same key.
    case.assert_get(Session::LinksUser, "second", b"two");
}

#[test]
fn cli_put_then_get_works_in_a_session_that_links_the_user_keyring() {
    let case = Case::new("linked");
    case.put(Session::LinksUser, "db", b"pw-linked-session");
    case.assert_get(Session::LinksUser, "db", b"pw-linked-session");
    // And a service started without the link reads what the login stored.
    case.assert_get(Session::Bare, "db", b"pw-linked-session");
}

#[test]
fn a_file_whose_key_left_the_keyring_is_refused_not_rekeyed() {
    let case = Case::new("lost");
    case.put(Session::Bare, "n", b"v");
    let before = std::fs::read(&case.file).unwrap();
    assert!(key_present(&case.service, &case.file));
    // What a reboot does to the kernel keyring.
    forget_keys(&case.service);
    assert!(!key_present(&case.service, &case.file));
    for session in [Session::Bare, Session::LinksUser] {
        let o = case.get(session, "n");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("is not in the OS keyring") && err.contains("reboot"),
            "{session:?}: {err}"
        );
    }
    // No new key was made and the file is untouched.
    assert_eq!(std::fs::read(&case.file).unwrap(), before);
    assert!(!key_present(&case.service, &case.file));
}

fn key_present(service: &str, file: &Path) -> bool {
    let dir = std::fs::canonicalize(file.parent().unwrap()).unwrap();
    let description = format!(
        "portcullis:{service}:file-key:{}",
        dir.join(file.file_name().unwrap()).display()
    );
    Command::new("keyctl")
        .args([
            "session",
            "-",
            "sh",
            "-c",
            "keyctl link @u @s >/dev/null; keyctl search @u user \"$1\" >/dev/null",
            "sh",
            &description,
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}
