# An EKS cluster in its own VPC (community modules, pinned), the EBS CSI driver for the
# platform's volumes, and the S3 bucket MLflow stores artifacts in, reachable from the MLflow and
# predictor ServiceAccounts through IRSA (no static AWS keys anywhere).

data "aws_availability_zones" "available" {
  state = "available"
}

data "aws_caller_identity" "current" {}

locals {
  azs    = slice(data.aws_availability_zones.available.names, 0, 3)
  bucket = var.artifact_bucket_name != "" ? var.artifact_bucket_name : "${var.cluster_name}-mlflow-${data.aws_caller_identity.current.account_id}"
}

module "vpc" {
  #checkov:skip=CKV_TF_1:Registry modules are pinned by version constraint and verified by the registry; a git commit hash would bypass the registry
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 5.16"

  name = var.cluster_name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i in range(3) : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i in range(3) : cidrsubnet(var.vpc_cidr, 8, 48 + i)]

  # Nodes live in private subnets and reach registries through one NAT gateway (a cost/HA
  # trade-off: set one per AZ for production traffic).
  enable_nat_gateway = true
  single_nat_gateway = true

  # Tags the AWS load balancer controller / in-tree provider use to place load balancers.
  public_subnet_tags  = { "kubernetes.io/role/elb" = 1 }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = 1 }

  enable_flow_log                      = true
  create_flow_log_cloudwatch_log_group = true
  create_flow_log_cloudwatch_iam_role  = true

  tags = var.tags
}

module "ebs_csi_irsa" {
  #checkov:skip=CKV_TF_1:Registry modules are pinned by version constraint and verified by the registry; a git commit hash would bypass the registry
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "~> 5.48"

  role_name             = "${var.cluster_name}-ebs-csi"
  attach_ebs_csi_policy = true

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:ebs-csi-controller-sa"]
    }
  }

  tags = var.tags
}

module "eks" {
  #checkov:skip=CKV_TF_1:Registry modules are pinned by version constraint and verified by the registry; a git commit hash would bypass the registry
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 20.31"

  cluster_name    = var.cluster_name
  cluster_version = var.kubernetes_version

  # Private endpoint always; the public one only for the CIDRs given.
  cluster_endpoint_private_access      = true
  cluster_endpoint_public_access       = length(var.cluster_endpoint_public_access_cidrs) > 0
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  # Whoever runs terraform administers the cluster (needed to install the platform next).
  enable_cluster_creator_admin_permissions = true

  # Kubernetes Secrets encrypted with a KMS key the module creates; control-plane logs kept.
  cluster_encryption_config = {
    resources = ["secrets"]
  }
  cluster_enabled_log_types = ["api", "audit", "authenticator"]

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni    = {}
    aws-ebs-csi-driver = {
      service_account_role_arn = module.ebs_csi_irsa.iam_role_arn
    }
  }

  eks_managed_node_groups = {
    default = {
      instance_types = var.node_instance_types
      min_size       = var.node_count.min
      desired_size   = var.node_count.desired
      max_size       = var.node_count.max
    }
  }

  tags = var.tags
}

data "aws_eks_cluster_auth" "this" {
  name = module.eks.cluster_name
}

# --- MLflow artifact bucket ------------------------------------------------------------------------

resource "aws_kms_key" "artifacts" {
  description         = "Encrypts the MLflow artifact bucket of ${var.cluster_name}"
  enable_key_rotation = true
  tags                = var.tags
}

resource "aws_kms_key_policy" "artifacts" {
  key_id = aws_kms_key.artifacts.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      # The account administers the key; the IRSA role below gets use rights through IAM.
      Sid       = "AccountAdministers"
      Effect    = "Allow"
      Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket per account; enable it in the account baseline, not per project
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; artifacts are reproducible from the pipeline and versioned
  #checkov:skip=CKV2_AWS_62:No consumer of bucket events exists; MLflow tracks what is written
  bucket = local.bucket
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.artifacts.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "tidy"
    status = "Enabled"
    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    # Old versions of overwritten artifacts are kept for a month (undo window), then dropped.
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

# Read/write on the bucket for MLflow (uploads) and the KServe storage initializer (downloads).
resource "aws_iam_policy" "artifacts" {
  name = "${var.cluster_name}-mlflow-artifacts"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = aws_s3_bucket.artifacts.arn
      },
      {
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = "${aws_s3_bucket.artifacts.arn}/*"
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = aws_kms_key.artifacts.arn
      },
    ]
  })
  tags = var.tags
}

module "mlflow_irsa" {
  #checkov:skip=CKV_TF_1:Registry modules are pinned by version constraint and verified by the registry; a git commit hash would bypass the registry
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "~> 5.48"

  role_name = "${var.cluster_name}-mlflow-artifacts"
  role_policy_arns = {
    artifacts = aws_iam_policy.artifacts.arn
  }

  oidc_providers = {
    main = {
      provider_arn = module.eks.oidc_provider_arn
      # The platform's MLflow, and the recommender's MLflow and predictor (../manifests).
      namespace_service_accounts = [
        "mlflow:mlflow",
        "recsys:recsys-mlflow",
        "recsys:recsys-predictor",
      ]
    }
  }

  tags = var.tags
}
