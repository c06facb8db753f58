//! The CLI explains itself: `pin` (curl's pin form, RFC 3339 dates, PEM and DER errors in
//! words), `policy check --help` documents the policy format, `policy init` writes a policy
//! for a live host that `policy check` and `probe` accept, and every subcommand's `--help`
//! shows examples. Run as the real binary against TLS servers on loopback.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use testkit::pki::TestPki;
use testkit::server::{TestServer, server_config};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cli-messages-{tag}-{}-{}",
            std::process::id(),
            testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// No Debug formatting leaked into a message.
fn assert_no_debug(text: &str) {
    for leak in [
        "Some(",
        "None",
        "NomError",
        "Eof",
        "Der(",
        "Error(",
        "MissingSectionEnd",
        "[45, 45",
        "OffsetDateTime",
        "UtcOffset",
    ] {
        assert!(!text.contains(leak), "{leak:?} in: {text}");
    }
}

/// `2027-03-01T12:00:00Z`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn pin_prints_curls_form_and_curl_accepts_it() {
    let pki = TestPki::new();
    let dir = TempDir::new("curl");
    let leaf = dir.write("leaf.pem", pki.leaf.cert_pem());
    let ca = dir.write("ca.pem", pki.root.cert_pem());

    let out = run(&["pin", "--format", "curl", &leaf]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let curl_pin = stdout(&out);
    let curl_pin = curl_pin.trim_end();
    let ours = pki.leaf.spki_pin();
    assert_eq!(curl_pin, ours.replacen("sha256/", "sha256//", 1));
    // Exactly curl's grammar: sha256// then 44 characters of standard padded base64.
    let b64 = curl_pin.strip_prefix("sha256//").unwrap();
    assert_eq!(b64.len(), 44);
    assert!(b64.ends_with('='));
    assert!(
        b64.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    );

    // A chain file gives one line per certificate.
    let chain = dir.write(
        "chain.pem",
        format!("{}{}", pki.leaf.cert_pem(), pki.intermediate.cert_pem()),
    );
    let out = run(&["pin", "--format", "curl", &chain]).await;
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));

    // curl itself, where installed: the right pin passes, a wrong one is refused (exit 90).
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
        let curl = |pin: String| {
            let (url, resolve, ca) = (
                server.url("/"),
                format!("localhost:{}:127.0.0.1", server.port()),
                ca.clone(),
            );
            async move {
                tokio::process::Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "10",
                        "--cacert",
                        &ca,
                        "--resolve",
                        &resolve,
                    ])
                    .args(["--pinnedpubkey", &pin, &url])
                    .output()
                    .await
                    .unwrap()
            }
        };
        let ok = curl(curl_pin.to_owned()).await;
        assert_eq!(code(&ok), 0, "{}", stderr(&ok));
        assert_eq!(stdout(&ok), "hello");
        let other = pki.root.spki_pin().replacen("sha256/", "sha256//", 1);
        let refused = curl(other).await;
        assert_eq!(code(&refused), 90, "{}", stderr(&refused));
    }
}

