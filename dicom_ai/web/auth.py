"""Users and passwords: scrypt hashes (RFC 7914) in the index, roles reader and admin."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import User

ROLES = ("reader", "admin")
_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~50 ms, 16 MiB per check


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a :func:`hash_password` value (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def add_user(sessions: sessionmaker, name: str, role: str, password: str) -> None:
    """Create or update a user.

    Raises
    ------
    ValueError
        If the role is not reader or admin, or the name or password is empty.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not name.strip() or not password:
        raise ValueError("name and password must not be empty")
    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.name == name.strip()))
        if user is None:
            session.add(User(name=name.strip(), role=role, password_hash=hash_password(password)))
        else:
            user.role, user.password_hash = role, hash_password(password)


def authenticate(sessions: sessionmaker, name: str, password: str) -> tuple[str, str] | None:
    """(name, role) when the password is right, else None."""
    with sessions() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None or not check_password(password, user.password_hash):
            return None
        return user.name, user.role
