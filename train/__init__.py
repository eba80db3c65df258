"""The training companion (torch, timm): models, datasets, training."""
