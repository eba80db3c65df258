"""Pictures in: image decoding, frame statistics, and the frame sources (``sources/``)."""
