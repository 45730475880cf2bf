# Namespaces, cert-manager (KServe's webhooks need certificates) and Istio (the ingress and
# traffic-splitting layer under Knative, which does KServe's canary split).

locals {
  namespaces = ["cert-manager", "istio-system", "knative-operator", "knative-serving", "kserve", "mlflow", "monitoring", "dask-operator"]
}

resource "kubernetes_namespace_v1" "this" {
  for_each = toset(local.namespaces)

  metadata {
    name = each.key
  }

  lifecycle {
    # Istio and other controllers add their own labels; do not fight them.
    ignore_changes = [metadata[0].labels, metadata[0].annotations]
  }
}

resource "helm_release" "cert_manager" {
  name       = "cert-manager"
  repository = "https://charts.jetstack.io"
  chart      = "cert-manager"
  version    = var.versions.cert_manager
  namespace  = kubernetes_namespace_v1.this["cert-manager"].metadata[0].name
  wait       = true

  set {
    name  = "crds.enabled"
    value = "true"
  }
}

# --- Istio: CRDs and base, control plane, ingress gateway ------------------------------------------

resource "helm_release" "istio_base" {
  name       = "istio-base"
  repository = "https://istio-release.storage.googleapis.com/charts"
  chart      = "base"
  version    = var.versions.istio
  namespace  = kubernetes_namespace_v1.this["istio-system"].metadata[0].name
}

resource "helm_release" "istiod" {
  name       = "istiod"
  repository = "https://istio-release.storage.googleapis.com/charts"
  chart      = "istiod"
  version    = var.versions.istio
  namespace  = kubernetes_namespace_v1.this["istio-system"].metadata[0].name
  wait       = true

  depends_on = [helm_release.istio_base]
}

resource "helm_release" "istio_ingressgateway" {
  # This name gives the gateway pods the label istio=ingressgateway, which Knative's
  # net-istio Gateway (knative-ingress-gateway) selects.
  name       = "istio-ingressgateway"
  repository = "https://istio-release.storage.googleapis.com/charts"
  chart      = "gateway"
  version    = var.versions.istio
  namespace  = kubernetes_namespace_v1.this["istio-system"].metadata[0].name
  wait       = var.ingress_service_type != "LoadBalancer"

  values = [yamlencode({
    service = {
      type = var.ingress_service_type
      # On kind the HTTP port is pinned to the node port the kind cluster maps to the host.
      ports = [
        { name = "status-port", port = 15021, targetPort = 15021, protocol = "TCP" },
        merge(
          { name = "http2", port = 80, targetPort = 80, protocol = "TCP" },
          var.ingress_service_type == "NodePort" ? { nodePort = 31080 } : {},
        ),
        { name = "https", port = 443, targetPort = 443, protocol = "TCP" },
      ]
    }
  })]

  depends_on = [helm_release.istiod]
}
