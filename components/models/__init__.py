"""Models: the two-stage recommender and what builds, stores and scores it.

- candidate generators: `popularity`, `ease`, `als`, `content` (on `base.TrainingData`, with
  `retrieval` for top-N lookups);
- `features`: the ranker's features of (user, candidate) pairs;
- `two_stage`: `TwoStageRecommender`, generators then a LightGBM ranker; `ranker_rounds`: its
  tree count and the ranker-against-generators check; `distributed`: the same fit on Dask;
- `artifact`: `save_model` / `load_model`, the self-describing model directory (no pickles);
- `batch`: `recsys recommend` over a file of users; `titles`: an item found from a typed title.
"""
