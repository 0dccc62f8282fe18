"""Who the client is (behind trusted proxies only), who may use admin actions, and the per-client rate limit."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable, Mapping

# Headers a client can write itself: they name a client only when a trusted proxy wrote the part we read.
FORWARD_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")
HEADER_CHOICES = FORWARD_HEADERS
MAX_ENTRIES = 64  # a longer forwarded chain is not from any real proxy layout; read no further
IPV6_PREFIX = 64  # one IPv6 subscriber usually holds a whole /64: limit it as one client


class AccessDenied(PermissionError):
    """An admin action refused, with one sentence saying why."""


# -- pure functions over (headers, peer address, settings) -----------------------------------------------

def _header_values(headers: Any, name: str) -> list[str]:
    """Every value of a header, in order; headers may be Starlette Headers, a mapping or ASGI raw pairs."""
    if headers is None:
        return []
    if hasattr(headers, "getlist"):  # Starlette/Gradio Headers: repeated lines kept, case-insensitive
        return [str(v) for v in headers.getlist(name)]
    if hasattr(headers, "get_all"):  # Streamlit's st.context.headers
        return [str(v) for v in headers.get_all(name)]
    if isinstance(headers, Mapping):
        return [str(v) for k, v in headers.items() if str(k).lower() == name]
    values = []
    for key, value in headers:  # ASGI scope["headers"]: [(b"name", b"value"), ...]
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key.lower() == name:
            values.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return values


def is_forwarded(headers: Any) -> bool:
    """Whether the request carries any forwarded-client header (so it did not come straight from its sender)."""
    return any(_header_values(headers, name) for name in FORWARD_HEADERS)


def normalize(address: str | None) -> str | None:
    """An address in canonical form ("[::1]:80", "1.2.3.4:5" and "::FFFF:1.2.3.4" too), or None if it is none."""
    if not address:
        return None
    text = address.strip().strip('"')
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]  # a zone id names an interface, not a client
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def is_loopback(address: str | None) -> bool:
    """Whether an address is this machine's loopback."""
    canonical = normalize(address)
    return bool(canonical) and ipaddress.ip_address(canonical).is_loopback


def _forwarded_for(value: str) -> list[str]:
    """The for= parameter of each element of an RFC 7239 Forwarded value, in order ("" where an element has none).

    Each proxy adds one element, so an element without for= still counts as a hop: skipping it would shift the
    count from the right onto an entry the client wrote.
    """
    found = []
    for element in value.split(","):
        pairs = [part.split("=", 1) for part in element.split(";") if "=" in part]
        found.append(next((v.strip() for k, v in pairs if k.strip().lower() == "for"), ""))
    return found


def forwarded_chain(headers: Any, header: str = "x-forwarded-for") -> list[str]:
    """The addresses a forwarded header lists, left (oldest, client-written) to right (nearest proxy)."""
    values = _header_values(headers, header)
    if header == "forwarded":
        entries = [e for v in values for e in _forwarded_for(v)]
    else:
        entries = [e.strip() for v in values for e in v.split(",")]
    return entries[-MAX_ENTRIES:]  # an empty entry still counts as a hop; it names nobody, so the peer is used


def client_identity(headers: Any, peer: str | None, settings_or_hops: Any = 0,
                    header: str | None = None) -> str | None:
    """The client's address: the socket peer, or the entry `hops` from the right of the trusted forwarded header.

    settings_or_hops is a Settings (forwarded_hops, forwarded_header) or a number of trusted proxy hops. With
    0 hops no header is read. With N hops the N-th entry from the right was written by the first trusted proxy
    and names the client; entries further left are the client's own writing and are never read. A chain shorter
    than N, or an entry that is not an address, did not come through the trusted proxies: the peer is used.
    """
    if isinstance(settings_or_hops, int):
        hops, name = settings_or_hops, header or "x-forwarded-for"
    else:
        hops = int(getattr(settings_or_hops, "forwarded_hops", 0))
        name = header or getattr(settings_or_hops, "forwarded_header", "x-forwarded-for")
    fallback = normalize(peer) or (peer or None)
    if hops <= 0:
        return fallback
    if name == "x-real-ip":  # one value, set (not appended) by the proxy next to us
        values = _header_values(headers, name)
        return (normalize(values[-1]) if len(values) == 1 else None) or fallback
    chain = forwarded_chain(headers, name)
    if len(chain) < hops:
        return fallback
    return normalize(chain[-hops]) or fallback


