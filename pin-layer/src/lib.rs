//! Certificate and public-key pinning on the verified chain, with TLS hardening (being built: see issue 2).
