"""Connect outcomes and link states of edge.core.mqtt as typed values, against a real Mosquitto.

A van technician reads the one log line; code (and these tests) branch on `ConnectResult`."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from pathlib import Path

from edge.core import mqtt
from edge.core.mqtt import ConnectResult, LinkSettings, LinkState, MqttLink
from edge.lab.localbroker import CertAuthority, free_port
from tests.broker import DEVICE_USERS, BrokerFactory, MosquittoBroker, broker_factory, plain_broker  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Wait for a state (not a speed): the deadline only stops a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _link(uri: str, **kw: object) -> MqttLink:
    settings = LinkSettings(brokers=(uri,), client_id=f"outcome-{free_port()}", reconnect_min_s=0.1,
                            reconnect_max_s=0.5, **kw)  # type: ignore[arg-type]  # fmt: skip
    return MqttLink(settings)


def _first_failure(link: MqttLink) -> ConnectResult | None:
    out = link.stats.last_outcome
    return None if out is None or out.ok else out.result


def test_no_broker_listening_is_tcp_refused_and_the_link_backs_off() -> None:
    link = _link(f"mqtt://127.0.0.1:{free_port()}").start()
    try:
        assert _until(lambda: link.stats.state is LinkState.BACKING_OFF)
        assert link.stats.last_outcome is not None
        assert link.stats.last_outcome.result is ConnectResult.TCP_REFUSED
        assert "refused the TCP connection (is the broker running?)" in link.stats.last_error
        assert not link.connected
    finally:
        link.stop(offline_status=False)
    assert link.stats.state is LinkState.STOPPED


def test_paho_is_not_patched_process_wide(plain_broker: MosquittoBroker) -> None:  # noqa: F811
    """The Unix wake-up pair is swapped in only around the link's own loop_start: other paho clients
    in the process (a test's subscriber, a back-office tool) keep paho as shipped."""
    import paho.mqtt.client as paho

    shipped = paho._socketpair_compat
    assert shipped.__module__ == "paho.mqtt.client"
    link = _link(plain_broker.uri).start()
    try:
        assert link.wait_connected(20), link.stats.last_error
        # CONNACK can arrive while the link is still inside its scoped swap; once that has ended
        # (the swap holds this lock), paho is as shipped again.
        with mqtt._PAIR_LOCK:
            assert paho._socketpair_compat is shipped
    finally:
        link.stop(offline_status=False)


def test_a_wrong_password_is_auth_refused_on_v5_and_v311(broker_factory: BrokerFactory) -> None:  # noqa: F811
    broker = broker_factory(tls=True, users=DEVICE_USERS)
    for protocol in ("v5", "v311"):
        link = _link(broker.uri, username="dev-a", password="not-the-password", ca_file=broker.ca_file,
                     protocol=protocol).start()  # fmt: skip
        try:
            assert _until(lambda link=link: _first_failure(link) is not None), link.stats.last_error  # type: ignore[misc]
            out = link.stats.last_outcome
            assert out is not None and out.result is ConnectResult.AUTH_REFUSED, (protocol, out)
            assert out.reason_code in (134, 135)  # paho reports v3.1.1's 4/5 as v5's codes
            assert "refused the login for user 'dev-a'" in out.message and "mqtt.password_file" in out.message
        finally:
            link.stop(offline_status=False)
    good = _link(broker.uri, username="dev-a", password=DEVICE_USERS["dev-a"], ca_file=broker.ca_file).start()
    try:
        assert good.wait_connected(20), good.stats.last_error
        assert good.stats.last_outcome is not None and good.stats.last_outcome.result is ConnectResult.CONNECTED
        assert good.stats.state is LinkState.CONNECTED
    finally:
        good.stop(offline_status=False)


def test_a_broker_certificate_from_another_ca_is_tls_untrusted(
    tmp_path: Path, broker_factory: BrokerFactory  # noqa: F811
) -> None:
    broker = broker_factory(tls=True, users=DEVICE_USERS)
    stranger = CertAuthority.create(tmp_path / "other-ca", "Some other CA")
    link = _link(broker.uri, username="dev-a", password=DEVICE_USERS["dev-a"], ca_file=stranger.cert_file).start()
    try:
        assert _until(lambda: _first_failure(link) is not None)
        out = link.stats.last_outcome
        assert out is not None and out.result is ConnectResult.TLS_UNTRUSTED, out
        assert f"is not trusted by mqtt.tls.ca_file ({stranger.cert_file})" in out.message
    finally:
        link.stop(offline_status=False)


def test_a_missing_ca_file_is_a_tls_config_outcome(tmp_path: Path, broker_factory: BrokerFactory) -> None:  # noqa: F811
    broker = broker_factory(tls=True, users=DEVICE_USERS)
    link = _link(broker.uri, ca_file=tmp_path / "no-such-ca.crt").start()
    try:
        assert _until(lambda: _first_failure(link) is not None)
        out = link.stats.last_outcome
        assert out is not None and out.result is ConnectResult.TLS_CONFIG, out
        assert "mqtt.tls: cannot load CA" in out.message
    finally:
        link.stop(offline_status=False)


def test_a_broker_demanding_a_client_certificate_drops_us_with_a_hint(
    broker_factory: BrokerFactory,  # noqa: F811
) -> None:
    broker = broker_factory(tls=True, users=DEVICE_USERS, require_client_cert=True)
    link = _link(broker.uri, username="dev-a", password=DEVICE_USERS["dev-a"], ca_file=broker.ca_file).start()
    try:
        assert _until(lambda: _first_failure(link) is not None)
        out = link.stats.last_outcome
        # Depending on the TLS version the refusal surfaces during the handshake or on the first read.
        assert out is not None and out.result in (ConnectResult.DROPPED, ConnectResult.TLS_FAILED), out
        if out.result is ConnectResult.DROPPED:
            assert "client certificate" in out.message
    finally:
        link.stop(offline_status=False)


def test_a_broker_refusing_v5_gives_a_fallback_outcome_then_connects_on_311(
    broker_factory: BrokerFactory,  # noqa: F811
) -> None:
    from tests.v3proxy import V311OnlyProxy

    broker = broker_factory(tls=False, users=None)
    proxy = V311OnlyProxy(broker.port)
    link = _link(f"mqtt://127.0.0.1:{proxy.port}").start()
    try:
        assert link.wait_connected(20), link.stats.last_error
        results = list(link.stats.results)
        assert results[:2] == [ConnectResult.PROTOCOL_FALLBACK, ConnectResult.CONNECTED], results
        assert link.stats.protocol == "v3.1.1" and link.stats.state is LinkState.CONNECTED
        # A fallback is not an error: it is logged as a warning and never counted as a failure.
        assert not link.stats.errors
    finally:
        link.stop(offline_status=False)
        proxy.close()


def test_link_control_flow_never_matches_error_text() -> None:
    """Branches compare enums: no `"…" in error` / `error.startswith(…)` on messages in edge.core.mqtt."""
    tree = ast.parse((ROOT / "edge" / "core" / "mqtt.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            left = node.left
            assert not (isinstance(left, ast.Constant) and isinstance(left.value, str)), ast.unparse(node)
