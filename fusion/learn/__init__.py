"""Learning: training, evaluation, metrics and the non-learned radar baseline.

`data` names the data sets (Astyx split by runs, recordings, simulated drives) that `train` and
`evaluate` share; `train` is the training loop (validation each epoch, best checkpoint, early
stopping, resume); `evaluate` runs a model over encoded frames and scores it (ablation per
mode, the health score's AUROC per injected fault); `metrics` is nuScenes-style centre-distance
AP; `baselines` is the DBSCAN radar baseline and the evaluation protocol's filters; `cli` holds
``fusion train`` and ``fusion eval``.
"""
