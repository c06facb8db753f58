//! `ServiceBuilder` shortcuts for this crate's layers.

use tower_layer::Stack;

use crate::layer::RequirePinnedLayer;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds `.require_pinned()` and `.require_pin_match()` to `tower::ServiceBuilder`.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Fails closed on responses that did not come over a [`PinnedConnector`](crate::PinnedConnector).
    fn require_pinned(self) -> tower::ServiceBuilder<Stack<RequirePinnedLayer, L>>;

    /// Also requires that a pin matched (the host is pinned).
    fn require_pin_match(self) -> tower::ServiceBuilder<Stack<RequirePinnedLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn require_pinned(self) -> tower::ServiceBuilder<Stack<RequirePinnedLayer, L>> {
        self.layer(RequirePinnedLayer::new())
    }

    fn require_pin_match(self) -> tower::ServiceBuilder<Stack<RequirePinnedLayer, L>> {
        self.layer(RequirePinnedLayer::new().require_match())
    }
}
