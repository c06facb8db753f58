//! Helpers shared by the integration tests: a transport that captures signed requests and a
//! verifying server whose handler echoes the verified key id.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several test crates; each uses a subset"
)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis_attest::VerifiedSignature;
use tower::{BoxError, Service, ServiceExt, service_fn};

pub type Captured = Arc<Mutex<Vec<Request<Full<Bytes>>>>>;

/// A client transport that records every request it is given and answers 200.
pub fn capture() -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone,
    Captured,
) {
    let seen: Captured = Arc::default();
    let s = seen.clone();
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(req);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    (svc, seen)
}

/// The server's application: answers `200` with `keyid:body` when a proof is present.
pub fn app()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let proof = req.extensions().get::<VerifiedSignature>().cloned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = match proof {
            Some(p) => format!("{}:{}", p.keyid(), String::from_utf8_lossy(&body)),
            None => "no proof".to_owned(),
        };
        Ok::<_, Infallible>(Response::new(Full::from(text)))
    })
}

/// Signs `req` with the `signer` layer and returns the request as it goes on the wire.
pub async fn sign<L>(
    signer: &L,
    req: Request<Full<Bytes>>,
) -> Result<Request<Full<Bytes>>, BoxError>
where
    L: tower::Layer<
            tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>,
        >,
    L::Service: Service<Request<Full<Bytes>>, Error = BoxError>,
{
    let (transport, seen) = capture();
    let svc = signer.layer(tower::util::BoxCloneService::new(transport));
    svc.oneshot(req).await?;
    let r = seen.lock().unwrap().pop().expect("one request sent");
    Ok(r)
}

/// Copies a request (the body is a `Full` so it can be replayed).
pub async fn duplicate(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let body = req.body().clone().collect().await.unwrap().to_bytes();
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone());
    for (k, v) in req.headers() {
        b = b.header(k, v);
    }
    b.body(Full::new(body)).unwrap()
}

/// The status, `portcullis-reason` header and body of a response.
pub async fn outcome(res: Response<Full<Bytes>>) -> (u16, String, String) {
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}
