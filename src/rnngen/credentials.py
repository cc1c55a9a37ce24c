"""Passwords for team mode: generated strong, kept in files only their owner can read, never
echoed. Clients take them from the environment (``MLFLOW_TRACKING_PASSWORD``) or from a file
path (libpq's ``PGPASSFILE``), so no URL, command line, log or run record carries one."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rnngen.errors import UserError
from rnngen.files import atomic_file

#: 32 URL-safe characters, 192 random bits; no character needs quoting in a pgpass file or a URL
PASSWORD_BYTES = 24


class SecretFileError(UserError, PermissionError):
    """A secret file is missing or others can read it; the message names it and the fix."""


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def write_secret(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 (atomically; its folder created 0700)."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=0o700)
    with atomic_file(path, private=True) as tmp:
        tmp.write_text(text)
    return path


def check_private(path: str | Path) -> Path:
    """``path``, if it exists and neither group nor others may read or write it."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SecretFileError(f"secret file {path} is missing") from None
    if mode & 0o077:
        raise SecretFileError(f"secret file {path} has mode {mode:04o}: other users can read it, so "
                              f"rnngen will not use it; make it private: chmod 600 {path}")
    return path


def read_secret(path: str | Path) -> str:
    """The secret in ``path`` (whitespace stripped); refused if others can read the file."""
    return check_private(path).read_text().strip()


def ensure_secret(path: str | Path) -> str:
    """The secret in ``path``, generated and written 0600 the first time."""
    path = Path(path)
    if not path.exists():
        write_secret(path, new_password() + "\n")
    return read_secret(path)


def pgpass_line(user: str, password: str, host: str = "*", port: str = "*", database: str = "*") -> str:
    """A line of libpq's password file (``PGPASSFILE``), fields escaped as libpq reads them."""
    fields = [host, port, database, user, password]
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, tags and messages; a string
    that is not a URL with credentials (a file path, a plain URL) comes back unchanged."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}"))

