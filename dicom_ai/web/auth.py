"""Users and passwords: scrypt hashes (RFC 7914) in the index, roles reader, reviewer (a
reader who also approves or rejects results awaiting review) and admin.

Every password check goes through :func:`check_password`, which

- runs scrypt in at most :data:`SCRYPT_SLOTS` threads of the process at once (16 MiB and ~50 ms
  of one core each): excess checks wait up to :data:`SCRYPT_WAIT_SECONDS`, then :class:`Busy`
  is raised, so a burst of logins can never take the CPU and memory of the DICOM receivers;
- costs the same for a user who does not exist (a check against a dummy hash), so the time of
  a failure does not tell whether a name is known (OWASP Authentication Cheat Sheet,
  "Authentication and Error Messages").

:class:`LoginThrottle` counts failures per user name and per client address, with an
exponential backoff; :class:`Authenticator` puts both together for the web application and
re-reads a session's user from the index on every request, so raising ``User.session_version``
(logout, a new role or password) ends that user's sessions at once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import User

ROLES = ("reader", "reviewer", "admin")
_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~50 ms, 16 MiB per check


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# scrypt runs in at most this many threads of the process at once: half the cores this process
# may use, 1 or 2, so the DICOM receivers always keep at least half the CPU
SCRYPT_SLOTS = max(1, min(2, _cores() // 2))
SCRYPT_WAIT_SECONDS = 2.0  # how long a check waits for a free slot before Busy
NAME_MAX = 64  # User.name's column width: longer names cannot exist

_slots = threading.BoundedSemaphore(SCRYPT_SLOTS)
# the same cost as a real hash (same N, r, p); its digest is random, so no password matches it
_DUMMY = "$".join(["scrypt", str(_N), str(_R), str(_P), base64.b64encode(os.urandom(16)).decode(),
                   base64.b64encode(os.urandom(32)).decode()])


class Busy(Exception):
    """Every scrypt slot stayed taken for :data:`SCRYPT_WAIT_SECONDS`: try again shortly."""


class Throttled(Exception):
    """Too many failed logins for this user or from this address; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt itself (RFC 7914), 32 bytes; called only with a slot held."""
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, wait: float) -> bytes:
    """:func:`_derive` in one of the :data:`SCRYPT_SLOTS` slots.

    Raises
    ------
    Busy
        If no slot came free within ``wait`` seconds.
    """
    if not _slots.acquire(timeout=wait):
        raise Busy("password checks are busy; try again shortly")
    try:
        return _derive(password.encode(), salt, n, r, p)
    finally:
        _slots.release()


def hash_password(password: str, wait: float = SCRYPT_WAIT_SECONDS) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``.

    Raises
    ------
    Busy
        If no scrypt slot came free within ``wait`` seconds.
    """
    salt = os.urandom(16)
    digest = _scrypt(password, salt, _N, _R, _P, wait)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str | None, wait: float = SCRYPT_WAIT_SECONDS) -> bool:
    """True when ``password`` matches a :func:`hash_password` value (constant-time compare).

    A missing or malformed ``stored`` is checked against a dummy hash of the same cost, so it
    fails in the time a wrong password takes.

    Raises
    ------
    Busy
        If no scrypt slot came free within ``wait`` seconds.
    """
    try:
        scheme, n, r, p, salt, digest = (stored or "").split("$")
        params = int(n), int(r), int(p)
        salt_bytes, want = base64.b64decode(salt), base64.b64decode(digest)
        if scheme != "scrypt":
            raise ValueError(scheme)
    except (ValueError, TypeError):
        _, n, r, p, salt, _ = _DUMMY.split("$")
        params, salt_bytes, want = (_N, _R, _P), base64.b64decode(salt), b""
    try:
        got = _scrypt(password, salt_bytes, *params, wait=wait)
    except ValueError:  # parameters OpenSSL refuses
        return False
    return bool(want) and hmac.compare_digest(got, want)


