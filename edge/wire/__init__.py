"""What leaves the device: typed MQTT messages, MegaDetector output, thumbnails."""
