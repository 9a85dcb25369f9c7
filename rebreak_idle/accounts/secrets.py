"""Decrypting ``encrypted_secret`` values (CONTRACT §4).

The backend stores secrets as Node.js's ``crypto`` writes AES-256-GCM:
``ivHex:authTagHex:ciphertextHex`` with a 12-byte IV (16 accepted) and a 16-byte tag.
Every failure is a :class:`SecretError` subclass whose message names what is wrong
with the value and never contains key material, ciphertext or plaintext.
"""

from __future__ import annotations

import binascii

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "BadEncoding",
    "BadIVLength",
    "BadKey",
    "BadTagLength",
    "DecryptionFailed",
    "MalformedSecret",
    "SecretError",
    "decrypt_secret",
    "encrypt_secret",
]


class SecretError(ValueError):
    """A stored secret cannot be turned into a password or token."""


class MalformedSecret(SecretError):
    """The value is not three ``:``-separated parts."""


class BadEncoding(SecretError):
    """A part is not hexadecimal."""


class BadIVLength(SecretError):
    """The IV is neither 12 nor 16 bytes."""


class BadTagLength(SecretError):
    """The authentication tag is not 16 bytes."""


class DecryptionFailed(SecretError):
    """Authentication failed: wrong ENCRYPTION_KEY, or a tampered IV, tag or ciphertext."""


class BadKey(SecretError):
    """The key is not 32 bytes."""


_IV_LENGTHS = (12, 16)
_TAG_LENGTH = 16


def _unhex(name: str, text: str) -> bytes:
    try:
        return binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError):
        raise BadEncoding(f"stored secret: {name} is not valid hexadecimal") from None


def decrypt_secret(value: str | None, key: bytes) -> str:
    """Return the plaintext of a stored ``ivHex:authTagHex:ciphertextHex`` value."""
    if len(key) != 32:
        raise BadKey("encryption key must be 32 bytes")
    if not isinstance(value, str) or not value:
        raise MalformedSecret("stored secret is empty")
    parts = value.split(":")
    if len(parts) != 3:
        raise MalformedSecret(
            f"stored secret must have 3 ':'-separated parts (iv:tag:ciphertext), it has "
            f"{len(parts)}"
        )
    iv = _unhex("IV", parts[0])
    tag = _unhex("auth tag", parts[1])
    ciphertext = _unhex("ciphertext", parts[2])
    if len(iv) not in _IV_LENGTHS:
        raise BadIVLength(f"stored secret: IV must be 12 or 16 bytes, it is {len(iv)}")
    if len(tag) != _TAG_LENGTH:
        raise BadTagLength(f"stored secret: auth tag must be 16 bytes, it is {len(tag)}")
    try:
        plaintext = AESGCM(key).decrypt(iv, ciphertext + tag, None)
    except InvalidTag:
        raise DecryptionFailed(
            "stored secret does not decrypt: wrong ENCRYPTION_KEY or tampered value"
        ) from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionFailed("stored secret decrypts to invalid UTF-8") from None


def encrypt_secret(plaintext: str, key: bytes, iv: bytes | None = None) -> str:
    """The inverse of :func:`decrypt_secret`, as the backend writes it (demo, tests)."""
    import os

    iv = os.urandom(12) if iv is None else iv
    sealed = AESGCM(key).encrypt(iv, plaintext.encode("utf-8"), None)
    ciphertext, tag = sealed[:-_TAG_LENGTH], sealed[-_TAG_LENGTH:]
    return f"{iv.hex()}:{tag.hex()}:{ciphertext.hex()}"
