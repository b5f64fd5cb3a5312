"""Optional API keys: with `API_KEYS` (comma-separated) or `API_KEYS_FILE` (one key per line) set, `/predict`,
`/predict_batch` and `/explain` want `Authorization: Bearer <key>` and the web UI a login with a key as its password;
`/health`, `/livez`, `/readyz`, `/metrics` and the OpenAPI document stay open, as in Text Embeddings Inference.

Keys are compared in constant time (every key, digests of equal length), never logged and never answered back.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.errors import ApiError
from serving.settings import ServiceSettings

BEARER = HTTPBearer(auto_error=False, description="An API key (`API_KEYS`), sent as `Authorization: Bearer <key>`")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, keys: list[str]):
        self.digests = [_digest(key) for key in keys if key]

    @classmethod
    def of(cls, settings: ServiceSettings) -> ApiKeys:
        keys = settings.api_keys.split(",")
        if settings.api_keys_file:
            keys += Path(settings.api_keys_file).read_text().splitlines()
        return cls([key.strip() for key in keys])

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def valid(self, key: str | None) -> bool:
        """Whether `key` is one of the keys, in a time that depends neither on the key nor on which one matched."""
        digest, found = _digest(key or ""), False
        for known in self.digests:
            found |= hmac.compare_digest(digest, known)
        return found and key is not None

    async def require(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        """The routes' dependency: 401 in the API's error shape unless a valid key came with the request."""
        if not self.valid(credentials.credentials if credentials else None):
            raise ApiError(401, "a valid API key is required: send the header Authorization: Bearer <key>")

    def ui_login(self, _user: str, password: str) -> bool:
        """Gradio's login form: any user name, an API key as the password (a browser cannot send a bearer header)."""
        return self.valid(password)
