"""Model bundles and inference on the appliance (no torch)."""
