"""Signs and sends one HTTPS request with the independent `http-message-signatures` package
(RFC 9421) using its default settings (covered components @method, @authority, @target-uri;
created now; no nonce unless --nonce), then prints what the server answered as JSON.

Used by portcullis/tests/adversarial/rfc9421_interop.rs: the other side of the test is not
Portcullis code.
"""

import argparse
import json

import requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms


class FileKey(HTTPSignatureKeyResolver):
    def __init__(self, path):
        with open(path, "rb") as f:
            self.key = load_pem_private_key(f.read(), password=None)

    def resolve_private_key(self, key_id):
        return self.key

    def resolve_public_key(self, key_id):
        return self.key.public_key()


def gen_key(path):
    """Writes a fresh Ed25519 private key (PKCS#8 PEM) to `path`; prints its public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    with open(path, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    print(key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode(), end="")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gen-key")
    p.add_argument("--url")
    p.add_argument("--ca")
    p.add_argument("--key")
    p.add_argument("--key-id")
    p.add_argument("--nonce")
    p.add_argument("--method", default="GET")
    p.add_argument("--body")
    a = p.parse_args()
    if a.gen_key:
        gen_key(a.gen_key)
        return

    req = requests.Request(a.method, a.url, data=a.body).prepare()
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=FileKey(a.key))
    kwargs = {"key_id": a.key_id}
    if a.nonce:
        kwargs["nonce"] = a.nonce
    if a.body is not None:
        kwargs["body"] = a.body.encode()
    signer.sign(req, **kwargs)
    res = requests.Session().send(req, verify=a.ca, timeout=10)
    print(json.dumps({
        "status": res.status_code,
        "reason": res.headers.get("portcullis-reason", ""),
        "www_authenticate": res.headers.get("www-authenticate", ""),
        "accept_signature": res.headers.get("accept-signature", ""),
        "signature_input": req.headers.get("signature-input", ""),
        "body": res.text,
    }))


if __name__ == "__main__":
    main()
