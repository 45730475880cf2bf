# The Dask Kubernetes operator: the training pipeline's distributed fit (`dask_workers` > 0)
# creates a DaskCluster resource for its train step and deletes it when the step ends; the
# operator turns that resource into a scheduler and worker pods (components/release/dask_cluster.py).

resource "helm_release" "dask_operator" {
  name       = "dask-kubernetes-operator"
  repository = "https://helm.dask.org"
  chart      = "dask-kubernetes-operator"
  version    = var.versions.dask_kubernetes_operator
  namespace  = kubernetes_namespace_v1.this["dask-operator"].metadata[0].name
  wait       = true
}
