"""The outbox drained to an MQTT broker."""
