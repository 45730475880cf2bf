# One cluster (EKS or kind, chosen by var.cluster_type) and the platform the recommender runs
# on: cert-manager, Istio, Knative Serving, KServe, Kubeflow Pipelines, MLflow (+ PostgreSQL and
# an artifact store) and kube-prometheus-stack. The recommender itself is deployed from
# ../manifests with kubectl/kustomize, not from here: its rollouts happen many times a day,
# the platform changes rarely.

provider "aws" {
  region = var.aws_region

  # Never used for kind, but the provider is always configured; these keep it from calling AWS
  # when no cluster there is wanted.
  skip_credentials_validation = var.cluster_type != "eks"
  skip_requesting_account_id  = var.cluster_type != "eks"
  skip_metadata_api_check     = var.cluster_type != "eks"

  default_tags {
    tags = var.tags
  }
}

module "cluster_eks" {
  source = "./modules/cluster-eks"
  count  = var.cluster_type == "eks" ? 1 : 0

  cluster_name                         = var.cluster_name
  kubernetes_version                   = var.kubernetes_version
  vpc_cidr                             = var.vpc_cidr
  node_instance_types                  = var.node_instance_types
  node_count                           = var.node_count
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  artifact_bucket_name                 = var.mlflow_artifact_bucket_name
  tags                                 = var.tags
}

module "cluster_kind" {
  source = "./modules/cluster-kind"
  count  = var.cluster_type == "kind" ? 1 : 0

  cluster_name = var.cluster_name
  node_image   = var.kind_node_image
  worker_count = var.kind_worker_count
}

locals {
  # Both cluster modules export the same `connection` object; unused credentials are null.
  connection = var.cluster_type == "eks" ? one(module.cluster_eks[*].connection) : one(module.cluster_kind[*].connection)

  # A kubeconfig for the kustomization provider (it takes no discrete credentials).
  kubeconfig = yamlencode({
    apiVersion      = "v1"
    kind            = "Config"
    current-context = var.cluster_name
    clusters = [{
      name = var.cluster_name
      cluster = {
        server                     = local.connection.host
        certificate-authority-data = base64encode(local.connection.cluster_ca_certificate)
      }
    }]
    users = [{
      name = var.cluster_name
      user = local.connection.token != null ? { token = local.connection.token } : {
        client-certificate-data = base64encode(local.connection.client_certificate)
        client-key-data         = base64encode(local.connection.client_key)
      }
    }]
    contexts = [{
      name    = var.cluster_name
      context = { cluster = var.cluster_name, user = var.cluster_name }
    }]
  })
}

provider "kubernetes" {
  host                   = local.connection.host
  cluster_ca_certificate = local.connection.cluster_ca_certificate
  client_certificate     = local.connection.client_certificate
  client_key             = local.connection.client_key
  token                  = local.connection.token
}

provider "helm" {
  kubernetes {
    host                   = local.connection.host
    cluster_ca_certificate = local.connection.cluster_ca_certificate
    client_certificate     = local.connection.client_certificate
    client_key             = local.connection.client_key
    token                  = local.connection.token
  }
}

provider "kustomization" {
  kubeconfig_raw = local.kubeconfig
}

module "platform" {
  source = "./modules/platform"

  cluster_type           = var.cluster_type
  versions               = var.versions
  storage_sizes          = var.storage_sizes
  grafana_admin_password = var.grafana_admin_password

  # Artifact store: the S3 bucket and the IAM role MLflow assumes (IRSA) on EKS; MinIO on kind.
  artifact_bucket      = var.cluster_type == "eks" ? one(module.cluster_eks[*].artifact_bucket) : "mlflow"
  mlflow_iam_role_arn  = var.cluster_type == "eks" ? one(module.cluster_eks[*].mlflow_iam_role_arn) : ""
  aws_region           = var.aws_region
  ingress_service_type = var.cluster_type == "eks" ? "LoadBalancer" : "NodePort"
}
