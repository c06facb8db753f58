//! Unpublished test helpers: CA hierarchies minted at test time and TLS servers on loopback.
