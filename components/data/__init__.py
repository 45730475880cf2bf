"""Data: where interactions and items come from and the checks they pass before training.

- `ingest`: load a dataset (built-in MovieLens, files, remote sources, stored feedback) into
  validated interactions and items, with the fingerprint that names the data;
- `sources/`: remote sources by URL (S3, SQL, DVC) and their lineage;
- `validate`: the data contract (one clear error naming file, column and rows);
- `split`: held-out interactions (temporal, stratified) and the ranker's validation folds;
- `synthetic`: synthetic interactions of any size, with the preferences they came from.
"""
