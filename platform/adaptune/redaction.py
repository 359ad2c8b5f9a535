"""Keeping secrets out of what adaptune prints, logs and records: passwords in URIs, secret-looking query
parameters, and the values of the environment variables that hold credentials (hub tokens, MLflow passwords).

Secrets reach adaptune only through the environment (MLflow and huggingface_hub read them there); this module
is the one place that masks them wherever a URI, a config dump or a message leaves the process.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Environment variables whose values are credentials. Their values are masked wherever they would appear.
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "DATABRICKS_TOKEN",
)
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words; no real credential is that short
# Query parameters that carry credentials (presigned URLs, SAS tokens, API keys).
_SECRET_PARAM = re.compile(
    r"(?:^|[-_.])(?:password|passwd|pwd|secret|token|sig|signature|credentials?|(?:api|access)?[-_]?key)(?:$|[-_.])",
    re.I,
)
# scheme://user:password@ and scheme://token@ inside free text
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*)(?::(?P<password>[^\s/@]*))?@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&][^=\s&#]*=)(?P<value>[^&\s#]+)")


def uri_password(uri: str) -> str | None:
    """The password in a URI's user information (`http://user:password@host`), or None."""
    try:
        return urlsplit(uri).password
    except ValueError:
        return None


def redact_uri(uri: str) -> str:
    """`uri` with the password in its user information and the values of secret-looking query parameters
    masked: `http://alice:s3cret@host:5000` -> `http://alice:***@host:5000`. A user name on its own stays
    (it is not a secret); anything that is not a URI is returned as it is, less any secret values."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact(uri)
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)  # the last @: a raw @ in a password stays masked
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            uri = urlunsplit((parts.scheme, f"{user}:{MASK}@{host}", parts.path, parts.query, parts.fragment))
    return redact(uri)


def redact(text: str) -> str:
    """Free text with every URI's password, every secret-looking query value and the value of every secret
    environment variable (SECRET_ENV) masked."""
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_SECRET.sub(_mask_query, text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redacted(data: Any) -> Any:
    """A copy of a config dump (dicts, lists, scalars) with every string redacted, and the value of every key
    that names a secret (`password`, `token`, ...) masked outright."""
    if isinstance(data, dict):
        return {k: MASK if _secret_key(k, v) else redacted(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redacted(v) for v in data]
    if isinstance(data, str):
        return redact_uri(data) if "://" in data else redact(data)
    return data


def secret_values() -> list[str]:
    """The values of the secret environment variables that are set, longest first (so a secret that contains
    another is masked whole)."""
    values = {os.environ.get(name, "") for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (with its arguments merged in) before a handler
    writes it. Installed on the CLI's log handlers, so every library's log lines pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a RedactingFilter to every handler of `logger` (the root logger by default) that lacks one."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _mask_userinfo(m: re.Match[str]) -> str:
    if m.group("password") is None:
        return m.group(0)  # scheme://user@ (a user name, or an e-mail address in text): not a secret
    return f"{m.group('scheme')}{m.group('user')}:{MASK}@"


def _mask_query(m: re.Match[str]) -> str:
    key = m.group("key")
    return f"{key}{MASK}" if _SECRET_PARAM.search(key[1:-1]) else m.group(0)


def _secret_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and bool(value) and bool(_SECRET_PARAM.search(key))
