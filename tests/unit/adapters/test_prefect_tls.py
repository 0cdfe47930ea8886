"""Prefect clients share one TLS context per setting instead of parsing the certificate bundle
each: Prefect's own client classes, constructed (no server needed: a client connects lazily)."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

from mlops.adapters.prefect_tls import reuse_tls_contexts, shape_problems, tls_context

pytestmark = pytest.mark.unit

API = "http://127.0.0.1:9/api"


def context_of(client: Any) -> Any:
    """The SSL context the client's httpx connection pool connects with."""
    return client._client._transport._pool._ssl_context


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    """Every SSL context made by ``ssl.create_default_context`` from here on."""
    made: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


def test_clients_after_the_first_build_no_context(built: list[ssl.SSLContext]) -> None:
    assert reuse_tls_contexts()
    tls_context()  # the process's first, if no earlier test made it
    before = len(built)
    clients = [cls(API) for cls in (SyncPrefectClient, PrefectClient) for _ in range(3)]
    assert len(built) == before
    used = {id(context_of(c)) for c in clients}
    assert used == {id(tls_context())}


def test_the_shared_context_is_the_one_prefect_builds() -> None:
    ctx = tls_context()
    assert ctx is tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # certifi's bundle loaded


def test_the_insecure_setting_gets_its_own_unverified_context() -> None:
    verified = tls_context()
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        insecure = tls_context()
    assert insecure is not verified
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert tls_context() is verified


def test_a_client_given_its_own_verify_keeps_it(built: list[ssl.SSLContext]) -> None:
    assert reuse_tls_contexts()
    own = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client = SyncPrefectClient(API, httpx_settings={"verify": own})
    assert context_of(client) is own
    assert built == []


def test_installing_twice_wraps_once() -> None:
    assert reuse_tls_contexts()
    wrapped = SyncPrefectClient.__init__
    assert reuse_tls_contexts()
    assert SyncPrefectClient.__init__ is wrapped
    assert shape_problems(SyncPrefectClient) == []


def test_a_client_of_another_shape_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    class Other:
        def __init__(self, api: str) -> None:
            self.api = api

    init = Other.__init__
    with caplog.at_level(logging.WARNING, logger="mlops.adapters.prefect_tls"):
        assert not reuse_tls_contexts((Other,))
    assert Other.__init__ is init
    assert "takes no httpx_settings" in caplog.text
    assert "no longer builds an SSL context" in caplog.text
