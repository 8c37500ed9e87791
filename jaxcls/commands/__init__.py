"""The commands: ``jaxcls train|eval|predict`` (and ``python train.py``, ``eval.py``,
``predict.py`` in a checkout).

Each ``main(argv)`` parses its flags and checks everything that needs no model (config
values, files, columns, labels, run dirs) before it imports JAX: a bad input fails in about a
second, not after the model loads. The JAX side is imported inside ``main``, after the checks.
"""
