//! The audit and enforce layers in a real hyper server and a real hyper client, over
//! loopback TCP: peer addresses come from the accepted connection, records from both sides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use portcullis_audit::{
    AnomalyKind, Auditor, DetectorConfig, EnforceLayer, MemorySink, PenaltyBox, Threshold,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone)]
struct VerifiedUser(String);

fn user_of(ext: &http::Extensions) -> Option<String> {
    ext.get::<VerifiedUser>().map(|u| u.0.clone())
}

#[tokio::test]
async fn hyper_server_and_client_over_loopback_record_and_enforce() {
    let sink = MemorySink::new(1000);
    let penalties =
        PenaltyBox::block_for(Duration::from_secs(600)).on_kinds(&[AnomalyKind::UnauthorizedBurst]);
    let auditor = Auditor::builder()
        .detector(DetectorConfig::new().threshold(
            AnomalyKind::UnauthorizedBurst,
            Threshold::new(3, Duration::from_secs(600)),
        ))
        .on_anomaly(penalties.clone())
        .sink(sink.clone())
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(auditor.collector());
    let _guard = testkit::subscriber::set_default(subscriber);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));

    // Server: audit outermost, a stand-in authentication step that puts the verified
    // identity into the extensions (and emits its security event), enforcement, handler.
    let server_auditor = auditor.clone();
    let server_penalties = penalties.clone();
    let server_reached = reached.clone();
    let server = tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let reached = server_reached.clone();
            let stack = ServiceBuilder::new()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert::<SocketAddr>(peer);
                    req
                })
                .layer(server_auditor.server_layer())
                .map_request(|mut req: Request<hyper::body::Incoming>| {
                    if let Some(user) = req
                        .headers()
                        .get("x-test-user")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                    {
                        tracing::info!(
                            target: "portcullis::token",
                            { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = user.as_str() },
                            "bearer token accepted"
                        );
                        req.extensions_mut().insert(VerifiedUser(user));
                    }
                    req
                })
                // Identity only: client and server share one auditor and one loopback
                // address here, so the peer "127.0.0.1" collects both sides' 401s.
                .layer(
                    EnforceLayer::new(server_penalties.clone())
                        .identity(user_of)
                        .peer(()),
                )
                .service(service_fn(move |req: Request<hyper::body::Incoming>| {
                    let reached = reached.clone();
                    async move {
                        reached.fetch_add(1, Ordering::SeqCst);
                        let mut res = Response::new(Full::new(Bytes::from_static(b"hi")));
                        if user_of(req.extensions()).as_deref() == Some("mallory") {
                            *res.status_mut() = StatusCode::UNAUTHORIZED;
                        }
                        Ok::<_, Infallible>(res)
                    }
                }));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(stack))
                    .await;
            });
        }
    });

    let client = ServiceBuilder::new()
        .layer(auditor.client_layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let send = |user: &str| {
        let req = Request::get(format!(
            "http://127.0.0.1:{}/account?session=s3cr3t",
            addr.port()
        ))
        .header("x-test-user", user)
        .body(Full::new(Bytes::new()))
        .unwrap();
        client.clone().oneshot(req)
    };

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = send("mallory").await.unwrap();
        statuses.push(res.status().as_u16());
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(statuses, [401, 401, 401, 403]);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        3,
        "the 4th never reached the handler"
    );
    let ok = send("alice").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(reached.load(Ordering::SeqCst), 4);

    let records = sink.with_action("http.request");
    let server_side: Vec<_> = records
        .iter()
        .filter(|r| r["portcullis.side"] == "server")
        .collect();
    let client_side: Vec<_> = records
        .iter()
        .filter(|r| r["portcullis.side"] == "client")
        .collect();
    assert_eq!(server_side.len(), 5);
    assert_eq!(client_side.len(), 5);
    for r in &server_side {
        assert_eq!(r["client.address"], "127.0.0.1");
        assert_eq!(r["url.path"], "/account");
        assert_eq!(
            r["portcullis.events"][0]["event.action"], "token.validate",
            "the server's events are in the server's record: {r}"
        );
    }
    assert_eq!(server_side[3]["http.response.status_code"], 403);
    assert_eq!(server_side[3]["user.id"], "mallory");
    assert_eq!(
        server_side[3]["portcullis.events"][1]["event.action"],
        "policy.enforce"
    );
    for r in &client_side {
        assert_eq!(r["server.address"], "127.0.0.1");
        assert!(
            r["portcullis.events"].as_array().unwrap().is_empty(),
            "no server event leaks into the client's record: {r}"
        );
    }
    let anomalies = sink.with_action("anomaly.detected");
    assert!(
        anomalies
            .iter()
            .any(|a| a["rule.name"] == "unauthorized_burst" && a["user.id"] == "mallory"),
        "{anomalies:?}"
    );
    let text = serde_json::to_string(&sink.entries()).unwrap();
    assert!(!text.contains("s3cr3t"));
    server.abort();
}