def rate_key(identity: str | None) -> str | None:
    """What the rate limit counts by: the address, or its /64 for IPv6 (one subscriber holds a whole /64)."""
    canonical = normalize(identity)
    if canonical is None:
        return identity
    ip = ipaddress.ip_address(canonical)
    if isinstance(ip, ipaddress.IPv6Address) and not ip.is_loopback:
        return str(ipaddress.IPv6Network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return canonical


def check_admin(headers: Any, peer: str | None, password: str, token: str | None) -> None:
    """Raise AccessDenied unless the password matches, or (no password set) the caller is this machine, direct."""
    if password:
        if not (token and hmac.compare_digest(token.encode(), password.encode())):
            raise AccessDenied("Admin actions need the admin password.")
        return
    # "this machine only" means a direct loopback connection: a local proxy forwarding a remote visitor also
    # connects from loopback, and any forwarded header says a proxy (or a client pretending to be one) is there
    if is_forwarded(headers) or not is_loopback(peer):
        raise AccessDenied("Admin actions are open only from this machine until an admin password is set.")


# -- the rate limiter ---------------------------------------------------------------------------------------

class SlidingWindows:
    """What each client spent in the last 60 s, as (time, amount) pairs; idle clients are forgotten past a cap."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.clock = clock
        self.max_clients = max_clients
        self._spent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self.lock = threading.Lock()

    def window(self, client: str, now: float) -> deque[tuple[float, int]]:
        """The client's spending still inside the 60 s window, oldest first; call with `lock` held."""
        if len(self._spent) > self.max_clients:  # forget idle clients rather than grow without bound
            for key in [k for k, q in self._spent.items() if not q or now - q[-1][0] > 60]:
                del self._spent[key]
        window = self._spent[client]
        while window and now - window[0][0] >= 60:
            window.popleft()
        return window

    def clear(self) -> None:
        """Forget every client's spending."""
        with self.lock:
            self._spent.clear()


class RateLimiter:
    """At most `per_minute` requests from one client in any 60 s; 0 means no limit."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.per_minute = per_minute
        self._windows = SlidingWindows(clock, max_clients)

    def retry_after(self, client: str) -> float:
        """Record a request; 0 if it may go ahead, else the seconds until it could."""
        if self.per_minute <= 0:
            return 0.0
        now = self._windows.clock()
        with self._windows.lock:
            window = self._windows.window(client, now)
            if len(window) >= self.per_minute:
                return round(60 - (now - window[0][0]), 1)
            window.append((now, 1))
            return 0.0

    def reset(self) -> None:
        """Forget every client's requests (a fresh minute for all)."""
        self._windows.clear()


# -- the policy the Studio owns -----------------------------------------------------------------------------

class Access:
    """The access policy: trusted proxy hops, the admin password and the per-client rate limit."""

    def __init__(self, hops: int = 0, admin_password: str = "", limiter: RateLimiter | None = None,
                 header: str = "x-forwarded-for"):
        if header not in HEADER_CHOICES:
            raise ValueError(f"forwarded header must be one of {', '.join(HEADER_CHOICES)}, got {header!r}")
        self.hops = max(0, int(hops))
        self.header = header
        self.admin_password = admin_password or ""
        self.limiter = limiter or RateLimiter(0)

    @classmethod
    def from_settings(cls, config: Any) -> "Access":
        return cls(config.forwarded_hops, config.admin_password, RateLimiter(config.rate_limit),
                   config.forwarded_header)

    def client(self, headers: Any, peer: str | None) -> str | None:
        """The client's resolved address."""
        return client_identity(headers, peer, self.hops, self.header)

    def retry_after(self, client: str | None) -> float:
        """Record a prediction by client; 0 if it may go ahead, else seconds to wait."""
        return self.limiter.retry_after(rate_key(client)) if client else 0.0

    def check_admin(self, headers: Any, peer: str | None, token: str | None) -> None:
        """Raise AccessDenied unless this request may run an admin action."""
        check_admin(headers, peer, self.admin_password, token)


# -- session ownership --------------------------------------------------------------------------------------

def new_session_key() -> str:
    """A secret the server hands to one page once: the proof that a later request comes from that page."""
    return secrets.token_urlsafe(24)


def same_key(given: str | None, expected: str | None) -> bool:
    """Whether a presented session key is the one issued (constant time)."""
    return bool(given and expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())



# -- password guessing ----------------------------------------------------------------------------------------

class LoginThrottle:
    """Backoff after wrong passwords: per client, doubling after `free` failures, and a floor for everyone."""

    def __init__(self, free: int = 3, base: float = 2.0, cap: float = 900.0, global_free: int = 10,
                 floor: float = 2.0, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.free, self.base, self.cap = free, base, cap
        self.global_free, self.floor = global_free, floor
        self.clock = clock
        self.max_clients = max_clients
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (failures in a row, time of the last)
        self._recent: deque[float] = deque()  # every client's failures in the last minute
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds before this client may try a password again; 0 if it may now."""
        now = self.clock()
        with self._lock:
            while self._recent and now - self._recent[0] >= 60:
                self._recent.popleft()
            waits = [0.0]
            if len(self._recent) >= self.global_free:  # many failures from anyone: nobody guesses fast
                waits.append(self._recent[-1] + self.floor - now)
            count, last = self._failures.get(client, (0, 0.0))
            if count >= self.free:
                waits.append(last + min(self.cap, self.base * 2 ** (count - self.free)) - now)
            return max(waits)

    def failed(self, client: str) -> None:
        """Record a wrong password from this client."""
        now = self.clock()
        with self._lock:
            if len(self._failures) > self.max_clients:  # forget clients idle past the longest lockout
                for key in [k for k, (_, t) in self._failures.items() if now - t > self.cap]:
                    del self._failures[key]
            count, _ = self._failures.get(client, (0, 0.0))
            self._failures[client] = (count + 1, now)
            self._recent.append(now)

    def succeeded(self, client: str) -> None:
        """Forget this client's failures once it signs in."""
        with self._lock:
            self._failures.pop(client, None)


_THROTTLES: dict[str, LoginThrottle] = {}
_THROTTLES_LOCK = threading.Lock()


def login_throttle(name: str) -> LoginThrottle:
    """One throttle per name for the whole process, so a new browser session does not start afresh."""
    with _THROTTLES_LOCK:
        return _THROTTLES.setdefault(name, LoginThrottle())