def add_user(sessions: sessionmaker, name: str, role: str, password: str) -> None:
    """Create or update a user; an update raises its ``session_version``, which ends every web
    session the user has open (a demoted admin's cookie no longer opens /admin).

    Raises
    ------
    ValueError
        If the role is not reader, reviewer or admin, the name or password is empty, or the name is longer
        than 64 characters.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not name.strip() or not password:
        raise ValueError("name and password must not be empty")
    if len(name.strip()) > NAME_MAX:
        raise ValueError(f"name must not be longer than {NAME_MAX} characters")
    hashed = hash_password(password, wait=60.0)
    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.name == name.strip()))
        if user is None:
            session.add(User(name=name.strip(), role=role, password_hash=hashed, session_version=1))
        else:
            user.role, user.password_hash = role, hashed
            user.session_version = (user.session_version or 1) + 1


def revoke_sessions(sessions: sessionmaker, name: str) -> bool:
    """End every web session of user ``name`` (raise its ``session_version``); False when there
    is no such user."""
    with sessions.begin() as session:
        done = session.execute(update(User).where(User.name == name)
                               .values(session_version=User.session_version + 1))
        return done.rowcount > 0


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a request is from, as the index says now."""

    id: int
    name: str
    role: str
    session_version: int


def _verify(sessions: sessionmaker, name: str, password: str, wait: float) -> Identity | None:
    """The user when ``password`` is theirs, else None; one scrypt whether or not the name exists.

    Raises
    ------
    Busy
        If no scrypt slot came free within ``wait`` seconds.
    """
    row = None
    if 0 < len(name) <= NAME_MAX:
        with sessions() as session:
            row = session.execute(select(User.id, User.name, User.role, User.session_version,
                                         User.password_hash).where(User.name == name)).first()
    ok = check_password(password, row.password_hash if row else None, wait=wait)
    if not (ok and row):
        return None
    return Identity(row.id, row.name, row.role, row.session_version or 1)


def authenticate(sessions: sessionmaker, name: str, password: str) -> tuple[str, str] | None:
    """(name, role) when the password is right, else None (the same time for an unknown name).

    Raises
    ------
    Busy
        If no scrypt slot came free within :data:`SCRYPT_WAIT_SECONDS`.
    """
    found = _verify(sessions, name, password, SCRYPT_WAIT_SECONDS)
    return (found.name, found.role) if found else None


class LoginThrottle:
    """Failed logins counted per user name and per client address, with exponential backoff
    (OWASP Authentication Cheat Sheet, "Protect Against Automated Attacks").

    After ``per_user`` failures for one name (``per_address`` from one address) each further
    failure locks that name (address) for 1, 2, 4, ... seconds, at most ``max_seconds``; a
    locked name or address is refused without a password check, whatever the password. A
    success forgets the name's failures (not the address's: one's own account must not reset
    the count of guesses at others'). Failures older than a day are forgotten; at most
    ``max_entries`` names and addresses are kept (the oldest go first).
    """

    FORGET_SECONDS = 86400.0

    def __init__(self, per_user: int = 5, per_address: int = 20, max_seconds: float = 900.0,
                 max_entries: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user, self.per_address, self.max_seconds = per_user, per_address, max_seconds
        self.max_entries, self.clock = max_entries, clock
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, name: str, address: str) -> list[tuple[tuple[str, str], int]]:
        return [(("user", name[:NAME_MAX + 1]), self.per_user), (("address", address), self.per_address)]

    def _locked_for(self, key: tuple[str, str], allowed: int, now: float) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count < allowed:
            return 0.0
        return max(0.0, last + min(self.max_seconds, 2.0 ** (count - allowed)) - now)

    def check(self, name: str, address: str) -> None:
        """Nothing when a login of ``name`` from ``address`` may be tried now.

        Raises
        ------
        Throttled
            While the name or the address is locked.
        """
        now = self.clock()
        with self._lock:
            wait = max(self._locked_for(key, allowed, now) for key, allowed in self._keys(name, address))
        if wait > 0:
            raise Throttled(max(1, math.ceil(wait)))

    def failed(self, name: str, address: str) -> None:
        """Count a failed login of ``name`` from ``address``."""
        now = self.clock()
        with self._lock:
            for key, _ in self._keys(name, address):
                count, last = self._failures.pop(key, (0, now))
                if now - last > self.FORGET_SECONDS:
                    count = 0
                self._failures[key] = (count + 1, now)
            while len(self._failures) > self.max_entries:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """Forget the failures of ``name``."""
        with self._lock:
            self._failures.pop(("user", name[:NAME_MAX + 1]), None)


