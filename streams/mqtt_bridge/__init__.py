"""The MQTT/IoT bridge: MQTT topic filters to Kafka topics and Kafka topics to MQTT topic templates.

Run it with `python -m streams.mqtt_bridge` (`switchboard up` does). The modules, from the pure to the wired:

- `patterns`: MQTT topic filters with named levels (`sensors/{device_id}/{metric}`) and topic templates;
- `routes`: the configured mappings compiled and checked against the topic catalog and the Avro schemas;
- `payloads`: MQTT payloads (JSON or raw bytes) to Avro records and back;
- `inbound` / `outbound`: MQTT -> Kafka (ack after the Kafka ack, bounded buffer) and Kafka -> MQTT;
- `mqtt_client`: the gmqtt connection (TLS, credentials, last will, reconnect with backoff, publish acks);
- `status`: the status file `switchboard status` reads; `service`: the process; `simulator`: simulated devices.

This package imports nothing at import time, so `infra.config` can use `patterns` without a cycle.
"""
