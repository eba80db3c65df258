"""Frame sources and image decoding."""