class BasicCache:
    """HTTP Basic credentials verified in the last ``ttl`` seconds, so an API client does not
    pay one scrypt (and a slot) per request.

    Keyed by an HMAC-SHA256 of name and password under a key made at start and never stored
    (no password is kept); the value is the user's id and ``session_version`` then, and a hit
    counts only while the index still has that version, so a new password or role, or a logout,
    ends it at once. At most ``size`` entries (the oldest go first).
    """

    def __init__(self, ttl: float = 60.0, size: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._key = os.urandom(32)
        self._items: OrderedDict[bytes, tuple[int, int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, name.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def get(self, name: str, password: str) -> tuple[int, int] | None:
        """(user id, session_version) of a recent verification of these credentials, else None."""
        if self.ttl <= 0:
            return None
        key = self._digest(name, password)
        with self._lock:
            item = self._items.get(key)
            if item is None or self.clock() > item[2]:
                self._items.pop(key, None)
                return None
            return item[0], item[1]

    def put(self, name: str, password: str, who: Identity) -> None:
        """Remember that these credentials are ``who``'s."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[self._digest(name, password)] = (who.id, who.session_version, self.clock() + self.ttl)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, name: str, password: str) -> None:
        with self._lock:
            self._items.pop(self._digest(name, password), None)


class Authenticator:
    """Logins (form and HTTP Basic) and the per-request re-reading of a session's user.

    ``sessions`` is the index; the other arguments are ``[web]`` settings of the same names.
    """

    def __init__(self, sessions: sessionmaker, *, per_user: int = 5, per_address: int = 20,
                 max_seconds: float = 900.0, basic_cache_seconds: float = 60.0,
                 wait: float = SCRYPT_WAIT_SECONDS) -> None:
        self.sessions, self.wait = sessions, wait
        self.throttle = LoginThrottle(per_user, per_address, max_seconds)
        self.cache = BasicCache(basic_cache_seconds)

    def login(self, name: str, password: str, address: str) -> Identity | None:
        """The user when the password is right, else None (the failure counted).

        Raises
        ------
        Throttled
            While the name or the address is locked by earlier failures.
        Busy
            If no scrypt slot came free in time (not counted as a failure).
        """
        self.throttle.check(name, address)
        found = _verify(self.sessions, name, password, self.wait)
        if found is None:
            self.throttle.failed(name, address)
        else:
            self.throttle.succeeded(name)
        return found

    def basic(self, name: str, password: str, address: str) -> Identity | None:
        """:meth:`login` for HTTP Basic (RFC 7617), answered from :class:`BasicCache` when these
        credentials were verified recently and the user's session_version is unchanged.

        Raises
        ------
        Throttled, Busy
            As :meth:`login`.
        """
        self.throttle.check(name, address)
        hit = self.cache.get(name, password)
        if hit is not None:
            who = self.current(hit[0], hit[1], name)
            if who is not None:
                return who
            self.cache.drop(name, password)
        found = self.login(name, password, address)
        if found is not None:
            self.cache.put(name, password, found)
        return found

    def current(self, user_id: object, session_version: object, name: str) -> Identity | None:
        """The user of a session (or cached Basic verification) as the index says now; None when
        the user is gone, renamed, or its session_version moved on (revoked)."""
        if not isinstance(user_id, int) or not 0 < user_id < 2**63:
            return None
        with self.sessions() as session:
            row = session.execute(select(User.name, User.role, User.session_version)
                                  .where(User.id == user_id)).first()
        if row is None or row.name != name or (row.session_version or 1) != session_version:
            return None
        return Identity(user_id, row.name, row.role, row.session_version or 1)

    def revoke(self, user_id: int) -> None:
        """End every session of the user (logout): raise its session_version."""
        with self.sessions.begin() as session:
            session.execute(update(User).where(User.id == user_id)
                            .values(session_version=User.session_version + 1))
