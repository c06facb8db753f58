//! The adversarial suite: every attack the project defends against, one file per threat,
//! each tried the way an attacker would (real TLS peers on loopback, real Redis, independent
//! token and proof encoders). `SECURITY.md` maps each threat to the layer and setting that
//! blocks it and to the test here that shows it.

mod attestation_jti;
mod audit_log_injection;
mod chain_injection;
mod dpop_binding;
mod ecdsa_malleability;
mod forwarded_header_spoofing;
mod jwt_forgery;
mod keyring_session;
mod pin_idna;
mod pin_session_tickets;
mod redis_outage;
mod replay_capacity;
mod request_tampering;
mod retry_safety;
mod rfc9421_interop;
mod rogue_ca;
mod secret_leaks;
mod serve_tls_bounds;
mod support;
mod token_confusion;
mod token_shared_store;
mod token_store_tampering;
mod weak_tls;
