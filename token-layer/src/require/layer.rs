use std::sync::Arc;

use tower_layer::Layer;

use super::{JwtValidator, RequireBearer, ScopeTable};

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) validator: JwtValidator,
    pub(crate) scopes: Vec<String>,
    pub(crate) roles: Vec<String>,
    pub(crate) table: ScopeTable,
    pub(crate) realm: String,
    pub(crate) require_dpop: bool,
}

/// Requires a valid bearer JWT on every request; see the [module docs](super).
#[derive(Clone)]
pub struct RequireBearerLayer {
    pub(crate) config: Arc<Config>,
}

impl std::fmt::Debug for RequireBearerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearerLayer")
            .field("validator", &self.config.validator)
            .field("scopes", &self.config.scopes)
            .field("roles", &self.config.roles)
            .field("table", &self.config.table)
            .field("realm", &self.config.realm)
            .field("require_dpop", &self.config.require_dpop)
            .finish()
    }
}

impl RequireBearerLayer {
    /// Validates with `validator`; no scope required beyond a valid token.
    pub fn new(validator: JwtValidator) -> Self {
        Self {
            config: Arc::new(Config {
                validator,
                scopes: Vec::new(),
                roles: Vec::new(),
                table: ScopeTable::new(),
                realm: "api".into(),
                require_dpop: false,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Every request needs all of `scopes`.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.config_mut().scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Every request needs all of `roles` (the `roles` claim).
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.config_mut().roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Per-route requirements, checked in addition to [`RequireBearerLayer::scopes`].
    pub fn routes(mut self, table: ScopeTable) -> Self {
        self.config_mut().table = table;
        self
    }

    /// Accepts only DPoP-bound tokens (`Authorization: DPoP` with a `cnf.jkt` token and a
    /// verified proof); challenges name the `DPoP` scheme. Without it, unbound tokens are also
    /// accepted as `Bearer`, while a bound token is always refused as `Bearer`.
    pub fn require_dpop(mut self) -> Self {
        self.config_mut().require_dpop = true;
        self
    }

    /// The `realm` in challenges (default `api`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.config_mut().realm = realm.into();
        self
    }
}

impl<S> Layer<S> for RequireBearerLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireBearer {
            inner,
            config: self.config.clone(),
        }
    }
}
