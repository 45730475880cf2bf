"""The `recsys` command line, one module per command group; each a thin layer over functions
that live with their stage in `components` (or in `serving`).

- `main`: the entry point (`recsys = pipelines.cli.main:main`), `run`, `compile`, `fit`,
  `recommend`, and the parser that gathers the groups below;
- `serve`, `events`, `console`, `monitor`; `cluster`: `submit`, `schedule`, `rollout`;
- `rollout_analyze`: `recsys rollout analyze`; `simulate`: `recsys simulate`.
"""
