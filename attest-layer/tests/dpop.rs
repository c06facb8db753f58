//! DPoP (RFC 9449): the client layer's proofs against the server layer's checks.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portcullis_attest::dpop::{VerifiedDpop, access_token_hash, jwk_thumbprint};
use portcullis_attest::{DpopLayer, SigningKey, VerifyDpopLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

const NOW: u64 = 1_700_000_000;

/// Builds a proof with `key` for `req` via the client layer, returning the `DPoP` header.
async fn proof_for(layer: &DpopLayer, req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let seen: Arc<Mutex<Option<Request<Full<Bytes>>>>> = Arc::default();
    let s = seen.clone();
    let transport = service_fn(move |r: Request<Full<Bytes>>| {
        *s.lock().unwrap() = Some(r);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    layer.layer(transport).oneshot(req).await.unwrap();
    seen.lock().unwrap().take().unwrap()
}

fn app()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let jkt = req
            .extensions()
            .get::<VerifiedDpop>()
            .map(|p| p.jkt().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::from(jkt)))
    })
}

async fn check(server: &VerifyDpopLayer, req: Request<Full<Bytes>>) -> (u16, String) {
    let res = server.layer(app()).oneshot(req).await.unwrap();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status().as_u16(), reason)
}

/// The service's configured public origins: `htu` is checked against these, never `Host`.
fn server() -> VerifyDpopLayer {
    VerifyDpopLayer::builder()
        .origin("https://api.example.com")
        .origin("https://a.example")
        .clock(|| NOW)
        .build()
        .unwrap()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("authorization", "DPoP tok-123")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn client(key: &SigningKey) -> DpopLayer {
    DpopLayer::new(key.clone()).unwrap().clock(|| NOW)
}

fn claims_of(req: &Request<Full<Bytes>>) -> serde_json::Value {
    let token = req.headers()["dpop"].to_str().unwrap();
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_valid_proof_is_accepted_for_both_key_types_and_carries_ath() {
    for key in [
        SigningKey::generate_ed25519("d").unwrap(),
        SigningKey::generate_ecdsa_p256("d").unwrap(),
    ] {
        let layer = client(&key);
        let req = proof_for(&layer, get("https://api.example.com/v1/me?x=1")).await;
        let c = claims_of(&req);
        assert_eq!(c["htm"], "GET");
        assert_eq!(c["htu"], "https://api.example.com/v1/me", "no query in htu");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["ath"], access_token_hash("tok-123"));
        let res = server().layer(app()).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            body,
            layer.jkt().as_bytes(),
            "the proof's key thumbprint reaches the app"
        );
    }
}

#[tokio::test]
async fn wrong_htu_or_htm_is_refused() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let mut req = proof_for(&client(&key), get("https://api.example.com/v1/me")).await;
    *req.uri_mut() = "https://api.example.com/v1/admin".parse().unwrap();
    assert_eq!(
        check(&server(), req).await,
        (401, "dpop_htu_mismatch".into())
    );
    let mut req = proof_for(&client(&key), get("https://api.example.com/v1/me")).await;
    *req.method_mut() = http::Method::DELETE;
    assert_eq!(
        check(&server(), req).await,
        (401, "dpop_htm_mismatch".into())
    );
}

#[tokio::test]
async fn an_origin_form_request_is_matched_through_the_configured_origin() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let mut req = proof_for(&client(&key), get("https://API.example.com:443/v1/me")).await;
    *req.uri_mut() = "/v1/me".parse().unwrap();
    assert_eq!(check(&server(), req).await.0, 200);
}

#[tokio::test]
async fn a_proof_for_another_server_is_refused_whatever_the_host_header_says() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    // Captured at another resource server, replayed here with its Host (origin form) or its
    // absolute URI (absolute form): the configured origin decides, not the client.
    let mut req = proof_for(&client(&key), get("https://other.example/v1/me")).await;
    *req.uri_mut() = "/v1/me".parse().unwrap();
    req.headers_mut()
        .insert("host", "other.example".parse().unwrap());
    assert_eq!(
        check(&server(), req).await,
        (401, "dpop_htu_mismatch".into())
    );
    let req = proof_for(&client(&key), get("https://other.example/v1/me")).await;
    assert_eq!(
        check(&server(), req).await,
        (401, "dpop_htu_mismatch".into())
    );
}

