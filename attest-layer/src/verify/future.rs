use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::VerifyConfig;
use super::reason::Reason;
use super::service::{Checked, accepted, reject};
use crate::body::{Collect, CollectError};
use crate::error::BoxError;
use crate::replay::{ReplayError, ReplayFuture};

pin_project! {
    /// Response future of [`VerifySignature`](super::VerifySignature).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<S, B, S::Future, S::Response>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, R> {
        Reading {
            #[pin]
            collect: Collect<B>,
            pending: Option<(Parts, Checked, S, Arc<VerifyConfig>)>,
        },
        Replaying {
            fut: ReplayFuture,
            pending: Option<(Request<Full<Bytes>>, S, Arc<VerifyConfig>)>,
        },
        Calling {
            #[pin]
            fut: F,
        },
        Rejected {
            response: Option<R>,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(crate) fn rejected(response: S::Response) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn reading(
        collect: Collect<B>,
        parts: Parts,
        checked: Checked,
        inner: S,
        config: Arc<VerifyConfig>,
    ) -> Self {
        Self {
            state: State::Reading {
                collect,
                pending: Some((parts, checked, inner, config)),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    B: Body,
    B::Error: Into<BoxError>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading { collect, pending } => {
                    let result = ready!(collect.poll_collect(cx));
                    let Some((parts, checked, inner, config)) = pending.take() else {
                        return Poll::Pending;
                    };
                    let keyid = checked.proof.keyid.clone();
                    let outcome = match result {
                        Err(CollectError::TooLarge) => Err(Reason::BodyTooLarge),
                        Err(CollectError::Body(_)) => Err(Reason::BodyError),
                        Ok((body, digests)) => match &checked.digest {
                            Some(expected) if !expected.matches(&digests) => {
                                Err(Reason::DigestMismatch)
                            }
                            None if !body.is_empty() && config.require_digest_for_body => {
                                Err(Reason::MissingContentDigest)
                            }
                            _ => Ok(body),
                        },
                    };
                    match outcome {
                        Err(reason) => {
                            let response = reject(&config, &parts, reason, Some(&keyid));
                            this.state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                        Ok(body) => {
                            let fut = config.replay.insert_once(
                                &checked.replay_partition,
                                checked.replay_key,
                                checked.replay_ttl,
                            );
                            let mut parts = parts;
                            parts.extensions.insert(checked.proof);
                            let req = Request::from_parts(parts, Full::new(body));
                            this.state.set(State::Replaying {
                                fut,
                                pending: Some((req, inner, config)),
                            });
                        }
                    }
                }
                StateProj::Replaying { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let Some((req, mut inner, config)) = pending.take() else {
                        return Poll::Pending;
                    };
                    let (parts, body) = req.into_parts();
                    let keyid = parts
                        .extensions
                        .get::<super::VerifiedSignature>()
                        .map(|p| p.keyid.clone());
                    let reason = match result {
                        Ok(true) => None,
                        Ok(false) => Some(Reason::Replayed),
                        Err(ReplayError::PartitionFull { .. }) => Some(Reason::ReplayQuotaExceeded),
                        Err(e) => {
                            tracing::error!(target: "portcullis::attest", { "event.kind" = "alert", "event.reason" = "replay_cache_unavailable", "error.message" = %e }, "replay cache failed; refusing");
                            Some(Reason::ReplayCacheUnavailable)
                        }
                    };
                    match reason {
                        Some(reason) => {
                            let response = reject(&config, &parts, reason, keyid.as_deref());
                            this.state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                        None => {
                            if let Some(proof) = parts.extensions.get::<super::VerifiedSignature>()
                            {
                                accepted(&parts, proof);
                            }
                            let fut = inner.call(Request::from_parts(parts, body));
                            this.state.set(State::Calling { fut });
                        }
                    }
                }
                StateProj::Calling { fut } => return fut.poll(cx),
                StateProj::Rejected { response } => {
                    return match response.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}
