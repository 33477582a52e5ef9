"""Encryption at rest: AES-256-GCM (authenticated) from the ``cryptography`` package.

A sealed file is ``MAGIC | 12-byte random nonce | ciphertext+tag``. The file's own name is bound in
as associated data, so a file that was edited, truncated or swapped for another's fails to open
rather than decrypting to something else. The key comes from the environment, never from a flag
(flags show up in ``ps`` and shell history), and no message ever prints it.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from skulens.errors import SkulensError

KEY_ENV = "SKULENS_STORAGE_KEY"
MAGIC = b"SKLENS-AESGCM-1\n"
NONCE_BYTES = 12
KEY_BYTES = 32
ENCRYPTED_SUFFIX = ".enc"


def new_key() -> str:
    """A fresh random key, URL-safe base64 (what ``SKULENS_STORAGE_KEY`` holds)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def parse_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SkulensError(
            f"{KEY_ENV} is not a valid key: it must be {KEY_BYTES} random bytes in base64 "
            "(make one with `skulens privacy new-key`)"
        )
    return key


def key_from_env() -> bytes:
    text = os.environ.get(KEY_ENV, "")
    if not text.strip():
        raise SkulensError(
            f"encryption at rest needs a key in the environment variable {KEY_ENV} "
            "(make one with `skulens privacy new-key`)"
        )
    return parse_key(text)


def _aead(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise SkulensError("encryption at rest needs the cryptography package: pip install cryptography") from None
    return AESGCM(key)


def seal(data: bytes, key: bytes, name: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)  # random 96-bit nonces: safe far beyond any upload volume
    return MAGIC + nonce + _aead(key).encrypt(nonce, data, MAGIC + name.encode("utf-8"))


def open_sealed(blob: bytes, key: bytes, name: str) -> bytes:
    from cryptography.exceptions import InvalidTag

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise SkulensError(f"{name}: not a file encrypted by skulens")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return _aead(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], MAGIC + name.encode("utf-8"))
    except InvalidTag:
        raise SkulensError(
            f"{name}: cannot decrypt: wrong key, or the file was changed, truncated or renamed"
        ) from None
