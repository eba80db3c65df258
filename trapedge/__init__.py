"""trapedge: an open edge appliance for wildlife camera traps."""

__version__ = "0.1.0"
