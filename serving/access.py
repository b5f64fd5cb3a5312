"""Optional API keys: with `API_KEYS` (comma-separated) or `API_KEYS_FILE` (one key per line) set, `/predict`,
`/predict_batch` and `/explain` want `Authorization: Bearer <key>` and the web UI a login with a key as its password;
`/health`, `/livez`, `/readyz`, `/metrics` and the OpenAPI document stay open, as in Text Embeddings Inference.

Keys fail closed: a configured source that yields no key stops the start; blank lines and `#` comments in the file are
not keys; the file is read again when it changes, so a key is rotated or revoked without a restart.

Keys are compared in constant time (every key, digests of equal length), never logged and never answered back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path

from serving.settings import ServiceSettings

log = logging.getLogger("sentiment.service")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class NoKeys(RuntimeError):
    """A key source is configured but yields no key: the service refuses to start rather than serve an open API."""


def keys_in(text: str) -> list[str]:
    """One key per line; blank lines and `#` comments are not keys."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


class ApiKeys:
    """The keys of `API_KEYS` and of `API_KEYS_FILE`; the file is read again when it changes (rotation and revocation
    without a restart), checked at most every `RECHECK_S`. A file that later yields no key refuses every request."""

    RECHECK_S = 1.0

    def __init__(self, inline: list[str], file: Path | None = None):
        self.inline, self.file = inline, file
        self.file_state: tuple[int, int, int] | None = None  # (inode, size, mtime) of the file as last read
        self.checked_at = 0.0
        self.digests = [_digest(key) for key in inline]
        if file is not None:
            self._read_file()
        if self.enabled and not self.digests:
            source = f"API_KEYS_FILE={file}" if file else "API_KEYS"
            raise NoKeys(f"{source} yields no API key: refusing to start with an open API (unset it to run open)")
        if not self.enabled:
            log.warning("API keys are off (neither API_KEYS nor API_KEYS_FILE is set): the API is open to anyone")

    @classmethod
    def of(cls, settings: ServiceSettings) -> ApiKeys:
        inline = [key.strip() for key in settings.api_keys.split(",") if key.strip()]
        if settings.api_keys.strip() and not inline:
            raise NoKeys("API_KEYS yields no API key: refusing to start with an open API (unset it to run open)")
        return cls(inline, Path(settings.api_keys_file) if settings.api_keys_file else None)

    def _read_file(self) -> None:
        """The keys again from the file when it changed since it was last read."""
        assert self.file is not None
        try:
            stat = self.file.stat()
            state = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if state == self.file_state:
                return
            keys = keys_in(self.file.read_text())
        except OSError as error:
            if self.file_state is None:
                raise NoKeys(f"API_KEYS_FILE={self.file} cannot be read ({error}): refusing to start") from error
            log.error("API_KEYS_FILE=%s cannot be read (%s): the keys read last stay", self.file, error)
            return
        if self.file_state is not None:
            log.warning("API_KEYS_FILE=%s changed: %d key(s) now", self.file, len(keys) + len(self.inline))
            if not keys and not self.inline:
                log.error("API_KEYS_FILE=%s yields no key now: every request is refused until it has one", self.file)
        self.file_state = state
        self.digests = [_digest(key) for key in self.inline + keys]

    @property
    def enabled(self) -> bool:
        """Whether keys are required: a key source is configured (even if it yields no key now: fail closed)."""
        return bool(self.inline) or self.file is not None

    def valid(self, key: str | None) -> bool:
        """Whether `key` is one of the keys, in a time that depends neither on the key nor on which one matched."""
        if self.file is not None and time.monotonic() - self.checked_at > self.RECHECK_S:
            self.checked_at = time.monotonic()
            self._read_file()
        digest, found = _digest(key or ""), False
        for known in self.digests:
            found |= hmac.compare_digest(digest, known)
        return found and key is not None

    def admits(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries a valid key (`Bearer <key>`, the scheme in any case)."""
        scheme, _, key = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.valid(key.strip() or None)

    def ui_login(self, _user: str, password: str) -> bool:
        """Gradio's login form: any user name, an API key as the password (a browser cannot send a bearer header)."""
        return self.valid(password)
