//! `portcullis request`: send one request through the client stack (pinned TLS, RFC 9421
//! signing, bearer tokens from an encrypted store, safe retries), like curl.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_attest::{Algorithm, SignLayer, SigningKey};
use portcullis_pin::{
    ConnectError, Mode, PinFailure, PinPolicy, PinnedConnector, PinnedPeer, PinnedStream,
    PinnedTls, Position,
};
use portcullis_retry::retry::RetryLayer;
use portcullis_token::token::{ClientAuth, RefreshError, TokenError, TokenResponse};
use portcullis_token::{BearerLayer, FileKey, FileStore, OAuthRefresh, Refresh, TokenSource};
use secrecy::{SecretSlice, SecretString};
use time::OffsetDateTime;
use tower::util::Either;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::probe::{EXIT_PIN_MISMATCH, EXIT_TLS, build_policy, pinned_tls};
use super::usage_error;

/// Exit code for an HTTP answer outside 2xx.
const EXIT_HTTP_STATUS: u8 = 3;
/// Exit code when `--token-endpoint` names a host no enforcing pin entry covers (nothing is
/// sent: the refresh token never travels under standard certificate validation only).
const EXIT_TOKEN_ENDPOINT_UNPINNED: u8 = 4;
/// The environment variable holding the token store's passphrase.
const PASSPHRASE_ENV: &str = "PORTCULLIS_PASSPHRASE";

/// Send one HTTPS request through the Portcullis client stack: pinned TLS (standard
/// validation plus pins), optional RFC 9421 signature, optional bearer token from an
/// encrypted file store (refreshed and rotated when due), safe retries. The response body
/// goes to stdout; with -v, the status, headers and security outcome go to stderr.
///
/// Exit status: 0 on a 2xx answer, 1 on a pin mismatch, 2 on a connection or TLS failure
/// (or anything else that stopped the request before an answer), 3 on any other HTTP
/// status, 4 when the token endpoint's host is not pinned, 64 on a usage error.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    portcullis request https://api.example.com/v1/me --pin sha256/AAAA... --pin sha256/BBBB...\n  \
    portcullis request -X POST -H 'content-type: application/json' -d '{\"qty\":1}' \\\n      \
    https://api.example.com/orders --sign-key device.pem --key-id device-1 -v\n  \
    PORTCULLIS_PASSPHRASE=... portcullis request https://api.example.com/v1/me \\\n      \
    --token-file app.pcs --token-name portcullis.token\n  \
    portcullis request https://api.example.com/health --connect-timeout 2 --max-time 5\n\n\
    A non-2xx answer prints its status line, WWW-Authenticate and portcullis-reason to stderr.\n\n\
    Exit status:\n  \
    0   a 2xx answer\n  \
    1   pin mismatch\n  \
    2   connection or TLS failure, a timeout (--connect-timeout, --max-time), or anything else\n      \
    that stopped the request before an answer\n  \
    3   any other HTTP status\n  \
    4   the --token-endpoint host is not covered by an enforcing pin entry (nothing was sent)\n  \
    64  usage error")]