#[test]
fn an_origin_is_required_and_checked_at_build_time() {
    use portcullis_attest::dpop::DpopConfigError;
    assert_eq!(
        VerifyDpopLayer::builder().build().unwrap_err(),
        DpopConfigError::NoOrigin
    );
    for bad in [
        "api.example.com",
        "ftp://api.example.com",
        "https://a.example/x?q=1",
    ] {
        let err = VerifyDpopLayer::builder().origin(bad).build().unwrap_err();
        assert!(
            matches!(err, DpopConfigError::InvalidOrigin { .. }),
            "{bad}: {err}"
        );
    }
    assert!(
        VerifyDpopLayer::builder()
            .origin("https://a.example")
            .algorithms([jsonwebtoken::Algorithm::HS256])
            .build()
            .is_err(),
        "a symmetric algorithm is never accepted"
    );
}

#[tokio::test]
async fn a_path_prefix_in_the_origin_is_part_of_htu() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let server = VerifyDpopLayer::builder()
        .origin("https://gw.example/api/")
        .clock(|| NOW)
        .build()
        .unwrap();
    let mut req = proof_for(&client(&key), get("https://gw.example/api/v1/me")).await;
    *req.uri_mut() = "/v1/me".parse().unwrap();
    assert_eq!(check(&server, req).await.0, 200);
    let mut req = proof_for(&client(&key), get("https://gw.example/v1/me")).await;
    *req.uri_mut() = "/v1/me".parse().unwrap();
    assert_eq!(check(&server, req).await.1, "dpop_htu_mismatch");
}

#[tokio::test]
async fn a_replayed_jti_is_refused() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let req = proof_for(&client(&key), get("https://api.example.com/v1/me")).await;
    let mut again = get("https://api.example.com/v1/me");
    again
        .headers_mut()
        .insert("dpop", req.headers()["dpop"].clone());
    let server = server();
    assert_eq!(check(&server, req).await.0, 200);
    assert_eq!(check(&server, again).await, (401, "dpop_replayed".into()));
}

#[tokio::test]
async fn a_stale_or_future_iat_is_refused() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let old = DpopLayer::new(key.clone()).unwrap().clock(|| NOW - 61);
    assert_eq!(
        check(&server(), proof_for(&old, get("https://a.example/x")).await)
            .await
            .1,
        "dpop_stale_iat"
    );
    let ahead = DpopLayer::new(key).unwrap().clock(|| NOW + 30);
    assert_eq!(
        check(
            &server(),
            proof_for(&ahead, get("https://a.example/x")).await
        )
        .await
        .1,
        "dpop_stale_iat"
    );
}

#[tokio::test]
async fn an_ath_mismatch_or_a_missing_ath_is_refused() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let mut req = proof_for(&client(&key), get("https://a.example/x")).await;
    req.headers_mut()
        .insert("authorization", "DPoP stolen-token".parse().unwrap());
    assert_eq!(check(&server(), req).await.1, "dpop_ath_mismatch");
    // A proof made without a token, then a token added by someone else.
    let mut req = proof_for(
        &client(&key),
        Request::get("https://a.example/x")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    req.headers_mut()
        .insert("authorization", "DPoP tok-123".parse().unwrap());
    assert_eq!(check(&server(), req).await.1, "dpop_ath_mismatch");
}

fn forge(
    header: serde_json::Value,
    claims: serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn good_claims() -> serde_json::Value {
    serde_json::json!({"jti": "j1", "htm": "GET", "htu": "https://a.example/x", "iat": NOW})
}

async fn check_token(token: &str) -> String {
    let mut req = Request::get("https://a.example/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut().insert("dpop", token.parse().unwrap());
    check(&server(), req).await.1
}

#[tokio::test]
async fn symmetric_algorithms_none_wrong_typ_and_private_jwks_are_refused() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let hs = forge(
        serde_json::json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}}),
        good_claims(),
        |m| {
            aws_lc_rs::hmac::sign(
                &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
                m,
            )
            .as_ref()
            .to_vec()
        },
    );
    assert_eq!(check_token(&hs).await, "dpop_unsupported_alg");
    let none = forge(
        serde_json::json!({"typ": "dpop+jwt", "alg": "none"}),
        good_claims(),
        |_| Vec::new(),
    );
    assert_eq!(check_token(&none).await, "dpop_unsupported_alg");

    let key = SigningKey::generate_ed25519("d").unwrap();
    let jwk = key.public_jwk().unwrap();
    let wrong_typ = forge(
        serde_json::json!({"typ": "JWT", "alg": "EdDSA", "jwk": jwk}),
        good_claims(),
        |m| key.sign(m).unwrap(),
    );
    assert_eq!(check_token(&wrong_typ).await, "dpop_wrong_typ");
    let mut private = jwk.clone();
    private["d"] = "AAAA".into();
    let leaked = forge(
        serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private}),
        good_claims(),
        |m| key.sign(m).unwrap(),
    );
    assert_eq!(check_token(&leaked).await, "dpop_bad_jwk");
    let other = SigningKey::generate_ed25519("o").unwrap();
    let forged = forge(
        serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}),
        good_claims(),
        |m| other.sign(m).unwrap(),
    );
    assert_eq!(check_token(&forged).await, "dpop_invalid_signature");
    let good = forge(
        serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}),
        good_claims(),
        |m| key.sign(m).unwrap(),
    );
    assert_eq!(check_token(&good).await, "");
    assert_eq!(check_token("garbage").await, "dpop_malformed");
    assert_eq!(
        check(
            &server(),
            Request::get("https://a.example/x")
                .body(Full::new(Bytes::new()))
                .unwrap()
        )
        .await
        .1,
        "dpop_missing"
    );
}

