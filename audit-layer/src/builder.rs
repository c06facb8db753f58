//! `ServiceBuilder` shortcuts.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::audit::AuditLayer;
use crate::auditor::Auditor;
use crate::enforce::EnforceLayer;
use crate::extract::IdentityExtractor;
use crate::hook::PenaltyBox;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds the audit layers to a [`ServiceBuilder`].
///
/// ```
/// use std::time::Duration;
/// use portcullis_audit::{Auditor, PenaltyBox, ServiceBuilderExt};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let penalties = PenaltyBox::block_for(Duration::from_secs(60));
/// let auditor = Auditor::builder().on_anomaly(penalties.clone()).build()?;
/// let svc = ServiceBuilder::new()
///     .audit_server(&auditor)
///     .enforce(penalties, ())
///     .service(service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// let res = svc.oneshot(http::Request::new(String::new())).await?;
/// assert_eq!(res.status(), http::StatusCode::OK);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds the server-side [`AuditLayer`] of `auditor`.
    fn audit_server(self, auditor: &Auditor) -> ServiceBuilder<Stack<AuditLayer, L>>;

    /// Adds the client-side [`AuditLayer`] of `auditor`.
    fn audit_client(self, auditor: &Auditor) -> ServiceBuilder<Stack<AuditLayer, L>>;

    /// Adds an [`EnforceLayer`] for `penalties`, reading identities with `identity` (pass
    /// `()` to enforce on client addresses only).
    fn enforce(
        self,
        penalties: PenaltyBox,
        identity: impl IdentityExtractor,
    ) -> ServiceBuilder<Stack<EnforceLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn audit_server(self, auditor: &Auditor) -> ServiceBuilder<Stack<AuditLayer, L>> {
        self.layer(auditor.server_layer())
    }

    fn audit_client(self, auditor: &Auditor) -> ServiceBuilder<Stack<AuditLayer, L>> {
        self.layer(auditor.client_layer())
    }

    fn enforce(
        self,
        penalties: PenaltyBox,
        identity: impl IdentityExtractor,
    ) -> ServiceBuilder<Stack<EnforceLayer, L>> {
        self.layer(EnforceLayer::new(penalties).identity(identity))
    }
}
