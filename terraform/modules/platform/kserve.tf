# KServe from its OCI Helm charts: CRDs first (a separate chart so upgrades of the controller
# never delete them), then the controller in Serverless mode (Knative + Istio), which is the mode
# canaryTrafficPercent needs.

resource "helm_release" "kserve_crd" {
  name       = "kserve-crd"
  repository = "oci://ghcr.io/kserve/charts"
  chart      = "kserve-crd"
  version    = var.versions.kserve
  namespace  = kubernetes_namespace_v1.this["kserve"].metadata[0].name
}

resource "helm_release" "kserve" {
  name       = "kserve"
  repository = "oci://ghcr.io/kserve/charts"
  chart      = "kserve"
  version    = var.versions.kserve
  namespace  = kubernetes_namespace_v1.this["kserve"].metadata[0].name
  wait       = true

  values = [yamlencode({
    kserve = {
      controller = {
        deploymentMode = "Serverless"
        gateway = {
          ingressGateway = {
            gateway = "knative-serving/knative-ingress-gateway"
          }
        }
      }
    }
  })]

  depends_on = [helm_release.kserve_crd, helm_release.cert_manager, helm_release.knative_serving]
}
