"""The edge commands: ``run``, ``detect``, ``embed``, ``bundle``, one ``bench`` configuration and the demo."""