pub(crate) struct RequestArgs {
    /// The `https://` URL.
    url: String,
    /// Request method (default GET, or POST with -d).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Request body; `@FILE` reads it from a file.
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    data: Option<String>,
    /// A pin the server must match (repeatable): sha256/<base64>, bare base64, or a colon-hex
    /// certificate fingerprint.
    #[arg(long = "pin", value_name = "PIN")]
    pins: Vec<String>,
    /// A pin policy file (TOML, or JSON by extension).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Trust these PEM root certificates instead of the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Connect to this address while validating for the URL's host.
    #[arg(long, value_name = "ADDR:PORT")]
    connect_to: Option<SocketAddr>,
    /// Sign the request (RFC 9421) with this key: PEM (PKCS#8) for ed25519 and
    /// ecdsa-p256-sha256, the raw secret bytes (at least 32) for hmac-sha256.
    #[arg(long, value_name = "FILE", requires = "key_id")]
    sign_key: Option<PathBuf>,
    /// The `keyid` the verifier knows the signing key by.
    #[arg(long, value_name = "ID", requires = "sign_key")]
    key_id: Option<String>,
    /// The signing algorithm (default: from the PEM key).
    #[arg(long, value_name = "ALG", requires = "sign_key", value_parser = ["ed25519", "ecdsa-p256-sha256", "hmac-sha256"])]
    alg: Option<String>,
    /// Encrypted token store (see `portcullis secret`); its passphrase is read from
    /// PORTCULLIS_PASSPHRASE.
    #[arg(long, value_name = "PATH", requires = "token_name")]
    token_file: Option<PathBuf>,
    /// The store entry holding the token: a token record written by a `TokenSource`
    /// (refreshed when due), or a plain access token.
    #[arg(long, value_name = "NAME", requires = "token_file")]
    token_name: Option<String>,
    /// OAuth token endpoint used to refresh an expiring token record (refresh-token grant;
    /// the rotated refresh token is written back to the store). Its host must be pinned by an
    /// enforcing entry (--pin when it is the URL's host, or --policy), else exit 4.
    #[arg(long, value_name = "URL", requires = "token_file")]
    token_endpoint: Option<String>,
    /// Client id sent to the token endpoint.
    #[arg(long, value_name = "ID", default_value = "portcullis-cli")]
    client_id: String,
    /// Give up on a connection whose TCP connect and TLS handshake take longer (seconds,
    /// decimals allowed; each retry gets its own).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = super::parse_seconds)]
    connect_timeout: Duration,
    /// Give up when sending the request and reading the whole answer take longer (seconds,
    /// decimals allowed).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = super::parse_seconds)]
    max_time: Duration,
    /// Print the status, headers and security outcome to stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// Runs `portcullis request`.
pub(crate) fn run(args: RequestArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis request: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_TLS);
        }
    };
    runtime.block_on(execute(args))
}

/// A usage or setup problem, reported before anything is sent.
struct Usage(String);

impl<E: std::fmt::Display> From<E> for Usage {
    fn from(e: E) -> Self {
        Usage(e.to_string())
    }
}

/// What the request should look like.
struct Prepared {
    uri: http::Uri,
    host: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

fn prepare(args: &RequestArgs) -> Result<Prepared, Usage> {
    let (uri, host) = super::parse_https_url(&args.url, "request").map_err(Usage)?;
    let body = match args.data.as_deref() {
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                Bytes::from(std::fs::read(path).map_err(|e| Usage(format!("-d @{path}: {e}")))?)
            }
            None => Bytes::from(d.to_owned()),
        },
        None => Bytes::new(),
    };
    let method = match args.method.as_deref() {
        Some(m) => Method::from_bytes(m.as_bytes())
            .map_err(|_| Usage(format!("-X {m:?} is not a valid HTTP method")))?,
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| Usage(format!("-H {h:?}: expected 'Name: value'")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| Usage(format!("-H {h:?}: invalid header name")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| Usage(format!("-H {h:?}: invalid header value")))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, Usage>>()?;
    Ok(Prepared {
        uri,
        host,
        method,
        headers,
        body,
    })
}

fn signing_key(args: &RequestArgs) -> Result<Option<SigningKey>, Usage> {
    let (Some(path), Some(keyid)) = (&args.sign_key, &args.key_id) else {
        return Ok(None);
    };
    let bytes =
        std::fs::read(path).map_err(|e| Usage(format!("--sign-key {}: {e}", path.display())))?;
    let wanted = args.alg.as_deref().and_then(Algorithm::from_name);
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if is_pem && let Some(kind) = public_pem_kind(&bytes) {
        return Err(Usage(format!(
            "--sign-key {}: this is a public key ({kind}), a private key is needed to sign: \
             a PKCS#8 PEM file (-----BEGIN PRIVATE KEY-----), or the raw shared secret with \
             --alg hmac-sha256",
            path.display()
        )));
    }
    let key = if wanted == Some(Algorithm::HmacSha256) {
        if is_pem {
            return Err(Usage(format!(
                "--sign-key {} is a PEM key file, but --alg hmac-sha256 signs with a raw shared \
                 secret (the file's bytes, at least 32); pass the secret file, or drop --alg to \
                 sign with the PEM key's own algorithm",
                path.display()
            )));
        }
        SigningKey::hmac_sha256(keyid.as_str(), &SecretSlice::from(bytes))
            .map_err(|e| Usage(format!("--sign-key {}: {e}", path.display())))?
    } else {
        let pem = std::str::from_utf8(&bytes).map_err(|_| {
            Usage(format!(
                "--sign-key {}: not a PEM file (for a raw HMAC secret pass --alg hmac-sha256)",
                path.display()
            ))
        })?;
        let key = SigningKey::from_pem(keyid.as_str(), pem)
            .map_err(|e| Usage(format!("--sign-key {}: {e}", path.display())))?;
        if let Some(alg) = wanted
            && alg != key.algorithm()
        {
            return Err(Usage(format!(
                "--sign-key {} holds an {} key, not {}",
                path.display(),
                key.algorithm().as_str(),
                alg.as_str()
            )));
        }
        key
    };
    Ok(Some(key))
}

/// What a PEM file holding no private key holds instead, if it holds a public key or
/// certificate.
fn public_pem_kind(pem: &[u8]) -> Option<&'static str> {
    let has = |label: &[u8]| pem.windows(label.len()).any(|w| w == label);
    if has(b"PRIVATE KEY-----") {
        return None;
    }
    if has(b"-----BEGIN PUBLIC KEY-----") || has(b"-----BEGIN RSA PUBLIC KEY-----") {
        Some("-----BEGIN PUBLIC KEY-----")
    } else if has(b"-----BEGIN CERTIFICATE-----") {
        Some("a certificate, which holds only the public key")
    } else {
        None
    }
}

