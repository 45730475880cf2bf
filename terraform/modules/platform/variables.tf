variable "cluster_type" {
  description = "kind or eks: picks the artifact store (MinIO or S3) and how the ingress gateway is exposed."
  type        = string

  validation {
    condition     = contains(["kind", "eks"], var.cluster_type)
    error_message = "cluster_type must be \"kind\" or \"eks\"."
  }
}

variable "versions" {
  description = "Chart/manifest versions of the components (see the root variable of the same name)."
  type = object({
    cert_manager             = string
    istio                    = string
    knative_operator         = string
    knative_serving          = string
    kserve                   = string
    kubeflow_pipelines       = string
    mlflow                   = string
    postgresql               = string
    minio                    = string
    kube_prometheus_stack    = string
    dask_kubernetes_operator = string
  })
}

variable "storage_sizes" {
  description = "Persistent volume sizes: mlflow_postgres, minio, prometheus."
  type = object({
    mlflow_postgres = string
    minio           = string
    prometheus      = string
  })
}

variable "artifact_bucket" {
  description = "Bucket MLflow writes artifacts to (S3 on EKS, created in MinIO on kind)."
  type        = string
}

variable "mlflow_iam_role_arn" {
  description = "IRSA role MLflow's ServiceAccount assumes for the S3 bucket (EKS only; empty on kind)."
  type        = string
  default     = ""
}

variable "aws_region" {
  description = "Region of the S3 artifact bucket (EKS only)."
  type        = string
}

variable "ingress_service_type" {
  description = "Service type of the Istio ingress gateway: LoadBalancer on a cloud, NodePort on kind."
  type        = string

  validation {
    condition     = contains(["LoadBalancer", "NodePort", "ClusterIP"], var.ingress_service_type)
    error_message = "ingress_service_type must be LoadBalancer, NodePort or ClusterIP."
  }
}

variable "grafana_admin_password" {
  description = "Grafana admin password; empty generates one."
  type        = string
  default     = ""
  sensitive   = true
}
