#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine: installs what the tests need
# (redis-server for the shared replay cache and rate limiter, keyutils for the kernel keyring,
# openssl for the legacy-TLS server and the pin cross-checks),
# then builds and runs all unit, integration and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v keyctl >/dev/null 2>&1 || need+=(keyutils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Independent implementations the adversarial suite tests against (Python's RFC 9421 signer).
python3 -c 'import http_message_signatures, requests, cryptography' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check \
    'http-message-signatures==3.0.0' requests cryptography

# Tests start their own redis-server on a free loopback port (testkit::redis); they find the
# binary here.
export PORTCULLIS_REDIS_SERVER="${PORTCULLIS_REDIS_SERVER:-$(command -v redis-server)}"

cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
