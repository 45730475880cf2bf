"""Evaluation: how good a model is offline, and whether it beats the champion.

- `evaluate`: the ranking metrics (`ranking_metrics`: NDCG, precision, recall, MAP, MRR, hit
  rate, coverage, novelty, diversity) and the champion gate (`compare_to_champion`);
- `offline_eval`: the two-stage model, each generator alone and the champion on the same
  held-out users;
- `report`: the evaluation as a console table and a self-contained HTML page.

It sits below `models`: the ranker chooses its tree count by the same NDCG (`ranking_metrics`),
and offline evaluation takes a trained model as an argument (typed only), never builds one.
"""
