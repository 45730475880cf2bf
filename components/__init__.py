"""The ML logic as plain, typed Python, in packages by lifecycle stage (docs/architecture.md).

Stages, each importing only the ones below it (the import contract in pyproject.toml checks
it): `monitoring` | `experiments`, `release`, `models`, `evaluation` | `data`, `feedback`, then
`config` and `errors`. `kfp_components` and the two step-body modules, `steps` (training) and
`monitor_step` (monitoring), are the one seam between KFP and that logic.
"""
