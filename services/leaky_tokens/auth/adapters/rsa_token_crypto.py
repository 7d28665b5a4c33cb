"""TokenCrypto with RSA-2048 keys and RS256 JWTs (cryptography + PyJWT)."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from leaky_tokens.auth.domain.model import SigningKey


class SigningKeyError(RuntimeError):
    """A stored signing key cannot be used (for example, the passphrase does not match)."""


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class RsaTokenCrypto:
    """Keys are stored as PKCS#8 PEM, encrypted when a passphrase is configured."""

    def __init__(self, passphrase: str = "", key_size: int = 2048) -> None:
        self._passphrase = passphrase.encode()
        self._key_size = key_size
        self._loaded: dict[str, rsa.RSAPrivateKey] = {}

    def _encryption(self) -> serialization.KeySerializationEncryption:
        if self._passphrase:
            return serialization.BestAvailableEncryption(self._passphrase)
        return serialization.NoEncryption()

    def _private(self, key: SigningKey) -> rsa.RSAPrivateKey:
        loaded = self._loaded.get(key.kid)
        if loaded is None:
            try:
                private = serialization.load_pem_private_key(
                    key.private_pem, password=self._passphrase or None
                )
            except (TypeError, ValueError) as exc:
                raise SigningKeyError(
                    f"signing key {key.kid} cannot be loaded: wrong or missing "
                    "LEAKY_AUTH_SIGNING_KEY_PASSPHRASE?"
                ) from exc
            if not isinstance(private, rsa.RSAPrivateKey):
                raise TypeError(f"signing key {key.kid} is not an RSA key")
            self._loaded[key.kid] = loaded = private
        return loaded

    async def generate_key(self, kid: str, now: datetime) -> SigningKey:
        private = await asyncio.to_thread(
            rsa.generate_private_key, public_exponent=65537, key_size=self._key_size
        )
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, self._encryption()
        )
        self._loaded[kid] = private
        return SigningKey(kid=kid, private_pem=pem, created_at=now, active_from=now)

    def sign(self, claims: dict[str, Any], key: SigningKey) -> str:
        return jwt.encode(claims, self._private(key), algorithm="RS256", headers={"kid": key.kid})

    def public_jwk(self, key: SigningKey) -> dict[str, str]:
        numbers = self._private(key).public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": key.kid,
            "use": "sig",
            "alg": "RS256",
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
