variable "cluster_type" {
  description = "Where the platform runs: \"kind\" (a local cluster in Docker, for development and demos) or \"eks\" (a managed AWS cluster)."
  type        = string
  default     = "kind"

  validation {
    condition     = contains(["kind", "eks"], var.cluster_type)
    error_message = "cluster_type must be \"kind\" or \"eks\"."
  }
}

variable "cluster_name" {
  description = "Name of the Kubernetes cluster (and prefix of the cloud resources created for it)."
  type        = string
  default     = "recsys"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the cluster (EKS control plane; kind node image line)."
  type        = string
  default     = "1.32"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as 1.32 (1.28 or newer: KServe and Knative need it)."
  }
}

variable "kind_node_image" {
  description = "kindest/node image for the kind cluster; must match kubernetes_version (see the kind release notes for digests)."
  type        = string
  default     = "kindest/node:v1.32.2"
}

variable "kind_worker_count" {
  description = "Worker nodes of the kind cluster besides the control plane."
  type        = number
  default     = 1

  validation {
    condition     = var.kind_worker_count >= 0 && var.kind_worker_count <= 5
    error_message = "kind_worker_count must be between 0 and 5."
  }
}

variable "aws_region" {
  description = "AWS region of the EKS cluster and the artifact bucket (cluster_type = \"eks\")."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like eu-west-1."
  }
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC created for the EKS cluster."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR block."
  }
}

variable "node_instance_types" {
  description = "EC2 instance types of the EKS managed node group (the predictor and the pipeline steps are CPU-bound)."
  type        = list(string)
  default     = ["m6i.xlarge"]

  validation {
    condition     = length(var.node_instance_types) > 0
    error_message = "node_instance_types needs at least one instance type."
  }
}

variable "node_count" {
  description = "Size of the EKS managed node group: min, desired and max number of nodes."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = {
    min     = 2
    desired = 3
    max     = 6
  }

  validation {
    condition     = var.node_count.min >= 1 && var.node_count.min <= var.node_count.desired && var.node_count.desired <= var.node_count.max
    error_message = "node_count must satisfy 1 <= min <= desired <= max."
  }
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the EKS API endpoint from the internet. Empty: the endpoint is private only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.cluster_endpoint_public_access_cidrs : can(cidrhost(cidr, 0)) && cidr != "0.0.0.0/0"])
    error_message = "Each entry must be a valid CIDR block, and 0.0.0.0/0 is not allowed: list your own networks."
  }
}

variable "versions" {
  description = "Helm chart (or manifest) versions of the platform components; override one key to upgrade one component."
  type = object({
    cert_manager             = optional(string, "v1.16.2")
    istio                    = optional(string, "1.24.2")
    knative_operator         = optional(string, "v1.16.0")
    knative_serving          = optional(string, "1.16.0")
    kserve                   = optional(string, "v0.16.0")
    kubeflow_pipelines       = optional(string, "2.14.3")
    mlflow                   = optional(string, "1.12.0")
    postgresql               = optional(string, "16.2.5")
    minio                    = optional(string, "5.4.0")
    kube_prometheus_stack    = optional(string, "65.1.1")
    dask_kubernetes_operator = optional(string, "2026.3.0")
  })
  default = {}
}

variable "mlflow_artifact_bucket_name" {
  description = "Name of the S3 bucket for MLflow artifacts on EKS (globally unique). Empty: derived from cluster_name and the account id."
  type        = string
  default     = ""

  validation {
    condition     = var.mlflow_artifact_bucket_name == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.mlflow_artifact_bucket_name))
    error_message = "mlflow_artifact_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, dashes)."
  }
}

variable "storage_sizes" {
  description = "Persistent volume sizes of the stateful platform parts."
  type = object({
    mlflow_postgres = optional(string, "10Gi")
    minio           = optional(string, "20Gi")
    prometheus      = optional(string, "50Gi")
  })
  default = {}
}

variable "grafana_admin_password" {
  description = "Grafana admin password. Empty (the default): a random one is generated and exposed as a sensitive output."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tags" {
  description = "Tags added to every AWS resource (cost allocation, ownership)."
  type        = map(string)
  default = {
    project = "recsys-mlops"
  }
}
