//! An axum service behind the whole Portcullis server stack, configured from files: copy this
//! file into your service and point the environment variables at your own files.
//!
//! Nothing is minted here: the TLS certificate chain and key, the RFC 9421 keys of the clients
//! allowed to sign requests and the token issuer's JWKS are all read from disk when the
//! server starts, and any file that is missing or wrong stops it with an error naming the file.
//!
//! Stack (outermost first): audit (JSON lines file) → pre-auth rate limit by peer IP →
//! RFC 9421 signature verification → DPoP proof verification (RFC 9449) → bearer JWT
//! validation with per-route scopes and DPoP binding → per-identity rate limit → axum.
//!
//! | Variable | What |
//! |---|---|
//! | `PORTCULLIS_TLS_CHAIN` | server certificate chain, PEM, leaf first |
//! | `PORTCULLIS_TLS_KEY` | server private key, PEM (PKCS#8, PKCS#1 or SEC1) |
//! | `PORTCULLIS_CLIENT_KEYS` | JWKS of the clients' RFC 9421 public keys (`kid` = `keyid`) |
//! | `PORTCULLIS_ISSUER_JWKS` | JWKS of the token issuer's public keys |
//! | `PORTCULLIS_ISSUER` | expected `iss` of access tokens |
//! | `PORTCULLIS_AUDIENCE` | expected `aud` of access tokens |
//! | `PORTCULLIS_ORIGIN` | this service's public origin, for DPoP `htu` (`https://api.example.com`) |
//! | `PORTCULLIS_AUDIT_LOG` | audit log file (JSON lines, rotated) |
//! | `PORTCULLIS_LISTEN` | listen address (default `127.0.0.1:8443`) |
//!
//! ```sh
//! PORTCULLIS_TLS_CHAIN=chain.pem PORTCULLIS_TLS_KEY=key.pem \
//! PORTCULLIS_CLIENT_KEYS=clients.jwks.json PORTCULLIS_ISSUER_JWKS=issuer.jwks.json \
//! PORTCULLIS_ISSUER=https://login.example PORTCULLIS_AUDIENCE=orders-api \
//! PORTCULLIS_ORIGIN=https://localhost:8443 PORTCULLIS_AUDIT_LOG=audit.jsonl \
//! cargo run -p portcullis-examples --example axum_adopt
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use axum::routing::get;
use axum::{Extension, Json, Router};
use portcullis::attest::{JwksKeys, VerifiedSignature, VerifyDpopLayer, VerifySignatureLayer};
use portcullis::audit::{Auditor, JsonLinesFile};
use portcullis::retry::rate_limit::{ExtensionKey, PeerIp, Quota, RateLimitLayer};
use portcullis::server::RotatingCert;
use portcullis::token::require::{Jwks, JwtValidator, ScopeTable};
use portcullis::token::{RequireBearerLayer, VerifiedClaims};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

type BoxError = Box<dyn Error + Send + Sync>;

/// Everything the server reads at start: file paths and the token and origin settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Server certificate chain, PEM, leaf first.
    pub(crate) tls_chain: PathBuf,
    /// Server private key, PEM.
    pub(crate) tls_key: PathBuf,
    /// JWKS of the clients' RFC 9421 public keys.
    pub(crate) client_keys: PathBuf,
    /// JWKS of the token issuer.
    pub(crate) issuer_jwks: PathBuf,
    /// Expected token issuer.
    pub(crate) issuer: String,
    /// Expected token audience.
    pub(crate) audience: String,
    /// This service's public origin (DPoP `htu` is checked against it, never the Host header).
    pub(crate) origin: String,
    /// Audit log (JSON lines).
    pub(crate) audit_log: PathBuf,
}

