//! The adversarial suite: every attack the project defends against, one file per threat,
//! each tried the way an attacker would (real TLS peers on loopback, real Redis, independent
//! token and proof encoders). `SECURITY.md` maps each threat to the layer and setting that
//! blocks it and to the test here that shows it.

mod dpop_binding;
mod ecdsa_malleability;
mod keyring_session;
mod pin_idna;
mod pin_session_tickets;
mod replay_capacity;
mod serve_tls_bounds;
mod token_shared_store;
