//! The `portcullis pin`, `probe` and `policy check` commands, run as the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::pki::{Authority, TestPki};
use testkit::server::{TestServer, server_config};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cli-{tag}-{}-{}",
            std::process::id(),
            testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

async fn run_async(args: Vec<String>) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `openssl args` with `stdin` as its input; panics unless it exits with status 0 and
/// prints something, so an openssl failure can never pass for a result.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl {args:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "openssl {args:?} printed nothing");
    out.stdout
}

/// `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary |
/// openssl base64`, each step checked.
fn openssl_spki_pin(cert_pem: &Path) -> String {
    let pem = std::fs::read(cert_pem).unwrap();
    let pubkey = openssl(&["x509", "-pubkey", "-noout"], &pem);
    let spki = openssl(&["pkey", "-pubin", "-outform", "der"], &pubkey);
    let digest = openssl(&["dgst", "-sha256", "-binary"], &spki);
    assert_eq!(digest.len(), 32, "a SHA-256 digest");
    text(&openssl(&["base64", "-A"], &digest)).trim().to_owned()
}

fn openssl_fingerprint(cert_pem: &Path) -> String {
    let pem = std::fs::read(cert_pem).unwrap();
    let out = text(&openssl(
        &["x509", "-noout", "-fingerprint", "-sha256"],
        &pem,
    ));
    // `sha256 Fingerprint=AB:CD:...`
    let (_, hex) = out
        .trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("unexpected openssl output: {out}"));
    assert_eq!(hex.len(), 32 * 3 - 1, "{out}");
    hex.to_owned()
}

#[test]
fn pin_matches_the_openssl_pipeline_for_pem_chains_and_der() {
    let pki = TestPki::new();
    let dir = TempDir::new("pin");
    let leaf = dir.write("leaf.pem", pki.leaf.cert_pem());
    let chain = dir.write(
        "chain.pem",
        format!("{}{}", pki.leaf.cert_pem(), pki.intermediate.cert_pem()),
    );
    let der = dir.write("root.der", pki.root.cert().as_ref());

    let out = run_pin(&[leaf.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap();
    assert_eq!(first, format!("sha256/{}", openssl_spki_pin(&leaf)));
    assert_eq!(first, pki.leaf.spki_pin());
    assert!(
        stdout.contains("subject: O=Portcullis Test, CN=localhost"),
        "{stdout}"
    );
    assert!(stdout.contains("issuer: O=Portcullis Test, CN=Portcullis Test Intermediate CA"));
    assert!(stdout.contains("notAfter: "));
    assert!(stdout.contains(&format!(
        "sha256 fingerprint: {}",
        openssl_fingerprint(&leaf)
    )));

    let out = run_pin(&[chain.to_str().unwrap(), der.to_str().unwrap()]);
    assert!(out.status.success());
    let pins: Vec<_> = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("sha256/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        pins,
        [
            pki.leaf.spki_pin(),
            pki.intermediate.spki_pin(),
            pki.root.spki_pin()
        ]
    );
}

fn run_pin(args: &[&str]) -> Output {
    let mut all = vec!["pin"];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn pin_rejects_bad_files_with_a_reason() {
    let dir = TempDir::new("badpin");
    let junk = dir.write("junk.der", b"not a certificate");
    let empty_pem = dir.write(
        "empty.pem",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    for (file, reason) in [
        (junk.to_str().unwrap(), "not an X.509 certificate"),
        (empty_pem.to_str().unwrap(), "no CERTIFICATE block"),
        ("/nonexistent.pem", "cannot read"),
    ] {
        let out = run_pin(&[file]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        assert!(
            text(&out.stderr).contains(reason),
            "{file}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&["pin"]);
    assert_eq!(out.status.code(), Some(64), "usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_chain_and_exit_codes() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("probe");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let url = format!("https://localhost:{}", server.port());
    let connect_to = format!("127.0.0.1:{}", server.port());
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "probe".into(),
            url.clone(),
            "--ca-file".into(),
            ca.display().to_string(),
            "--connect-to".into(),
            connect_to.clone(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // A matching pin: exit 0 and the verified chain with positions and pins.
    let out = run_async(base(&["--pin", &pki.intermediate.spki_pin()])).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("leaf         {}", pki.leaf.spki_pin())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("intermediate {}", pki.intermediate.spki_pin())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("root         {}", pki.root.spki_pin())),
        "{stdout}"
    );
    assert!(stdout.contains("expires 20"), "{stdout}");
    assert!(stdout.contains("pin OK"), "{stdout}");
    assert!(stdout.contains("X25519MLKEM768"), "{stdout}");

    // A pin that does not match: exit 1 with the chain and configured pins.
    let stranger = Authority::root("Stranger").spki_pin();
    let out = run_async(base(&["--pin", &stranger])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("certificate pinning failure for localhost!"));
    assert!(text(&out.stdout).contains(&stranger));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    // A policy file.
    let policy = dir.write(
        "policy.toml",
        format!(
            "[[host]]\npattern = \"localhost\"\npins = [\"{}\", \"{}\"]\n",
            pki.root.spki_pin(),
            stranger
        ),
    );
    let out = run_async(base(&["--policy", policy.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("matched at root"));

    // An untrusted chain: exit 2.
    let other = TestPki::named("Unrelated");
    let wrong_ca = dir.write("wrong.pem", other.root.cert_pem());
    let out = run_async(vec![
        "probe".into(),
        url.clone(),
        "--ca-file".into(),
        wrong_ca.display().to_string(),
        "--connect-to".into(),
        connect_to.clone(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown issuer") && text(&out.stderr).contains("--ca-file"),
        "{}",
        text(&out.stderr)
    );

    // Usage errors: exit 64 with a one-line reason.
    for args in [
        vec![
            "probe".to_string(),
            format!("http://localhost:{}", server.port()),
        ],
        base(&["--pin", "sha256/short"]),
        vec!["probe".to_string()],
    ] {
        let out = run_async(args.clone()).await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn policy_check_lints() {
    let a = Authority::root("A").spki_pin();
    let b = Authority::root("B").spki_pin();
    let dir = TempDir::new("policy");
    let good = dir.write(
        "good.toml",
        format!("[[host]]\npattern = \"**.example.com\"\npins = [\"{a}\", \"{b}\"]\n"),
    );
    let out = run(&["policy", "check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("1 entries OK"));

    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(10)).date();
    let warn = dir.write(
        "warn.toml",
        format!(
            "[[host]]\npattern = \"api.example.com\"\npins = [\"{a}\", \"{b}\"]\nexpires = \"{soon}\"\n\
             [[host]]\npattern = \"b.example.com\"\npins = [\"{a}\"]\nmode = \"report_only\"\n"
        ),
    );
    let out = run(&["policy", "check", warn.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("within 30 days"), "{stdout}");
    assert!(stdout.contains("only one distinct pin"), "{stdout}");

    let zero = format!("sha256/{}", "A".repeat(43) + "=");
    let bad = dir.write(
        "bad.json",
        format!(
            r#"{{"host": [{{"pattern": "api.example.com", "pins": ["{a}", "{b}"], "expires": "2020-01-01"}},
                         {{"pattern": "z.example.com", "pins": ["{a}", "{zero}"]}}]}}"#
        ),
    );
    let out = run(&["policy", "check", bad.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("expired on 2020-01-01"), "{stdout}");
    assert!(stdout.contains("can never match"), "{stdout}");

    let broken = dir.write(
        "broken.toml",
        "[[host]]\npattern = \"a.*.com\"\npins = []\n",
    );
    let out = run(&["policy", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("leftmost label"),
        "{}",
        text(&out.stdout)
    );
}
