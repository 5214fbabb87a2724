"""The one HTTP transport of the partner side: a ``requests`` session with one retry policy.

``OtaSession`` is configured once for a server (``base``): connect and read
timeouts from ``NetworkSettings`` (``OTA_CONNECT_TIMEOUT``, ``OTA_READ_TIMEOUT``),
certificate checks as ``requests`` does them, a user agent naming ota-build,
and the Authorization header sent only to the origin (scheme, host, port) it
was given for: a redirect to another origin drops it.

Retries (``OTA_RETRIES``, docs/decisions.md item 22) are urllib3's ``Retry``
mounted through ``HTTPAdapter``:

- idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) and the POSTs a call
  marks ``retry_safe`` are retried after a connection error, a timeout, or
  HTTP 502/503/504, with exponential back-off (``NetworkSettings.delay``) or
  the server's ``Retry-After`` (at most ``max_retry_after`` seconds);
- other POSTs only when they cannot have reached the server (connection
  refused, name not found, connect timeout); ``call`` then says "not retried,
  as the server may have carried it out";
- TLS failures are never retried;
- each retry is one WARNING line: ``<METHOD path>: <problem>; retry N of M in S s``.

``requests`` gives an adapter no options per request, so ``OtaSession.request``
puts what the policy needs to know about the call (its name, whether it is safe
to repeat, its timeouts) in a context variable for the duration of the call;
the adapter builds that call's ``Retry`` from it.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any, FrozenSet, Optional, Tuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from ota_build import __version__
from ota_build.core.config import NetworkSettings
from ota_build.core.errors import ServerError

log = logging.getLogger(__name__)

RETRY_STATUSES = (502, 503, 504)
IDEMPOTENT_METHODS: FrozenSet[str] = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_RETRY_AFTER = 30.0
"""Longest wait a server's ``Retry-After`` may ask for (as the back-off's longest wait)."""

Timeout = Tuple[float, float]


class _Call:
    """What the retry policy knows about one call: its name, its base URL, whether it may be repeated
    after it may have reached the server (``safe``: None = whether the method is idempotent), how often
    it may be retried, its timeouts; and how often it was retried so far."""

    def __init__(self, what: str, base: str, safe: Optional[bool], retries: int, timeout: Timeout) -> None:
        self.what = what
        self.base = base
        self.safe = safe
        self.retries = retries
        self.timeout = timeout
        self.retried = 0

    @property
    def attempts(self) -> int:
        """Attempts made so far (the one under way included)."""
        return self.retried + 1


_CALL: ContextVar[Optional[_Call]] = ContextVar("ota_build_partner_http_call", default=None)


def cause_of(exc: BaseException) -> BaseException:
    """The urllib3 error under a requests error (through ``MaxRetryError.reason``), else ``exc``."""
    err: BaseException = exc
    if isinstance(err, requests.RequestException) and err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    if isinstance(err, MaxRetryError) and err.reason is not None:
        err = err.reason
    return err


def not_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server: no connection was made."""
    return isinstance(exc, requests.ConnectTimeout) or isinstance(cause_of(exc), ConnectTimeoutError)


def describe(exc: BaseException, base: str, timeout: Timeout) -> str:
    """What went wrong with the connection, in words (never the request's headers or body).

    ``exc``: a requests error or the urllib3 error under it."""
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"the answer from {base} was cut off"
    cause = cause_of(exc)
    if isinstance(cause, NewConnectionError):
        why = getattr(cause.__cause__, "strerror", None) or "no connection"
        return f"cannot reach {base}: {why}"
    if isinstance(cause, ConnectTimeoutError) or isinstance(exc, requests.ConnectTimeout):
        return f"no connection to {base} within {timeout[0]:g} s (connect timeout)"
    if isinstance(cause, ReadTimeoutError) or isinstance(exc, requests.ReadTimeout):
        return f"no answer from {base} within {timeout[1]:g} s (read timeout)"
    return f"the connection to {base} was lost"


def tls_failure(what: str, base: str, exc: requests.exceptions.SSLError) -> ServerError:
    """A TLS failure (untrusted certificate, wrong host name...) as one line; retrying would not help."""
    found = re.search(r"\[SSL: [A-Z_]+\] ([^(\n]+)", str(exc))
    return ServerError(f"{what}: TLS with {base} failed: {found.group(1).strip() if found else type(exc).__name__}")