// ----- Tokens. -----

/// Refreshes through the token endpoint when one is given, and records that it did.
struct CliRefresh {
    endpoint: Option<OAuthRefresh<Client<PinnedConnector, Full<Bytes>>>>,
    refreshed: Arc<AtomicBool>,
}

impl Refresh for CliRefresh {
    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<TokenResponse, RefreshError>> + Send {
        self.refreshed.store(true, Ordering::SeqCst);
        let endpoint = self.endpoint.clone();
        let refresh_token = refresh_token.clone();
        async move {
            match endpoint {
                Some(oauth) => oauth.refresh(&refresh_token).await,
                None => Err(RefreshError::Other(
                    "the stored access token is due for refresh: pass --token-endpoint".into(),
                )),
            }
        }
    }
}

enum Token {
    /// A token record, refreshed when due.
    Source(TokenSource<CliRefresh, FileStore>, Arc<AtomicBool>),
    /// A plain access token stored under the name.
    Static(HeaderValue),
}

async fn load_token(args: &RequestArgs, tls: &PinnedTls) -> Result<Option<(Token, String)>, Usage> {
    let (Some(path), Some(name)) = (&args.token_file, &args.token_name) else {
        return Ok(None);
    };
    if !path.exists() {
        return Err(Usage(format!(
            "--token-file {}: no such store",
            path.display()
        )));
    }
    let passphrase = std::env::var(PASSPHRASE_ENV).map_err(|_| {
        Usage(format!(
            "--token-file needs the store's passphrase in the environment variable {PASSPHRASE_ENV}"
        ))
    })?;
    let store = FileStore::open(path, FileKey::passphrase(passphrase))
        .await
        .map_err(|e| Usage(format!("--token-file {}: {e}", path.display())))?;
    let value = portcullis_token::SecretStore::get(&store, name)
        .await
        .map_err(|e| Usage(format!("--token-file {}: {e}", path.display())))?
        .ok_or_else(|| Usage(format!("no entry named {name:?} in {}", path.display())))?;
    let endpoint = match &args.token_endpoint {
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| Usage(format!("--token-endpoint {url:?}: {e}")))?;
            let client = Client::builder(TokioExecutor::new()).build(tls.connector());
            Some(OAuthRefresh::new(
                client,
                uri,
                ClientAuth::Public {
                    client_id: args.client_id.clone(),
                },
            ))
        }
        None => None,
    };
    let refreshed = Arc::new(AtomicBool::new(false));
    let refresher = CliRefresh {
        endpoint,
        refreshed: refreshed.clone(),
    };
    // Refresh when less than 30 s is left, and never in the background: a refresh token
    // rotated while the command exits would be lost.
    let margin = Duration::from_secs(30);
    let loaded = TokenSource::builder(refresher, store)
        .name(name.clone())
        .refresh_margin(margin)
        .min_validity(margin)
        .refresh_timeout(Duration::from_secs(20))
        .load()
        .await;
    let described = format!("{name:?} from {}", path.display());
    match loaded {
        Ok(source) => Ok(Some((Token::Source(source, refreshed), described))),
        Err(TokenError::Corrupt { .. }) => {
            // Not a token record: the entry is the access token itself.
            let text = value
                .expose_str()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Usage(format!(
                        "entry {name:?} is neither a token record nor a text token"
                    ))
                })?;
            let mut header = HeaderValue::from_str(&format!("Bearer {text}"))
                .map_err(|_| Usage(format!("entry {name:?} is not a usable bearer token")))?;
            header.set_sensitive(true);
            Ok(Some((Token::Static(header), described)))
        }
        Err(e) => Err(Usage(format!(
            "--token-file {}: {}",
            path.display(),
            error_chain(&e)
        ))),
    }
}

