"""The application built on the library: the ``rmda-jax`` command and its parts.

* :mod:`~rmda_jax.app.cli`: the command line (``train``, ``compact``,
  ``generate``); :mod:`~rmda_jax.app.commands`: ``compact`` and ``generate``;
* :mod:`~rmda_jax.app.train`: the training job's public face, split into
  :mod:`~rmda_jax.app.config` (options and checks),
  :mod:`~rmda_jax.app.builders` (model, regularizer, optimizer, mesh),
  :mod:`~rmda_jax.app.loop` (the training loop),
  :mod:`~rmda_jax.app.reporting` (metrics and printing) and
  :mod:`~rmda_jax.app.runs` (run directories, checkpoints, resume) and
  :mod:`~rmda_jax.app.rundir` (one writer per run directory, I/O faults in
  one line), :mod:`~rmda_jax.app.signals` (SIGINT / SIGTERM, acted on by
  every process together) and :mod:`~rmda_jax.app.multihost` (joining a
  multi-process run, agreeing across its processes);
* :mod:`~rmda_jax.app.steps`: the jitted training step shared by the
  command, :mod:`~rmda_jax.app.identification` and the notebooks;
* :mod:`~rmda_jax.app.models` (the model zoo), :mod:`~rmda_jax.app.data`
  (datasets), :mod:`~rmda_jax.app.plots`, :mod:`~rmda_jax.app.checkpoint`
  (atomic, checksummed orbax steps), :mod:`~rmda_jax.app.identification`
  (structure identification on a convex problem).

It imports the library (:mod:`rmda_jax`); the library never imports it.
"""
