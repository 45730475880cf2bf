output "istio_ingress_gateway" {
  description = "Namespace/name of the Istio ingress gateway Service."
  value       = "${helm_release.istio_ingressgateway.namespace}/${helm_release.istio_ingressgateway.name}"
}

output "mlflow_tracking_uri" {
  description = "In-cluster URL of the MLflow tracking server."
  value       = "http://${helm_release.mlflow.name}.${helm_release.mlflow.namespace}.svc.cluster.local:5000"
}

output "kubeflow_pipelines_endpoint" {
  description = "In-cluster URL of the Kubeflow Pipelines API server."
  value       = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
}

output "grafana_endpoint" {
  description = "In-cluster URL of Grafana."
  value       = "http://kube-prometheus-stack-grafana.${helm_release.kube_prometheus_stack.namespace}.svc.cluster.local"
}

output "prometheus_endpoint" {
  description = "In-cluster URL of Prometheus."
  value       = "http://kube-prometheus-stack-prometheus.${helm_release.kube_prometheus_stack.namespace}.svc.cluster.local:9090"
}

output "grafana_admin_password" {
  description = "Grafana admin password."
  value       = local.grafana_password
  sensitive   = true
}