// ----- The bottom of the stack. -----

/// Buffers any request body into `Full<Bytes>` (stands in for the signing layer, which does
/// the same, when no key is given).
#[derive(Clone, Debug)]
struct BufferLayer;

impl<S> Layer<S> for BufferLayer {
    type Service = Buffered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Buffered(inner)
    }
}

#[derive(Clone, Debug)]
struct Buffered<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for Buffered<S>
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.0.clone();
        let mut inner = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            inner
                .call(Request::from_parts(parts, Full::new(bytes)))
                .await
                .map_err(Into::into)
        })
    }
}

/// What the last attempt put on the wire (no secret: header names and the signature
/// parameters only).
#[derive(Clone, Debug, Default)]
struct Sent {
    request_line: String,
    signature_input: Option<String>,
    authorization: bool,
    attempts: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn execute(args: RequestArgs) -> ExitCode {
    match send(&args).await {
        Ok(code) => code,
        Err(Usage(message)) => usage_error(&message.replace(['\n', '\r'], " ")),
    }
}

/// Why the token endpoint may not receive the refresh token.
fn token_endpoint_unpinned(
    args: &RequestArgs,
    policy: &PinPolicy,
) -> Result<Option<String>, Usage> {
    let Some(url) = &args.token_endpoint else {
        return Ok(None);
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Usage(format!("--token-endpoint {url:?}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Usage(format!(
            "--token-endpoint {url:?}: only https:// (the refresh token is never sent in the clear)"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| Usage(format!("--token-endpoint {url:?} has no host")))?;
    let how = "pin it with --pin when it is the URL's host, or with an enforcing [[host]] entry in --policy";
    Ok(match policy.entry_for(host) {
        Some(entry) if entry.enforcing_at(OffsetDateTime::now_utc()) => None,
        Some(entry) => Some(format!(
            "refusing to send the refresh token to {host}: its pin entry {} is {} \
             ({how}); nothing was sent",
            entry.pattern(),
            if entry.configured_mode() == Mode::ReportOnly {
                "report-only"
            } else {
                "expired"
            },
        )),
        None => Some(format!(
            "refusing to send the refresh token to {host}: no pin covers the token endpoint, \
             so it would travel under standard certificate validation only ({how}); \
             nothing was sent"
        )),
    })
}

async fn send(args: &RequestArgs) -> Result<ExitCode, Usage> {
    let prepared = prepare(args)?;
    let policy = build_policy(&prepared.host, &args.pins, args.policy.as_deref()).map_err(Usage)?;
    // Before anything is read from the store or sent: the refresh token goes only to a
    // pinned token endpoint.
    if let Some(refusal) = token_endpoint_unpinned(args, &policy)? {
        eprintln!("portcullis request: {refusal}");
        return Ok(ExitCode::from(EXIT_TOKEN_ENDPOINT_UNPINNED));
    }
    let tls = pinned_tls(policy, args.ca_file.as_deref(), false).map_err(Usage)?;
    let key = signing_key(args)?;
    let signed = key.is_some();
    let token = load_token(args, &tls).await?;

    let mut connector = tls.connector();
    if let Some(addr) = args.connect_to {
        connector = connector.connect_to(addr);
    }
    let connector = TimedConnector {
        inner: connector,
        limit: args.connect_timeout,
        host: prepared.host.clone(),
    };
    let hyper: Client<TimedConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let sent = Arc::new(Mutex::new(Sent::default()));
    let tap = sent.clone();
    let wire = tower::service_fn(move |req: Request<Full<Bytes>>| {
        {
            let mut s = lock(&tap);
            s.attempts += 1;
            s.request_line = format!("{} {}", req.method(), req.uri());
            s.signature_input = req
                .headers()
                .get("signature-input")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            s.authorization = req.headers().contains_key(AUTHORIZATION);
        }
        hyper.request(req)
    });

    let (bearer, static_token, token_note) = match token {
        Some((Token::Source(source, refreshed), described)) => (
            Some(BearerLayer::new(source)),
            None,
            Some((described, Some(refreshed))),
        ),
        Some((Token::Static(value), described)) => (None, Some(value), Some((described, None))),
        None => (None, None, None),
    };
    let sign = match key {
        Some(key) => Either::Left(SignLayer::new(key)),
        None => Either::Right(BufferLayer),
    };
    let client = portcullis::client::builder()
        .retry(RetryLayer::new().max_attempts(3))
        .tokens(tower::util::option_layer(bearer))
        .sign(sign)
        .service(wire);

    let mut req = Request::builder()
        .method(prepared.method.clone())
        .uri(prepared.uri.clone())
        .body(Full::new(prepared.body.clone()))
        .map_err(|e| Usage(format!("cannot build the request: {e}")))?;
    for (name, value) in &prepared.headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
    if let Some(value) = static_token {
        req.headers_mut().insert(AUTHORIZATION, value);
    }

    let deadline = tokio::time::Instant::now() + args.max_time;
    let timed_out = || {
        eprintln!(
            "portcullis request: operation timed out after {} (--max-time) with no complete answer",
            super::seconds(args.max_time)
        );
        Ok(ExitCode::from(EXIT_TLS))
    };
    let Ok(result) = tokio::time::timeout_at(deadline, client.oneshot(req)).await else {
        return timed_out();
    };
    let sent = lock(&sent).clone();
    let verbose = args.verbose;
    let token_line = |refreshed_now: bool| {
        token_note.as_ref().map(|(described, flag)| match flag {
            None => format!("token: plain access token {described} sent as bearer (no refresh possible)"),
            Some(_) if refreshed_now => format!(
                "token: {described} refreshed through the token endpoint before sending (rotated refresh token saved)"
            ),
            Some(_) => format!("token: {described} still valid, not refreshed"),
        })
    };
    let refreshed_now = token_note
        .as_ref()
        .and_then(|(_, f)| f.as_ref())
        .is_some_and(|f| f.load(Ordering::SeqCst));

    match result {
        Ok(res) => {
            let peer = res.extensions().get::<PinnedPeer>().cloned();
            let status = res.status();
            let pin_mismatch = peer
                .as_ref()
                .and_then(PinnedPeer::check)
                .is_some_and(|c| c.pattern().is_some() && c.matched_pin().is_none());
            if verbose {
                print_outcome(
                    &res,
                    peer.as_ref(),
                    &sent,
                    signed,
                    token_line(refreshed_now),
                );
            }
            if !verbose && !status.is_success() {
                print_status(&res);
            }
            let Ok(collected) = tokio::time::timeout_at(deadline, res.into_body().collect()).await
            else {
                return timed_out();
            };
            let body = match collected {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    eprintln!("portcullis request: the response body failed: {e}");
                    return Ok(ExitCode::from(EXIT_TLS));
                }
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&body).and_then(|()| out.flush());
            if pin_mismatch {
                eprintln!(
                    "portcullis request: no pin matched for {} (report-only policy entry)",
                    prepared.host
                );
                return Ok(ExitCode::from(EXIT_PIN_MISMATCH));
            }
            Ok(if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_HTTP_STATUS)
            })
        }
        Err(err) => {
            if let Some(failure) = PinFailure::find(&*err) {
                eprintln!("{failure}");
                eprintln!("portcullis request: pin mismatch for {}", prepared.host);
                return Ok(ExitCode::from(EXIT_PIN_MISMATCH));
            }
            if verbose && let Some(line) = token_line(refreshed_now) {
                eprintln!("* {line}");
            }
            let message = if let Some(t) = find::<ConnectTimedOut>(&*err) {
                t.to_string()
            } else if let Some(c) = find::<ConnectError>(&*err)
                && c.tls_error().is_some()
            {
                super::explain_connect_error(c)
            } else {
                error_chain(&*err)
            };
            eprintln!("portcullis request: {message}");
            Ok(ExitCode::from(EXIT_TLS))
        }
    }
}

