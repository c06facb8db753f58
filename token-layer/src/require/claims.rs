use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Deserialize;

/// The claims of a verified access token, put in request extensions by
/// [`RequireBearer`](super::RequireBearer). Only this crate can make one, so its presence
/// proves the request passed validation.
#[derive(Clone)]
pub struct VerifiedClaims {
    pub(crate) subject: Option<String>,
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) expires_at: u64,
    pub(crate) issued_at: Option<u64>,
    pub(crate) not_before: Option<u64>,
    pub(crate) jti: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) roles: Vec<String>,
    pub(crate) cnf_jkt: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

impl VerifiedClaims {
    /// `sub`: the user or client the token was issued to.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// `iss`: the (checked) issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    /// `aud`: the audiences (one of them matched).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
    /// `exp` in Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// `iat` in Unix seconds.
    pub fn issued_at(&self) -> Option<u64> {
        self.issued_at
    }
    /// `nbf` in Unix seconds.
    pub fn not_before(&self) -> Option<u64> {
        self.not_before
    }
    /// `jti`: the token id (checked against the deny list when one is configured).
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
    /// `client_id` (RFC 9068).
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
    /// Scopes from `scope` (space-separated) or `scp` (string or array).
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
    /// Roles from `roles` (RFC 9068 §7.2.1.1; string or array).
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
    /// `cnf.jkt`: the SHA-256 JWK thumbprint the token is bound to (RFC 9449 DPoP). When set,
    /// the request must carry a DPoP proof signed by that key: hand it to the DPoP check.
    pub fn confirmation_jkt(&self) -> Option<&str> {
        self.cnf_jkt.as_deref()
    }
    /// The `kid` of the key that verified the token.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    /// Any other claim, by name.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.extra.get(name)
    }
    /// Seconds left before `exp`, from `now` (Unix seconds).
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

impl fmt::Debug for VerifiedClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims are not the token: no signature, so nothing here replays.
        f.debug_struct("VerifiedClaims")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .field("cnf_jkt", &self.cnf_jkt)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Cnf {
    #[serde(default)]
    jkt: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<OneOrMany>,
    #[serde(default)]
    roles: Option<OneOrMany>,
    #[serde(default)]
    cnf: Option<Cnf>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

fn secs(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

impl RawClaims {
    pub(crate) fn exp(&self) -> Option<u64> {
        self.exp.map(secs)
    }
    pub(crate) fn iat(&self) -> Option<u64> {
        self.iat.map(secs)
    }
    pub(crate) fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }

    pub(crate) fn into_verified(self, key_id: Option<String>) -> VerifiedClaims {
        let mut scopes: Vec<String> = self
            .scope
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(scp) = self.scp {
            for s in scp.into_vec() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        VerifiedClaims {
            subject: self.sub,
            issuer: self.iss.unwrap_or_default(),
            audiences: self.aud.map(OneOrMany::into_vec).unwrap_or_default(),
            expires_at: self.exp.map(secs).unwrap_or(0),
            issued_at: self.iat.map(secs),
            not_before: self.nbf.map(secs),
            jti: self.jti,
            client_id: self.client_id,
            scopes,
            roles: self.roles.map(OneOrMany::into_vec).unwrap_or_default(),
            cnf_jkt: self.cnf.and_then(|c| c.jkt),
            key_id,
            extra: self.extra,
        }
    }
}
