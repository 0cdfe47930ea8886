"""One TLS context for every Prefect client of a process, instead of one per client.

Prefect 3.9's ``PrefectClient`` and ``SyncPrefectClient`` build a new ``ssl.SSLContext`` in
their constructor whenever ``httpx_settings`` holds none, and parsing the certificate bundle
(``load_verify_locations`` of certifi's file, OpenSSL 3) takes about 55 ms of CPU here: a
quarter of an empty flow run's fixed cost, since each flow run makes a client, and paid by every
``get_client()`` of the CLI and the flows, even against an ``http://`` server. Prefect has no
setting for it (an upstream pull request, PrefectHQ/prefect#19106, would let callers pass one).

``reuse_tls_contexts`` wraps both constructors: a client made without a ``verify`` of its own
gets the context Prefect would have built, from a cache keyed by the two settings Prefect builds
it from (``api.tls_insecure_skip_verify`` and ``api.ssl_cert_file``, read at each construction,
so ``temporary_settings`` still take effect). An ``SSLContext`` is safe to share between
clients and threads: httpx only reads it. A client given its own ``verify`` keeps it.

Installed only when the constructors still take ``httpx_settings`` and still build the context
this replaces (checked each time); otherwise a warning, and Prefect is left as it is.
"""

from __future__ import annotations

import functools
import inspect
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Marks a constructor already wrapped, so installing twice wraps once.
WRAPPED = "__mlops_reuses_tls_context__"

_contexts: dict[tuple[bool, str], ssl.SSLContext] = {}
_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The context a Prefect client would build under the current settings, made once per
    distinct (skip verify, certificate file) pair."""
    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    insecure = bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
    cert_file = "" if insecure else (PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
    key = (insecure, cert_file)
    with _lock:
        if key not in _contexts:
            if insecure:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=cert_file)
            _contexts[key] = ctx
        return _contexts[key]


def _reusing(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(
        self: Any, *args: Any, httpx_settings: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        settings = dict(httpx_settings or {})
        if "verify" not in settings:
            settings["verify"] = tls_context()
        init(self, *args, httpx_settings=settings, **kw)

    setattr(__init__, WRAPPED, True)
    return __init__


def reuse_tls_contexts(classes: tuple[type, ...] | None = None) -> bool:
    """Wrap the constructors of ``classes`` (default: Prefect's two clients); safe to call twice.
    False, with a warning and nothing changed, when one no longer has the shape wrapped here."""
    if classes is None:
        from prefect.client.orchestration import PrefectClient, SyncPrefectClient

        classes = (PrefectClient, SyncPrefectClient)
    problems = [p for cls in classes for p in shape_problems(cls)]
    if problems:
        from prefect import __version__

        logger.warning(
            "Prefect %s: each Prefect client builds its own TLS context (~55 ms) (%s): %s",
            __version__,
            __name__,
            "; ".join(problems),
        )
        return False
    for cls in classes:
        init = cls.__dict__["__init__"]
        if not getattr(init, WRAPPED, False):
            cls.__init__ = _reusing(init)  # type: ignore[misc]
    return True


def shape_problems(cls: type) -> list[str]:
    """What ``cls.__init__`` lacks of the shape wrapped here (empty: none)."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return [f"{cls.__name__} has no __init__ of its own"]
    if getattr(init, WRAPPED, False):
        return []
    problems = []
    if "httpx_settings" not in inspect.signature(init).parameters:
        problems.append(f"{cls.__name__}.__init__ takes no httpx_settings")
    names = getattr(init, "__code__", None)
    if names is None or "create_default_context" not in names.co_names:
        problems.append(f"{cls.__name__}.__init__ no longer builds an SSL context")
    return problems
