# kube-prometheus-stack: Prometheus (with the operator that reads the recsys PodMonitor and
# PrometheusRule), Alertmanager and Grafana (whose sidecar loads dashboards from ConfigMaps
# labelled grafana_dashboard=1 in any namespace, e.g. the recsys dashboard).

resource "random_password" "grafana_admin" {
  length  = 24
  special = false
}

locals {
  grafana_password = var.grafana_admin_password != "" ? var.grafana_admin_password : random_password.grafana_admin.result
}

resource "kubernetes_secret_v1" "grafana_admin" {
  metadata {
    name      = "grafana-admin"
    namespace = kubernetes_namespace_v1.this["monitoring"].metadata[0].name
  }
  data = {
    admin-user     = "admin"
    admin-password = local.grafana_password
  }
}

resource "helm_release" "kube_prometheus_stack" {
  # The release name is the `release` label the recsys PodMonitor/PrometheusRule carry.
  name       = "kube-prometheus-stack"
  repository = "https://prometheus-community.github.io/helm-charts"
  chart      = "kube-prometheus-stack"
  version    = var.versions.kube_prometheus_stack
  namespace  = kubernetes_namespace_v1.this["monitoring"].metadata[0].name
  wait       = true
  timeout    = 900

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        # Select monitors and rules from every namespace, not only this release's.
        podMonitorSelectorNilUsesHelmValues     = false
        serviceMonitorSelectorNilUsesHelmValues = false
        ruleSelectorNilUsesHelmValues           = false
        retention                               = "15d"
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              accessModes = ["ReadWriteOnce"]
              resources   = { requests = { storage = var.storage_sizes.prometheus } }
            }
          }
        }
      }
    }
    grafana = {
      admin = {
        existingSecret = kubernetes_secret_v1.grafana_admin.metadata[0].name
        userKey        = "admin-user"
        passwordKey    = "admin-password"
      }
      sidecar = {
        dashboards = {
          enabled         = true
          label           = "grafana_dashboard"
          labelValue      = "1"
          searchNamespace = "ALL"
        }
      }
    }
  })]
}
