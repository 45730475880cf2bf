"""Release: from a trained model to one that serves.

- `registry`: log to MLflow, the champion-challenger gate, aliases, downloads;
- `deploy`: the local target (`deployment.json`, what `recsys serve` serves);
- `kube_deploy`: the cluster target (the KServe InferenceService, canary patches);
- `dask_cluster`: a Dask cluster for one pipeline run, through the dask-kubernetes operator.
"""