#[tokio::test]
async fn pin_messages_are_in_words_with_rfc3339_dates() {
    let pki = TestPki::new();
    let dir = TempDir::new("words");
    let pem = pki.leaf.cert_pem();
    let leaf = dir.write("leaf.pem", &pem);
    let out = run(&["pin", &leaf]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let not_after = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("notAfter: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(is_rfc3339(not_after), "{not_after}");
    assert_no_debug(&text);

    // A PEM cut in the middle: no END line.
    let truncated = dir.write("truncated.pem", &pem[..pem.len() / 2]);
    let out = run(&["pin", &truncated]).await;
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("the file is truncated"), "{err}");
    assert!(
        err.contains("expected complete -----BEGIN CERTIFICATE-----"),
        "{err}"
    );
    assert_no_debug(&err);

    // A complete PEM block whose DER is cut short.
    let der = pki.leaf.cert.to_vec();
    let short = dir.write(
        "short.pem",
        testkit::pki::pem("CERTIFICATE", &der[..der.len() / 2]),
    );
    // Garbage that is not PEM, and an empty file.
    let garbage = dir.write("garbage.der", b"\x30\x82\x01\x00not a certificate at all");
    let empty = dir.write("empty.der", b"");
    for (file, want) in [
        (&short, "not an X.509 certificate"),
        (&garbage, "not an X.509 certificate"),
        (&empty, "the file is empty"),
    ] {
        let out = run(&["pin", file]).await;
        assert_eq!(code(&out), 1, "{file}");
        let err = stderr(&out);
        assert!(err.contains(want), "{file}: {err}");
        assert!(err.contains("expected a PEM"), "{file}: {err}");
        assert_no_debug(&err);
    }
}

#[tokio::test]
async fn every_help_shows_examples_and_policy_check_documents_the_format() {
    for cmd in [
        &["pin", "--help"][..],
        &["probe", "--help"],
        &["request", "--help"],
        &["policy", "check", "--help"],
        &["policy", "init", "--help"],
    ] {
        let out = run(cmd).await;
        assert_eq!(code(&out), 0, "{cmd:?}");
        let help = stdout(&out);
        assert!(help.contains("Examples:\n  portcullis "), "{cmd:?}: {help}");
    }
    let out = run(&["policy", "check", "--help"]).await;
    let help = stdout(&out);
    for field in [
        "[[host]]",
        "pattern = ",
        "pins = [",
        "mode = \"enforce\"",
        "\"report_only\"",
        "expires = ",
        "position = \"any\"",
        "leaf | intermediate | root | any",
        "allow_single_pin",
        "report_uri",
        "expiry_warning_days",
        "**.example.com",
    ] {
        assert!(help.contains(field), "{field}: {help}");
    }
}

#[tokio::test]
async fn policy_init_writes_a_policy_that_check_and_probe_accept() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("init");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let url = format!("https://localhost:{}", server.port());
    let to = server.addr().to_string();
    let file = dir.path("pins.toml");

    let out = run(&[
        "policy",
        "init",
        &url,
        "--ca-file",
        &ca,
        "--connect-to",
        &to,
        "--output",
        &file,
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("add a backup pin"),
        "{}",
        stderr(&out)
    );
    let policy = std::fs::read_to_string(&file).unwrap();
    assert!(policy.contains("pattern = \"localhost\""), "{policy}");
    for (position, pin) in [
        ("leaf", pki.leaf.spki_pin()),
        ("intermediate", pki.intermediate.spki_pin()),
        ("root", pki.root.spki_pin()),
    ] {
        assert!(
            policy.contains(&format!("  # {position}: ")),
            "{position}: {policy}"
        );
        assert!(
            policy.contains(&format!("  \"{pin}\",")),
            "{position}: {policy}"
        );
    }
    assert!(policy.contains("add a backup pin"), "{policy}");
    assert!(policy.contains("openssl genpkey"), "{policy}");
    assert_no_debug(&policy);

    let out = run(&["policy", "check", &file]).await;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let out = run(&[
        "probe",
        &url,
        "--ca-file",
        &ca,
        "--connect-to",
        &to,
        "--policy",
        &file,
    ])
    .await;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("pin OK"), "{}", stdout(&out));

    // Never overwrites.
    let out = run(&[
        "policy",
        "init",
        &url,
        "--ca-file",
        &ca,
        "--connect-to",
        &to,
        "--output",
        &file,
    ])
    .await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), policy);

    // To stdout, the same policy.
    let out = run(&[
        "policy",
        "init",
        &url,
        "--ca-file",
        &ca,
        "--connect-to",
        &to,
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed = dir.write("printed.toml", stdout(&out));
    assert_eq!(code(&run(&["policy", "check", &printed]).await), 0);

    // Standard validation still applies: without the private CA it is refused.
    let out = run(&[
        "policy",
        "init",
        &url,
        "--connect-to",
        &to,
        "--ca-file",
        &dir.write("other.pem", TestPki::named("Other").root.cert_pem()),
    ])
    .await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown issuer"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[tokio::test]
async fn policy_init_gives_up_on_a_silent_server_and_refuses_plain_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let started = Instant::now();
    let out = run(&[
        "policy",
        "init",
        &format!("https://localhost:{port}"),
        "--connect-to",
        &format!("127.0.0.1:{port}"),
        "--connect-timeout",
        "0.3",
    ])
    .await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 0.3 s (--connect-timeout)"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.abort();

    let out = run(&["policy", "init", "http://localhost:1"]).await;
    assert_eq!(code(&out), 64);
    assert!(
        stderr(&out).contains("only speaks https://"),
        "{}",
        stderr(&out)
    );
    let out = run(&["policy", "init", "localhost"]).await;
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("has no scheme"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_bad_ca_file_is_explained_in_words() {
    let dir = TempDir::new("cafile");
    let empty = dir.write("empty.pem", b"");
    let garbage = dir.write("garbage.der", b"\x30\x03\x02\x01\x01");
    for (file, want) in [
        (&empty, "the file is empty"),
        (&garbage, "not an X.509 certificate"),
    ] {
        for cmd in ["probe", "request"] {
            let out = run(&[cmd, "https://localhost:1/", "--ca-file", file]).await;
            assert_eq!(code(&out), 64, "{cmd} {file}");
            let err = stderr(&out);
            assert!(
                err.contains(&format!("--ca-file {file}: {want}")),
                "{cmd}: {err}"
            );
            assert_no_debug(&err);
            assert!(!err.contains("TrailingData"), "{cmd}: {err}");
        }
    }
}

#[tokio::test]
async fn policy_init_keeps_hostile_certificate_names_inside_comments() {
    // CA names chosen by whoever runs the server, trying to add a host entry to the policy.
    let pki = TestPki::named(
        "Evil\n[[host]]\npattern = \"**.bank.example\"\npins = [\"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", \"sha256/BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n#",
    );
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("hostile");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let url = format!("https://localhost:{}", server.port());
    let to = server.addr().to_string();
    let out = run(&[
        "policy",
        "init",
        &url,
        "--ca-file",
        &ca,
        "--connect-to",
        &to,
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let policy = stdout(&out);
    assert_eq!(
        policy
            .lines()
            .filter(|l| l.trim_start().starts_with("[[host]]"))
            .count(),
        1,
        "{policy}"
    );
    assert!(
        !policy
            .lines()
            .any(|l| l.trim_start().starts_with("pattern = \"**.bank")),
        "{policy}"
    );
    let file = dir.write("pins.toml", &policy);
    let out = run(&["policy", "check", &file]).await;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("1 entries OK"), "{}", stdout(&out));
}
