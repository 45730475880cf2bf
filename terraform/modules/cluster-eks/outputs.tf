output "connection" {
  description = "How the Kubernetes/Helm providers reach the cluster (short-lived token auth)."
  value = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)
    token                  = data.aws_eks_cluster_auth.this.token
    client_certificate     = null
    client_key             = null
  }
  sensitive = true
}

output "artifact_bucket" {
  description = "Name of the S3 bucket for MLflow artifacts."
  value       = aws_s3_bucket.artifacts.bucket
}

output "mlflow_iam_role_arn" {
  description = "IAM role (IRSA) with access to the artifact bucket, for the MLflow and predictor ServiceAccounts."
  value       = module.mlflow_irsa.iam_role_arn
}