def _pair(timeout: Any) -> Timeout:
    """``(connect, read)`` from a requests timeout (a number or a pair)."""
    if isinstance(timeout, (tuple, list)):
        return (float(timeout[0]), float(timeout[1]))
    return (float(timeout), float(timeout))


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class OtaRetry(Retry):
    """urllib3's ``Retry`` with the client's back-off (``NetworkSettings.delay``), a bounded ``Retry-After``
    and one WARNING line per retry."""

    RETRY_AFTER_STATUS_CODES = frozenset(RETRY_STATUSES)  # Retry-After alone never makes a 413/429 retried

    def __init__(self, *args: Any, settings: Optional[NetworkSettings] = None, call: Optional[_Call] = None,
                 max_retry_after: float = MAX_RETRY_AFTER, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings or NetworkSettings()
        self.call = call
        self.max_retry_after = max_retry_after

    def new(self, **kw: Any) -> "OtaRetry":
        """A copy with ``kw`` changed (urllib3 makes one per attempt); keeps the settings and the call."""
        kw.setdefault("settings", self.settings)
        kw.setdefault("call", self.call)
        kw.setdefault("max_retry_after", self.max_retry_after)
        return super().new(**kw)

    def get_backoff_time(self) -> float:
        """Seconds before retry number ``len(history)``: ``NetworkSettings.delay``."""
        return self.settings.delay(len(self.history) - 1) if self.history else 0.0

    def get_retry_after(self, response: Any) -> Optional[float]:
        """The server's ``Retry-After`` in seconds, at most ``max_retry_after``."""
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)

    def increment(self, method: Optional[str] = None, url: Optional[str] = None, response: Any = None,
                  error: Optional[Exception] = None, _pool: Any = None, _stacktrace: Any = None) -> "OtaRetry":
        """urllib3's bookkeeping (raises when the call is not to be retried), then the WARNING line."""
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        assert isinstance(new, OtaRetry)
        call = self.call or _Call(f"{method} {urlsplit(url or '').path}", "the server", None, self.settings.retries,
                                  (self.settings.connect_timeout, self.settings.read_timeout))
        call.retried += 1
        if error is not None:
            problem = describe(error, call.base, call.timeout)
        else:
            problem = f"HTTP {getattr(response, 'status', '?')} from {call.base}"
        delay = new.get_retry_after(response) if response is not None and new.respect_retry_after_header else None
        log.warning("%s: %s; retry %d of %d in %g s", call.what, problem, len(new.history), call.retries,
                    delay or new.get_backoff_time())
        return new