fn print_outcome(
    res: &Response<Incoming>,
    peer: Option<&PinnedPeer>,
    sent: &Sent,
    signed: bool,
    token: Option<String>,
) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "> {}", sent.request_line);
    let pin = match peer.and_then(PinnedPeer::check) {
        Some(c) if c.matched_pin().is_some() => format!(
            "pin: {} matched at {} (pattern {}){}",
            c.matched_pin().map(ToString::to_string).unwrap_or_default(),
            c.position().map(Position::as_str).unwrap_or("?"),
            c.pattern().unwrap_or("-"),
            if peer.is_some_and(PinnedPeer::resumed) {
                ", session resumed"
            } else {
                ""
            },
        ),
        Some(c) if c.pattern().is_some() => format!(
            "pin: NO pin matched (report-only entry {})",
            c.pattern().unwrap_or("-")
        ),
        _ => "pin: host not pinned; standard certificate validation passed".to_owned(),
    };
    let _ = writeln!(err, "* {pin}");
    let signature = match (&sent.signature_input, signed) {
        (Some(input), _) => format!("signature sent: signature-input: {input}"),
        (None, true) => "signature: key given but no signature was sent".to_owned(),
        (None, false) => "signature: not signed (no --sign-key)".to_owned(),
    };
    let _ = writeln!(err, "* {signature}");
    if let Some(token) = token {
        let _ = writeln!(err, "* {token}");
    }
    if sent.authorization {
        let _ = writeln!(err, "* authorization: Bearer [redacted] sent");
    }
    if sent.attempts > 1 {
        let _ = writeln!(err, "* attempts: {}", sent.attempts);
    }
    let version = match res.version() {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    let _ = writeln!(err, "< {version} {}", res.status());
    for (name, value) in res.headers() {
        let _ = writeln!(err, "< {name}: {}", value.to_str().unwrap_or("<binary>"));
    }
}