#[tokio::test]
async fn the_proof_reaches_inner_layers_with_its_key_and_checked_ath() {
    let holder = SigningKey::generate_ecdsa_p256("holder").unwrap();
    let layer = client(&holder);
    assert_eq!(
        jwk_thumbprint(&holder.public_jwk().unwrap()).unwrap(),
        layer.jkt()
    );
    let req = proof_for(&layer, get("https://a.example/x")).await;
    let seen: Arc<Mutex<Option<VerifiedDpop>>> = Arc::default();
    let s = seen.clone();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        *s.lock().unwrap() = req.extensions().get::<VerifiedDpop>().cloned();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let res = server().layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let proof = seen.lock().unwrap().take().expect("proof in extensions");
    assert_eq!(proof.jkt(), layer.jkt());
    assert_eq!(proof.ath(), Some(access_token_hash("tok-123").as_str()));
    assert_eq!(proof.htu(), "https://a.example/x");
}

#[tokio::test]
async fn an_optional_proof_lets_bearer_requests_through_but_not_dpop_ones() {
    let server = VerifyDpopLayer::builder()
        .origin("https://a.example")
        .proof_optional()
        .clock(|| NOW)
        .build()
        .unwrap();
    let bearer = Request::get("https://a.example/x")
        .header("authorization", "Bearer t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(check(&server, bearer).await, (200, String::new()));
    assert_eq!(
        check(&server, get("https://a.example/x")).await,
        (401, "dpop_missing".into()),
        "Authorization: DPoP without a proof"
    );
    // A proof under Bearer still has its ath checked.
    let key = SigningKey::generate_ed25519("d").unwrap();
    let mut req = proof_for(&client(&key), get("https://a.example/x")).await;
    req.headers_mut()
        .insert("authorization", "Bearer other-token".parse().unwrap());
    assert_eq!(check(&server, req).await.1, "dpop_ath_mismatch");
}

#[tokio::test]
async fn the_client_retries_once_with_the_server_nonce_and_keeps_it() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let layer = client(&key);
    let nonces: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let n = nonces.clone();
    let server = service_fn(move |req: Request<Full<Bytes>>| {
        let token = req.headers()["dpop"].to_str().unwrap().to_owned();
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let nonce = claims
            .get("nonce")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        n.lock().unwrap().push(nonce.clone());
        let res = if nonce.as_deref() == Some("n-1") {
            Response::new(Full::new(Bytes::new()))
        } else {
            Response::builder()
                .status(401)
                .header(
                    "www-authenticate",
                    "DPoP error=\"use_dpop_nonce\", error_description=\"nonce required\"",
                )
                .header("dpop-nonce", "n-1")
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        async move { Ok::<_, Infallible>(res) }
    });
    let mut svc = layer.layer(server);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get("https://a.example/x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        *nonces.lock().unwrap(),
        vec![None, Some("n-1".to_owned())],
        "one retry with the nonce"
    );
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get("https://a.example/y"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        nonces.lock().unwrap().len(),
        3,
        "the nonce is reused without another round trip"
    );
    assert_eq!(layer.nonce().as_deref(), Some("n-1"));
}

#[tokio::test]
async fn the_client_does_not_loop_when_the_server_keeps_refusing() {
    let key = SigningKey::generate_ed25519("d").unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let server = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut c = c.lock().unwrap();
        *c += 1;
        let res = Response::builder()
            .status(401)
            .header("www-authenticate", "DPoP error=\"use_dpop_nonce\"")
            .header("dpop-nonce", format!("n-{c}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move { Ok::<_, Infallible>(res) }
    });
    let res = client(&key)
        .layer(server)
        .oneshot(get("https://a.example/x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(*calls.lock().unwrap(), 2, "exactly one retry");
}

#[test]
fn hmac_keys_cannot_make_dpop_proofs() {
    let k = SigningKey::hmac_sha256("h", &secrecy::SecretSlice::from(vec![1u8; 32])).unwrap();
    assert!(DpopLayer::new(k).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_client_and_server_agree_on_rotating_server_nonces() {
    use portcullis_attest::TokioClock;
    use portcullis_attest::dpop::DpopNonces;
    use std::time::Duration;

    let clock = TokioClock::starting_at(NOW);
    let nonces = DpopNonces::new(
        &secrecy::SecretSlice::from(vec![9u8; 32]),
        Duration::from_secs(60),
    )
    .unwrap();
    let server = VerifyDpopLayer::builder()
        .origin("https://a.example")
        .clock(clock)
        .require_nonce(nonces)
        .build()
        .unwrap()
        .layer(app());
    let key = SigningKey::generate_ed25519("d").unwrap();
    let layer = DpopLayer::new(key).unwrap().clock(clock);
    let mut client = layer.layer(server.clone());

    let res = client
        .ready()
        .await
        .unwrap()
        .call(get("https://a.example/x"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "first proof refused with use_dpop_nonce, retried with it"
    );
    let first = layer.nonce().expect("nonce learnt");

    // Two windows later the nonce is stale: the server asks again, the client follows once.
    tokio::time::advance(Duration::from_secs(150)).await;
    let res = client
        .ready()
        .await
        .unwrap()
        .call(get("https://a.example/x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_ne!(layer.nonce().unwrap(), first, "rotated");

    // A proof without the nonce, sent directly, is refused with the challenge.
    let bare = DpopLayer::new(SigningKey::generate_ed25519("e").unwrap())
        .unwrap()
        .clock(clock);
    let req = proof_for(&bare, get("https://a.example/x")).await;
    let res = server.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["portcullis-reason"], "use_dpop_nonce");
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("use_dpop_nonce")
    );
    assert!(res.headers().contains_key("dpop-nonce"));
}

#[test]
fn the_jwk_thumbprint_matches_the_rfc_7638_example() {
    // RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
    let jwk = serde_json::json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    });
    assert_eq!(
        jwk_thumbprint(&jwk).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn ath_is_the_base64url_sha256_of_the_token() {
    // RFC 9449 §7.1's example: this access token and its ath.
    assert_eq!(
        access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[tokio::test]
async fn a_flood_of_throwaway_key_proofs_from_one_peer_is_refused_alone() {
    use portcullis_attest::MemoryReplayCache;
    let server = VerifyDpopLayer::builder()
        .origin("https://a.example")
        .replay_cache(MemoryReplayCache::new(64).per_partition(4))
        .clock(|| NOW)
        .build()
        .unwrap();
    let from = |peer: &str, req: &mut Request<Full<Bytes>>| {
        req.extensions_mut()
            .insert(peer.parse::<std::net::SocketAddr>().unwrap());
    };
    // Each proof is signed by a fresh key: partitioning per key would not hold them.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let key = SigningKey::generate_ed25519("throwaway").unwrap();
        let mut req = proof_for(&client(&key), get("https://a.example/x")).await;
        from("198.51.100.7:4000", &mut req);
        statuses.push(check(&server, req).await);
    }
    assert!(statuses[..4].iter().all(|s| s.0 == 200), "{statuses:?}");
    assert_eq!(statuses[7], (429, "replay_quota_exceeded".into()));
    // Another client is unaffected.
    let key = SigningKey::generate_ed25519("victim").unwrap();
    let mut req = proof_for(&client(&key), get("https://a.example/x")).await;
    from("203.0.113.5:5000", &mut req);
    assert_eq!(check(&server, req).await.0, 200);
    // IPv6 addresses of one /64 share one share.
    let mut v6 = Vec::new();
    for i in 1..=6 {
        let key = SigningKey::generate_ed25519("v6").unwrap();
        let mut req = proof_for(&client(&key), get("https://a.example/x")).await;
        from(&format!("[2001:db8:0:1::{i}]:443"), &mut req);
        v6.push(check(&server, req).await.0);
    }
    assert_eq!(v6, [200, 200, 200, 200, 429, 429]);
}
