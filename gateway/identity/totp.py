"""TOTP secrets: generation from ``secrets`` (not pyotp's helper) and otpauth URIs."""

from __future__ import annotations

import base64
import secrets
import urllib.parse

TOTP_SECRET_BYTES = 20  # 160 bits, RFC 4226's recommended length; 32 base32 characters


def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(TOTP_SECRET_BYTES)).decode("ascii")


def provisioning_uri(secret: str, username: str, issuer: str = "Conduit") -> str:
    label = urllib.parse.quote(f"{issuer}:{username}")
    query = urllib.parse.urlencode({"secret": secret, "issuer": issuer, "digits": 6, "period": 30})
    return f"otpauth://totp/{label}?{query}"
