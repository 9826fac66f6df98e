"""The plain `online`/`offline` availability topic and optional Home Assistant discovery.

`<prefix>/availability` holds a retained `online` while the service runs and `offline` after it:
published at a clean stop, and set by the broker (the MQTT Last Will) when the device vanishes
(crash, SIGKILL, power or network loss). Dashboards (Home Assistant, Node-RED, Frigate users)
wire to such a topic.

It has its own MQTT connection (client id `<client id>-availability`): a connection has one Last
Will, and the alert link's Will is the *signed* offline status the back office verifies, which a
plain word would replace. Two sockets to the same broker die together when the process does.

Home Assistant discovery (mqtt.home_assistant.enabled) publishes retained sensor configs that read
the device's JSON status: health figures only (fps, per-camera fps, alerts pending, watchlist
version, CPU temperature). No subject, face or match data is ever in them, nor in what they read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from edge.core.config import Config
from edge.core.mqtt import LinkSettings, MqttLink

log = logging.getLogger("lfr_edge.availability")

ONLINE = b"online"
OFFLINE = b"offline"


@dataclass(frozen=True, slots=True)
class Sensor:
    object_id: str
    name: str
    template: str  # Jinja on the status JSON
    unit: str | None = None
    device_class: str | None = None


def availability_topic(cfg: Config) -> str:
    return f"{cfg.topic_prefix}/availability"


def health_sensors(cfg: Config) -> tuple[Sensor, ...]:
    """What Home Assistant is told about: counts and device health, nothing about a person."""
    sensors = [
        Sensor("fps", "Frames per second (slowest camera)", "{{ value_json.fps }}", "fps"),
        Sensor("alerts_pending", "Alerts pending delivery", "{{ value_json.alerts.pending }}"),
        Sensor("watchlist_version", "Watchlist version", "{{ value_json.watchlist_version | default('none') }}"),
        Sensor("cpu_temperature", "CPU temperature", "{{ value_json.cpu_temp_c }}", "°C", "temperature"),
    ]
    specs = cfg.camera_specs()
    if len(specs) > 1:
        for i, spec in enumerate(specs):
            sensors.append(Sensor(f"fps_{spec.name}", f"Frames per second ({spec.name})",
                                  f"{{{{ value_json.cameras[{i}].fps }}}}", "fps"))
    return tuple(sensors)


def discovery_messages(cfg: Config, version: str) -> list[tuple[str, bytes]]:
    """(topic, retained JSON config) for each health sensor."""
    dev_id = cfg.device.id
    device = {
        "identifiers": [f"lfr_edge_{dev_id}"],
        "name": f"LFR Edge {dev_id}",
        "manufacturer": "LFR Edge",
        "model": "LFR Edge appliance",
        "sw_version": version,
    }
    out = []
    for s in health_sensors(cfg):
        doc: dict[str, Any] = {
            "name": s.name,
            "unique_id": f"lfr_edge_{dev_id}_{s.object_id}",
            "state_topic": f"{cfg.topic_prefix}/status",
            "value_template": s.template,
            "availability_topic": availability_topic(cfg),
            "payload_available": ONLINE.decode(),
            "payload_not_available": OFFLINE.decode(),
            "device": device,
        }
        if s.unit:
            doc["unit_of_measurement"] = s.unit
            doc["state_class"] = "measurement"
        if s.device_class:
            doc["device_class"] = s.device_class
        topic = f"{cfg.mqtt.home_assistant.discovery_prefix}/sensor/{dev_id}/{s.object_id}/config"
        out.append((topic, json.dumps(doc, sort_keys=True).encode()))
    return out


class Availability:
    """The availability link: `online` (and discovery) on every connect, `offline` at stop or by Will."""

    def __init__(self, cfg: Config, link: MqttLink | None = None) -> None:
        self.cfg = cfg
        self.topic = availability_topic(cfg)
        if link is None:
            base = LinkSettings.from_config(cfg)
            link = MqttLink(
                dataclasses.replace(base, client_id=f"{base.client_id}-availability", will_topic=self.topic,
                                    will_payload=OFFLINE),
                name="availability",
            )
        self.link = link
        link.on_connect(self._announce)

    def _announce(self) -> None:
        # On paho's network thread: publish() only queues, it never waits here.
        self.link.publish(self.topic, ONLINE, qos=1, retain=True)
        if self.cfg.mqtt.home_assistant.enabled:
            from edge import __version__

            for topic, payload in discovery_messages(self.cfg, __version__):
                self.link.publish(topic, payload, qos=1, retain=True)

    def start(self) -> Availability:
        self.link.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        # MqttLink.stop publishes the Will's payload (`offline`, retained) before a clean disconnect.
        self.link.stop(timeout)
