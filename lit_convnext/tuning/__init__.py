"""``lit-convnext tune``: a hyper-parameter search over ordinary ``fit`` runs, on an Optuna study.

``space`` (the search space, centred on the run's own recipe), ``search`` (the study, its storage and pruner, and one
``fit`` per trial through the app's own LightningCLI) and ``outputs`` (``trials.csv``, ``best.yaml``, the tuning
report). Optuna is imported only here, by the ``tune`` command (the ``tune`` extra).
"""
