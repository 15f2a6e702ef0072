"""The native Flink host of the engine-neutral core (issue #12): a PyFlink DataStream job.

Beam's Flink job server cannot be had here, so the same business steps that
``transforms/`` hosts on Beam are hosted on Flink directly: ``flink_job.ops.FlinkOps``
implements ``core.ops.Ops`` over DataStreams, ``flink_job.ordered`` runs each
``core.processor.Processor`` in a KeyedProcessFunction (state in descriptors, expiry on
event-time timers), ``flink_job.io`` reads the contract's files or the Kafka topics and
writes the contract's output folders, and ``flink_job.job.build`` wires the steps as
``pipelines.run.build`` does for Beam. ``python -m flink_job --config FILE`` is what the
launcher (``pipelines.flink_engine``, ``python -m pipelines.run --engine flink``) submits.

Runs only in the PyFlink venv: imports ``core``, ``schemas``, ``flink_job`` and ``pyflink``,
never Beam, ``transforms``, ``pipelines``, ``kafka_client`` or ``nfc_gateway``
(``tests/test_architecture.py`` holds it to that).
"""
