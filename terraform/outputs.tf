output "cluster_type" {
  description = "Which cluster module was used (kind or eks)."
  value       = var.cluster_type
}

output "cluster_endpoint" {
  description = "URL of the Kubernetes API server."
  value       = nonsensitive(local.connection.host)
}

output "kubeconfig_command" {
  description = "How to point kubectl at the cluster."
  value       = var.cluster_type == "eks" ? "aws eks update-kubeconfig --region ${var.aws_region} --name ${var.cluster_name}" : "kind export kubeconfig --name ${var.cluster_name}"
}

output "istio_ingress_gateway" {
  description = "Namespace/Service of the Istio ingress gateway that fronts KServe (and Knative) traffic."
  value       = module.platform.istio_ingress_gateway
}

output "mlflow_tracking_uri" {
  description = "In-cluster MLflow tracking URI (set MLFLOW_TRACKING_URI to it in pipeline steps)."
  value       = module.platform.mlflow_tracking_uri
}

output "kubeflow_pipelines_endpoint" {
  description = "In-cluster Kubeflow Pipelines API endpoint (`recsys submit --host`); port-forward svc/ml-pipeline-ui -n kubeflow for the UI."
  value       = module.platform.kubeflow_pipelines_endpoint
}

output "grafana_endpoint" {
  description = "In-cluster Grafana URL (kubectl port-forward -n monitoring svc/kube-prometheus-stack-grafana 3000:80)."
  value       = module.platform.grafana_endpoint
}

output "prometheus_endpoint" {
  description = "In-cluster Prometheus URL."
  value       = module.platform.prometheus_endpoint
}

output "mlflow_artifact_bucket" {
  description = "Bucket holding MLflow artifacts (S3 on EKS, MinIO on kind)."
  value       = var.cluster_type == "eks" ? one(module.cluster_eks[*].artifact_bucket) : "mlflow"
}

output "grafana_admin_password" {
  description = "Grafana admin password (generated unless given)."
  value       = module.platform.grafana_admin_password
  sensitive   = true
}
