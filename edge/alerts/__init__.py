"""Alerts over MQTT, the appliance's only way out (docs/ALERTS.md).

mqtt: the supervised broker link; message: signed and sealed alert format; spool: durable outbound
queue; publisher: the pipeline's match sink and status heartbeat; listener: the back-office side;
testbroker: a throwaway Mosquitto for tests and the benchmark.
"""
