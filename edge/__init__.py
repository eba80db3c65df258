"""The appliance: the stages a frame passes, one sub-package each.

``capture`` (frames in) → ``runtime`` (bundle, backends, models → ``Detections``) → ``analysis``
(one ``Analyzer``: gate, detect, classify, each box's one label, embed) → ``events`` (bursts, alert
rules: pure functions) → ``wire`` (typed messages, MegaDetector output, thumbnails) → ``storage``
(SQLite rows and the outbox, one transaction per frame) → ``publish`` (MQTT) → ``app`` (config,
factory, service, bundles, health) → ``cli`` (the commands). A package imports only those to its
left (and ``common``); the edge never imports torch, ``train``, ``export`` or ``central``.
"""
