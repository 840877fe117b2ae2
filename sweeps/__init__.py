"""Hyperparameter sweeps of the run pipeline: Ray Tune + Optuna, logged to MLflow (docs/sweeps.md).

* :mod:`sweeps.space`: the search space (rank, lamb, lame, lr, epochs) and its validation;
* :mod:`sweeps.config`: the ``sweep:`` section next to a run config;
* :mod:`sweeps.trial`: one trial, reported to Ray Tune after every task, on validation only;
* :mod:`sweeps.tuner`: OptunaSearch, ASHA, the ``Tuner`` and its restore;
* :mod:`sweeps.tracking`: the driver-side records and MLflow parent/child runs;
* :mod:`sweeps.results`, :mod:`sweeps.report`, :mod:`sweeps.plots`: reading results back;
* :mod:`sweeps.cli`: ``inflora sweep``.
"""
