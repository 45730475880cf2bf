variable "cluster_name" {
  description = "Name of the EKS cluster and prefix of its AWS resources."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes minor version, e.g. 1.32."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR block of the cluster's VPC; split into three private and three public subnets."
  type        = string
}

variable "node_instance_types" {
  description = "EC2 instance types of the managed node group."
  type        = list(string)
}

variable "node_count" {
  description = "Managed node group size: min, desired and max."
  type = object({
    min     = number
    desired = number
    max     = number
  })
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed on the public API endpoint; empty keeps the endpoint private."
  type        = list(string)
}

variable "artifact_bucket_name" {
  description = "S3 bucket name for MLflow artifacts; empty derives one from the cluster name and account id."
  type        = string
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
}