/// The status line and the headers that say why, for a non-2xx answer without `-v`.
fn print_status(res: &Response<Incoming>) {
    let mut err = std::io::stderr().lock();
    let status = res.status();
    let _ = writeln!(
        err,
        "portcullis request: the server answered {} {}",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for name in ["www-authenticate", "portcullis-reason"] {
        for value in res.headers().get_all(name) {
            let value = super::printable(&String::from_utf8_lossy(value.as_bytes()), 512);
            let _ = writeln!(err, "< {name}: {value}");
        }
    }
}

/// The first error of type `T` in the chain.
fn find<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// No TLS connection within `--connect-timeout`.
#[derive(Debug)]
struct ConnectTimedOut {
    host: String,
    after: Duration,
}

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection to {} timed out after {} (--connect-timeout): no TLS handshake completed",
            self.host,
            super::seconds(self.after)
        )
    }
}

impl std::error::Error for ConnectTimedOut {}

/// The pinned connector with a time limit on each connection (TCP connect plus handshake).
#[derive(Clone)]
struct TimedConnector {
    inner: PinnedConnector,
    limit: Duration,
    host: String,
}

impl Service<http::Uri> for TimedConnector {
    type Response = PinnedStream;
    type Error = BoxError;
    type Future = BoxFuture<PinnedStream>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let (limit, host) = (self.limit, self.host.clone());
        Box::pin(async move {
            match tokio::time::timeout(limit, connect).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut { host, after: limit }) as BoxError),
            }
        })
    }
}

/// One error in words: durations in seconds rather than Rust's Debug form, and hyper's
/// `client error (Connect)` wrapper left out.
fn in_words(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = err.downcast_ref::<RefreshError>() {
        return Some(match e {
            RefreshError::Timeout(d) => {
                format!("token refresh timed out after {}", super::seconds(*d))
            }
            RefreshError::Endpoint {
                status,
                error: Some(code),
            } => format!("the token endpoint answered {status} with OAuth error {code}"),
            other => other.to_string(),
        });
    }
    if let Some(TokenError::BackingOff { retry_in, last }) = err.downcast_ref::<TokenError>() {
        return Some(format!(
            "token refresh failed recently ({last}); next attempt in {}",
            super::seconds(Duration::from_secs(retry_in.as_secs().max(1)))
        ));
    }
    if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>()
        && e.is_connect()
    {
        return Some(String::new());
    }
    None
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = in_words(err).unwrap_or_else(|| err.to_string());
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = in_words(e).unwrap_or_else(|| e.to_string());
        if s.is_empty() {
            cur = e.source();
            continue;
        }
        if out.is_empty() {
            out = s;
        } else if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out.replace(['\n', '\r'], " ")
}
