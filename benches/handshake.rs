//! TLS 1.3 handshake cost of the pin layer (issue 2), in memory (no sockets): ECDSA P-256,
//! leaf + intermediate sent, root as the trust anchor, aws-lc-rs with X25519MLKEM768 in
//! every arm.
//!
//! * `handshake_full`: `unpinned` (rustls' `WebPkiServerVerifier`) vs `pinned` (pin on the
//!   root: the pin check hashes every key of the verified path) vs `pinned_leaf` (pin on the
//!   leaf);
//! * `handshake_resumed`: TLS 1.3 resumption with a ticket from the previous handshake
//!   (certificate verification does not run), `unpinned` vs `pinned`.
//!
//! Run: `cargo bench -p portcullis-benches --bench handshake -- --warm-up-time 1 --measurement-time 3`.
//! Instruction counts (wall-time free): `benches/instructions.sh`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::HandshakeKind;

#[path = "handshake_setup.rs"]
mod setup;

use setup::{Arm, Setup, handshake};

fn full(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("handshake_full");
    group.throughput(Throughput::Elements(1));
    for arm in Arm::ALL {
        let client = setup.client(arm, false);
        let first = handshake(&client, &setup.server);
        assert_eq!(
            first.kind,
            HandshakeKind::Full,
            "{arm:?}: not a full handshake"
        );
        group.bench_function(arm.name(), |b| {
            b.iter(|| {
                let out = handshake(&client, &setup.server);
                assert_eq!(out.kind, HandshakeKind::Full);
                black_box(out)
            })
        });
    }
    group.finish();
}

fn resumed(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("handshake_resumed");
    group.throughput(Throughput::Elements(1));
    for arm in [Arm::Unpinned, Arm::Pinned] {
        // One config per arm for the whole run: rustls resumes only under the same config.
        let client = setup.client(arm, true);
        assert_eq!(handshake(&client, &setup.server).kind, HandshakeKind::Full);
        let again = handshake(&client, &setup.server);
        assert_eq!(
            again.kind,
            HandshakeKind::Resumed,
            "{arm:?}: did not resume"
        );
        group.bench_function(arm.name(), |b| {
            b.iter(|| {
                let out = handshake(&client, &setup.server);
                assert_eq!(out.kind, HandshakeKind::Resumed);
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full, resumed);
criterion_main!(benches);
