"""Tuning: the hyperparameter search of `recsys tune` (Optuna, every trial an MLflow run).

- `space`: the search space read from YAML (`default_space.yaml`: the generators and the
  ranker), each entry a dotted config key and its range;
- `tune`: the study (TPE with a fixed seed, a step-by-step pruner on the generators' NDCG and the ranker's rounds), its
  validation split carved from the training split only, the best config as YAML, and the
  comparison of each generator and the two-stage model, tuned and untuned.
"""
