//! `ServiceBuilder` shortcuts for the layers of this crate.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::{BearerLayer, JwtValidator, RequireBearerLayer, TokenSource};

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to a [`ServiceBuilder`].
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Injects bearer tokens from `source` ([`BearerLayer`] with default settings).
    fn bearer_tokens<R, S>(
        self,
        source: TokenSource<R, S>,
    ) -> ServiceBuilder<Stack<BearerLayer<R, S>, L>>;
    /// Requires a valid bearer JWT ([`RequireBearerLayer`] with no scope).
    fn require_bearer(
        self,
        validator: JwtValidator,
    ) -> ServiceBuilder<Stack<RequireBearerLayer, L>>;
    /// Requires a valid bearer JWT with the settings of `layer` (scopes, routes, realm).
    fn require_bearer_with(
        self,
        layer: RequireBearerLayer,
    ) -> ServiceBuilder<Stack<RequireBearerLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn bearer_tokens<R, S>(
        self,
        source: TokenSource<R, S>,
    ) -> ServiceBuilder<Stack<BearerLayer<R, S>, L>> {
        self.layer(BearerLayer::new(source))
    }

    fn require_bearer(
        self,
        validator: JwtValidator,
    ) -> ServiceBuilder<Stack<RequireBearerLayer, L>> {
        self.layer(RequireBearerLayer::new(validator))
    }

    fn require_bearer_with(
        self,
        layer: RequireBearerLayer,
    ) -> ServiceBuilder<Stack<RequireBearerLayer, L>> {
        self.layer(layer)
    }
}
