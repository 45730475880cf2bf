# Knative Serving, installed and upgraded by the Knative Operator. The KnativeServing resource
# comes from a small local chart (charts/knative-serving) rather than kubernetes_manifest,
# because kubernetes_manifest needs the operator's CRD to exist already at plan time.

resource "helm_release" "knative_operator" {
  name       = "knative-operator"
  repository = "https://knative.github.io/operator"
  chart      = "knative-operator"
  version    = var.versions.knative_operator
  namespace  = kubernetes_namespace_v1.this["knative-operator"].metadata[0].name
  wait       = true

  depends_on = [helm_release.istiod]
}

resource "helm_release" "knative_serving" {
  name      = "knative-serving"
  chart     = "${path.module}/charts/knative-serving"
  namespace = kubernetes_namespace_v1.this["knative-serving"].metadata[0].name

  values = [yamlencode({
    version = var.versions.knative_serving
  })]

  depends_on = [helm_release.knative_operator, helm_release.istio_ingressgateway]
}
