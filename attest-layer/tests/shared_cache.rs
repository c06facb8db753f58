//! One replay cache serves signature nonces, DPoP `jti`s and attestation tokens at once.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis_attest::{
    DpopLayer, MemoryReplayCache, SignLayer, SigningKey, StaticKeys, VerifyDpopLayer,
    VerifySignatureLayer,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[tokio::test]
async fn signature_and_dpop_layers_share_one_cache_without_collisions() {
    let cache = MemoryReplayCache::new(100);
    let device = SigningKey::generate_ecdsa_p256("device").unwrap();
    let server = ServiceBuilder::new()
        .layer(
            VerifySignatureLayer::builder(StaticKeys::new().with("device", device.verifying_key()))
                .replay_cache(cache.clone())
                .build()
                .unwrap(),
        )
        .layer(
            VerifyDpopLayer::builder()
                .origin("https://api.example.com")
                .replay_cache(cache.clone())
                .build()
                .unwrap(),
        )
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
        }));

    // The client proves possession (DPoP) and signs the whole request, proof included.
    let client = ServiceBuilder::new()
        .layer(DpopLayer::new(device.clone()).unwrap())
        .layer(SignLayer::new(device))
        .service(server);
    for _ in 0..3 {
        let req = Request::post("https://api.example.com/v1/pay")
            .body(Full::<Bytes>::from("{}"))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.status(),
            200,
            "{:?}",
            res.headers().get("portcullis-reason")
        );
    }
    assert_eq!(
        cache.len(),
        6,
        "three nonces and three jtis, kept apart by their prefixes"
    );
}
