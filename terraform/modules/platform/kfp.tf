# Kubeflow Pipelines standalone, from the project's own kustomize manifests (there is no
# official Helm chart). The kustomization provider builds them like `kubectl apply -k` would;
# the cluster-scoped part (CRDs, namespace `kubeflow`) goes first. Building a remote kustomize
# target needs git on the machine running terraform.

locals {
  kfp_manifests = "github.com/kubeflow/pipelines/manifests/kustomize"
}

data "kustomization_build" "kfp_cluster_scoped" {
  path = "${local.kfp_manifests}/cluster-scoped-resources?ref=${var.versions.kubeflow_pipelines}"
}

resource "kustomization_resource" "kfp_cluster_scoped" {
  for_each = data.kustomization_build.kfp_cluster_scoped.ids
  manifest = data.kustomization_build.kfp_cluster_scoped.manifests[each.value]
}

data "kustomization_build" "kfp" {
  # platform-agnostic: MinIO and MySQL inside the cluster, no cloud-specific storage.
  path = "${local.kfp_manifests}/env/platform-agnostic?ref=${var.versions.kubeflow_pipelines}"
}

# ids_prio splits the objects into what must exist first (namespaces, CRDs), then the rest,
# then webhooks: the order kubectl would need several applies for.
resource "kustomization_resource" "kfp_p0" {
  for_each = data.kustomization_build.kfp.ids_prio[0]
  manifest = data.kustomization_build.kfp.manifests[each.value]

  depends_on = [kustomization_resource.kfp_cluster_scoped]
}

resource "kustomization_resource" "kfp_p1" {
  for_each = data.kustomization_build.kfp.ids_prio[1]
  manifest = data.kustomization_build.kfp.manifests[each.value]
  wait     = true

  depends_on = [kustomization_resource.kfp_p0]
}

resource "kustomization_resource" "kfp_p2" {
  for_each = data.kustomization_build.kfp.ids_prio[2]
  manifest = data.kustomization_build.kfp.manifests[each.value]

  depends_on = [kustomization_resource.kfp_p1]
}