class _OwnRetryLines(logging.Filter):
    """Drops urllib3's own "Retrying (...)" WARNING for our retries: ``OtaRetry`` logs them in its words."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], OtaRetry))


_POOL_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _OwnRetryLines) for f in _POOL_LOG.filters):
    _POOL_LOG.addFilter(_OwnRetryLines())


def retry_policy(settings: NetworkSettings, call: Optional[_Call] = None,
                 max_retry_after: float = MAX_RETRY_AFTER) -> OtaRetry:
    """The one retry policy, for ``call`` (None: an idempotent call retried ``settings.retries`` times)."""
    retries = settings.retries if call is None else call.retries
    safe = None if call is None else call.safe
    methods = IDEMPOTENT_METHODS | ({"POST"} if safe else set())
    return OtaRetry(total=retries, connect=None, read=False if safe is False else None,
                    status=0 if safe is False else None, other=0, redirect=None, allowed_methods=methods,
                    status_forcelist=RETRY_STATUSES, backoff_factor=settings.backoff, respect_retry_after_header=True,
                    raise_on_status=False, raise_on_redirect=False, settings=settings, call=call,
                    max_retry_after=max_retry_after)


class _RetryAdapter(HTTPAdapter):
    """``HTTPAdapter`` whose ``max_retries`` is the policy for the call under way."""

    def __init__(self, settings: NetworkSettings, max_retry_after: float) -> None:
        self._settings = settings
        self._max_retry_after = max_retry_after
        super().__init__()

    @property  # type: ignore[override]
    def max_retries(self) -> Retry:
        """The ``Retry`` of the call under way (read by ``HTTPAdapter.send`` once per request it sends)."""
        return retry_policy(self._settings, _CALL.get(), self._max_retry_after)

    @max_retries.setter
    def max_retries(self, value: Any) -> None:  # HTTPAdapter.__init__ sets a default; the policy replaces it
        pass


class OtaSession(requests.Session):
    """A ``requests.Session`` for the server at ``base``, with the timeouts, retries and header rules above.

    ``request`` (and so ``get``, ``put``, ``post``...) takes three more keyword arguments:
    ``retry_safe`` (whether sending the request twice is harmless; default: whether the method is
    idempotent), ``retries`` (default: ``settings.retries``; 0 when the caller resumes by itself) and
    ``what`` (the call's name in WARNING lines; default ``METHOD path``).
    """

    def __init__(self, base: str, settings: Optional[NetworkSettings] = None,
                 max_retry_after: float = MAX_RETRY_AFTER) -> None:
        super().__init__()
        self.base = base.rstrip("/")
        self.settings = NetworkSettings.from_env() if settings is None else settings
        self.headers["User-Agent"] = f"ota-build/{__version__} {requests.utils.default_user_agent()}"
        adapter = _RetryAdapter(self.settings, max_retry_after)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def timeout(self, extra_read: float = 0.0) -> Timeout:
        """``(connect, read)`` timeouts; ``extra_read`` seconds more to read (a server that works first)."""
        return (self.settings.connect_timeout, self.settings.read_timeout + extra_read)

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on the server."""
        return self.base + path

    def what(self, method: str, url: str) -> str:
        """``METHOD path`` (the path below ``base``, without the query) for messages."""
        path = url[len(self.base):] if url.startswith(self.base) else urlsplit(url).path
        return f"{method.upper()} {path.split('?', 1)[0] or '/'}"

    def request(self, method: str, url: Any, *args: Any, retry_safe: Optional[bool] = None,  # type: ignore[override]
                retries: Optional[int] = None, what: Optional[str] = None, **kwargs: Any) -> requests.Response:
        """``requests.Session.request`` under this session's timeouts and retry policy (see the class)."""
        if len(args) > 6:  # timeout given by position (the 7th parameter after url)
            timeout = args[6]
        else:
            timeout = kwargs.setdefault("timeout", self.timeout())
        call = _Call(what or self.what(method, str(url)), self.base, retry_safe,
                     self.settings.retries if retries is None else retries, _pair(timeout or self.timeout()))
        return self._send_as(call, method, url, *args, **kwargs)

    def _send_as(self, call: _Call, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        token = _CALL.set(call)
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            _CALL.reset(token)

    def put(self, url: Any, data: Any = None, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """``PUT``; takes ``request``'s keyword arguments, the three of this class included."""
        return self.request("PUT", url, data=data, **kwargs)

    def should_strip_auth(self, old_url: str, new_url: str) -> bool:
        """Drop the Authorization header on a redirect to another origin (scheme, host or port)."""
        return _origin(old_url) != _origin(new_url)

    def call(self, method: str, path: str, what: Optional[str] = None, retry_safe: Optional[bool] = None,
             retries: Optional[int] = None, **kwargs: Any) -> requests.Response:
        """``request`` of ``path`` below ``base``; a failure to get an answer is one ServerError line.

        The answer is returned whatever its status. A request that is not ``retry_safe`` (a POST, by
        default) and may have reached the server is not sent again: the error says so."""
        what = what or self.what(method, path)
        safe = method.upper() in IDEMPOTENT_METHODS if retry_safe is None else retry_safe
        kwargs.setdefault("timeout", self.timeout())
        call = _Call(what, self.base, retry_safe, self.settings.retries if retries is None else retries,
                     _pair(kwargs["timeout"]))
        try:
            return self._send_as(call, method, self.url(path), **kwargs)
        except requests.exceptions.SSLError as exc:
            raise tls_failure(what, self.base, exc) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            problem = describe(exc, self.base, call.timeout)
            if not safe and not not_sent(exc):
                raise ServerError(f"{what}: {problem}; not retried, as the server may have carried it out") from None
            raise ServerError(f"{what}: {problem} ({call.attempts} attempt{'s' if call.attempts > 1 else ''})") from None
        except requests.RequestException as exc:
            raise ServerError(f"{what}: {self.base}: {type(exc).__name__}") from None
