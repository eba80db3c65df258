"""The reliability suite (``make reliability``): long-running fault scenarios against the real service."""
