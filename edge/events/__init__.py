"""Bursts of frames become events; watch-list rules decide alerts (pure functions)."""