impl Config {
    /// Reads the configuration from the `PORTCULLIS_*` environment variables.
    pub(crate) fn from_env() -> Result<(Self, SocketAddr), BoxError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| format!("set {name} (see the table in axum_adopt.rs)"))
        };
        let listen = std::env::var("PORTCULLIS_LISTEN")
            .unwrap_or_else(|_| "127.0.0.1:8443".to_owned())
            .parse()
            .map_err(|e| format!("PORTCULLIS_LISTEN: {e}"))?;
        let config = Self {
            tls_chain: var("PORTCULLIS_TLS_CHAIN")?.into(),
            tls_key: var("PORTCULLIS_TLS_KEY")?.into(),
            client_keys: var("PORTCULLIS_CLIENT_KEYS")?.into(),
            issuer_jwks: var("PORTCULLIS_ISSUER_JWKS")?.into(),
            issuer: var("PORTCULLIS_ISSUER")?,
            audience: var("PORTCULLIS_AUDIENCE")?,
            origin: var("PORTCULLIS_ORIGIN")?,
            audit_log: var("PORTCULLIS_AUDIT_LOG")?.into(),
        };
        Ok((config, listen))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let started = async {
        let (config, listen) = Config::from_env()?;
        let listener = TcpListener::bind(listen).await?;
        println!("axum_adopt: serving https on {listen}");
        run(config, listener).await
    };
    match started.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("axum_adopt: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `GET /orders`: who called, proven by the token and the request signature.
async fn list_orders(
    Extension(claims): Extension<VerifiedClaims>,
    Extension(signature): Extension<VerifiedSignature>,
) -> (Extension<VerifiedClaims>, Json<Value>) {
    let body = json!({
        "user": claims.subject(),
        "signed_by": signature.keyid(),
        "orders": [],
    });
    // The audit layer reads the identity from the response extensions.
    (Extension(claims), Json(body))
}

fn read(what: &str, path: &Path) -> Result<String, BoxError> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()).into())
}

/// Loads every file, then serves on `listener` until the task is dropped. Returns an error,
/// before serving anything, when a file is missing or wrong.
pub(crate) async fn run(config: Config, listener: TcpListener) -> Result<(), BoxError> {
    // --- Everything from files; any error stops the start. ---
    let cert = RotatingCert::from_pem_files(&config.tls_chain, &config.tls_key)?;
    let client_keys = JwksKeys::from_json(&read("client keys", &config.client_keys)?)
        .map_err(|e| format!("client keys {}: {e}", config.client_keys.display()))?;
    let validator = JwtValidator::builder()
        .issuer(&config.issuer)
        .audience(&config.audience)
        .jwks(Jwks::from_file(&config.issuer_jwks)?)
        .build()?;
    let audit_log = JsonLinesFile::builder(&config.audit_log).open()?;

    // --- Audit: one JSON line per request, with the security events of every layer. ---
    let auditor = Auditor::builder()
        .sink(audit_log)
        .tracing_records(false)
        .build()?;
    let logs = tracing_subscriber::fmt::layer().with_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    );
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(auditor.collector())
            .with(logs),
    )
    .map_err(|_| "a global tracing subscriber is already set: add auditor.collector() to it")?;

    // --- The server stack around the axum router. ---
    let per_ip = Quota::per_minute(NonZeroU32::new(120).ok_or("zero quota")?);
    let per_identity = Quota::per_minute(NonZeroU32::new(60).ok_or("zero quota")?);
    let app = Router::new().route("/orders", get(list_orders));
    let stack = portcullis::server::builder()
        .audit(auditor.server_layer().identity(|ext: &http::Extensions| {
            ext.get::<VerifiedClaims>()
                .and_then(|c| c.subject())
                .map(str::to_owned)
        }))
        .pre_auth_rate_limit(RateLimitLayer::keyed(per_ip, PeerIp::new()))
        .verify_signatures(VerifySignatureLayer::builder(client_keys).build()?)
        .verify_dpop(
            VerifyDpopLayer::builder()
                .origin(config.origin.as_str())
                .proof_optional() // plain bearer tokens too; bound tokens still need a proof
                .build()?,
        )
        .require_bearer(
            RequireBearerLayer::new(validator)
                .routes(ScopeTable::new().route("/orders", ["orders:read"])),
        )
        .identity_rate_limit(RateLimitLayer::keyed(
            per_identity,
            ExtensionKey::new(|c: &VerifiedClaims| c.subject().map(str::to_owned)),
        ))
        .service(app);

    // New certificate files are picked up with `cert.rotate_from_pem_files(..)` (on SIGHUP,
    // say) without a restart.
    portcullis::server::serve_tls(listener, std::sync::Arc::new(cert.server_config()), stack).await;
    Ok(())
}
