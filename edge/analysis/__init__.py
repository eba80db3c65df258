"""One frame through the models: the motion gate, the ``Analyzer`` and the label combiner."""
