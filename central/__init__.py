"""Central matching: MQTT ingest from many devices, individual gallery, review UI (to come)."""
