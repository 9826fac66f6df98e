"""Real Mosquitto for tests: `from tests.broker import tls_broker, plain_broker, BrokerFactory`.

The broker logic lives in edge/lab/localbroker.py (the alerts benchmark needs it at runtime);
this module adds the pytest fixtures. Tests skip with a reason when mosquitto is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from edge.lab.localbroker import (
    BACKOFFICE_USER,
    MOSQUITTO,
    CertAuthority,
    MosquittoBroker,
    default_acl,
    free_port,
    mosquitto_available,
    password_hash,
)

__all__ = [
    "BACKOFFICE_USER",
    "DEVICE_USERS",
    "BrokerFactory",
    "CertAuthority",
    "MosquittoBroker",
    "broker_factory",
    "default_acl",
    "free_port",
    "password_hash",
    "plain_broker",
    "require_mosquitto",
    "tls_broker",
]

# Device user name = device id, so the ACL pattern lfr/%u/# confines each device to its own topics.
DEVICE_USERS = {"dev-a": "pw-dev-a", "dev-b": "pw-dev-b", BACKOFFICE_USER: "pw-backoffice"}


def require_mosquitto() -> None:
    if not mosquitto_available():
        pytest.skip(f"{MOSQUITTO} not installed (Debian package `mosquitto`)")


class BrokerFactory:
    """Makes brokers in a test's tmp dir and kills every one at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.brokers: list[MosquittoBroker] = []

    def __call__(
        self,
        tls: bool = True,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        require_client_cert: bool = False,
        start: bool = True,
    ) -> MosquittoBroker:
        b = MosquittoBroker(
            self.root / f"broker{len(self.brokers)}",
            tls=tls,
            users=users,
            acl=acl,
            require_client_cert=require_client_cert,
        )
        self.brokers.append(b)
        return b.start() if start else b

    def close(self) -> None:
        for b in self.brokers:
            b.cleanup()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    require_mosquitto()
    factory = BrokerFactory(tmp_path / "brokers")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def tls_broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """TLS (test CA: `.ca_file`), passwords DEVICE_USERS, ACL: devices write only lfr/<id>/#."""
    return broker_factory(tls=True, users=DEVICE_USERS)


@pytest.fixture
def plain_broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """Plain TCP, anonymous, no ACL."""
    return broker_factory(tls=False, users=None)
