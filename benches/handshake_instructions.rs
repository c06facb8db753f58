//! Instruction-count harness for the handshake bench (issue 2): runs `N` in-memory TLS 1.3
//! handshakes of one arm inside `measured_handshakes`, which `benches/instructions.sh` counts
//! with `valgrind --tool=callgrind --toggle-collect=*measured_handshakes*` (setup, key
//! minting and the warm-up handshake are not counted).
//!
//! Usage: `handshake_instructions ARM MODE N` with ARM `unpinned|pinned|pinned_leaf`, MODE
//! `full|resumed`. Without arguments (as `cargo test --all-targets` runs it) it checks the
//! setup once: every arm completes, full handshakes are full, resumed ones resume, all arms
//! negotiate the same key exchange group, and a pinned config whose pins are off the path
//! is refused.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use rustls::{ClientConfig, HandshakeKind, ServerConfig};

#[path = "handshake_setup.rs"]
mod setup;

use setup::{Arm, Setup, handshake, try_handshake};

/// The counted region: `n` handshakes, each checked to be of the expected kind.
#[inline(never)]
fn measured_handshakes(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
    n: u32,
    kind: HandshakeKind,
) {
    for _ in 0..n {
        let out = handshake(black_box(client), server);
        assert_eq!(out.kind, kind, "unexpected handshake kind");
        black_box(out);
    }
}

fn run(arm: Arm, resumed: bool, n: u32) {
    let setup = Setup::new();
    let client = setup.client(arm, resumed);
    // Warm-up outside the counted region: lazy statics, and the first ticket when resuming.
    handshake(&client, &setup.server);
    let kind = if resumed {
        HandshakeKind::Resumed
    } else {
        HandshakeKind::Full
    };
    measured_handshakes(&client, &setup.server, n, kind);
}

fn self_check() {
    let setup = Setup::new();
    let mut groups = Vec::new();
    for arm in Arm::ALL {
        let full = setup.client(arm, false);
        let first = handshake(&full, &setup.server);
        let second = handshake(&full, &setup.server);
        assert_eq!(first.kind, HandshakeKind::Full, "{arm:?}");
        assert_eq!(
            second.kind,
            HandshakeKind::Full,
            "{arm:?}: full arm resumed"
        );
        groups.push(first.group);

        let resuming = setup.client(arm, true);
        assert_eq!(
            handshake(&resuming, &setup.server).kind,
            HandshakeKind::Full
        );
        for _ in 0..3 {
            assert_eq!(
                handshake(&resuming, &setup.server).kind,
                HandshakeKind::Resumed,
                "{arm:?}: no resumption"
            );
        }
    }
    assert!(groups[0].is_some(), "no key exchange group negotiated");
    assert!(
        groups.iter().all(|g| *g == groups[0]),
        "arms negotiated different groups: {groups:?}"
    );
    let err = try_handshake(&setup.mismatched_config(), &setup.server)
        .expect_err("a config pinned off the path must be refused");
    assert!(
        err.to_string().contains("pinning failure"),
        "unexpected error: {err}"
    );
    println!(
        "handshake_instructions: setup ok (group {:?}; pin mismatch refused)",
        groups[0]
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [] => {
            self_check();
            ExitCode::SUCCESS
        }
        [arm, mode, n] => {
            let (Some(arm), Some(resumed), Ok(n)) = (
                Arm::parse(arm),
                match mode.as_str() {
                    "full" => Some(false),
                    "resumed" => Some(true),
                    _ => None,
                },
                n.parse::<u32>(),
            ) else {
                return usage();
            };
            run(arm, resumed, n);
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: handshake_instructions unpinned|pinned|pinned_leaf full|resumed N");
    ExitCode::from(2)
}
