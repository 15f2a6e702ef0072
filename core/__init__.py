"""The engine-neutral core: every business rule and every stateful processor, written once.

Beam hosts it today through ``transforms/`` (``BeamOps``, ``OrderedByKey``), Flink
next through its own adapter, and :class:`core.ops.LocalOps` over plain lists
(tests, benchmarks, the pure oracle). So that a Flink worker can run it without
Beam installed, a module here imports only the standard library, ``schemas``,
``core`` itself and plain libraries (h3, pyarrow, cryptography, pipeline-dp where
the DP math needs them) -- never ``apache_beam``, ``pyflink``, ``transforms``,
``pipelines`` or ``nfc_gateway``.

- :mod:`core.processor`: the one stateful-processor protocol and its local host.
- :mod:`core.ops`: the operations a composition is written over, and ``LocalOps``.
- :mod:`core.happenings`, :mod:`core.alerts`, :mod:`core.geo`: the alert fan-out
  (``find_happenings_over``, ``fan_out_over``; Beam host: ``transforms.alerts``).
"""
