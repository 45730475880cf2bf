# MLflow (community-charts/mlflow) with PostgreSQL as backend store and an S3 artifact store:
# the real S3 bucket on EKS (through IRSA, no keys), MinIO inside the cluster on kind.
# Every password is generated here and handed over in Kubernetes Secrets; none is in the code.

locals {
  on_kind     = var.cluster_type == "kind"
  mlflow_ns   = kubernetes_namespace_v1.this["mlflow"].metadata[0].name
  minio_url   = "http://minio.${local.mlflow_ns}.svc.cluster.local:9000"
  db_name     = "mlflow"
  db_username = "mlflow"
}

resource "random_password" "mlflow_db" {
  length = 32
  # URL-safe: the password ends up in MLflow's database connection URL.
  special = false
}

resource "random_password" "postgres_admin" {
  length  = 32
  special = false
}

resource "kubernetes_secret_v1" "mlflow_db" {
  metadata {
    name      = "mlflow-db"
    namespace = local.mlflow_ns
  }
  data = {
    username          = local.db_username
    password          = random_password.mlflow_db.result
    postgres-password = random_password.postgres_admin.result
  }
}

resource "helm_release" "mlflow_postgresql" {
  name       = "mlflow-postgresql"
  repository = "oci://registry-1.docker.io/bitnamicharts"
  chart      = "postgresql"
  version    = var.versions.postgresql
  namespace  = local.mlflow_ns
  wait       = true

  values = [yamlencode({
    auth = {
      username       = local.db_username
      database       = local.db_name
      existingSecret = kubernetes_secret_v1.mlflow_db.metadata[0].name
      secretKeys = {
        adminPasswordKey = "postgres-password"
        userPasswordKey  = "password"
      }
    }
    primary = {
      persistence = { size = var.storage_sizes.mlflow_postgres }
      resources = {
        requests = { cpu = "250m", memory = "512Mi" }
        limits   = { cpu = "1", memory = "1Gi" }
      }
    }
  })]
}

# --- artifact store on kind: MinIO --------------------------------------------------------------

resource "random_password" "minio_root" {
  count   = local.on_kind ? 1 : 0
  length  = 32
  special = false
}

resource "kubernetes_secret_v1" "minio" {
  count = local.on_kind ? 1 : 0

  metadata {
    name      = "minio-root"
    namespace = local.mlflow_ns
  }
  data = {
    rootUser     = "mlflow-admin"
    rootPassword = random_password.minio_root[0].result
  }
}

# The same key for MLflow's boto3, in the variable names it reads.
resource "kubernetes_secret_v1" "mlflow_s3" {
  count = local.on_kind ? 1 : 0

  metadata {
    name      = "mlflow-s3"
    namespace = local.mlflow_ns
  }
  data = {
    AWS_ACCESS_KEY_ID     = "mlflow-admin"
    AWS_SECRET_ACCESS_KEY = random_password.minio_root[0].result
  }
}

resource "helm_release" "minio" {
  count = local.on_kind ? 1 : 0

  name       = "minio"
  repository = "https://charts.min.io/"
  chart      = "minio"
  version    = var.versions.minio
  namespace  = local.mlflow_ns
  wait       = true

  values = [yamlencode({
    mode           = "standalone"
    replicas       = 1
    existingSecret = kubernetes_secret_v1.minio[0].metadata[0].name
    buckets        = [{ name = var.artifact_bucket, policy = "none", purge = false }]
    persistence    = { size = var.storage_sizes.minio }
    resources = {
      requests = { cpu = "100m", memory = "512Mi" }
      limits   = { cpu = "1", memory = "1Gi" }
    }
  })]
}

# --- the tracking server -----------------------------------------------------------------------

resource "helm_release" "mlflow" {
  name       = "mlflow"
  repository = "https://community-charts.github.io/helm-charts"
  chart      = "mlflow"
  version    = var.versions.mlflow
  namespace  = local.mlflow_ns
  wait       = true

  values = [yamlencode({
    serviceAccount = {
      create = true
      name   = "mlflow"
      # IRSA on EKS: the pod gets temporary credentials for the artifact bucket.
      annotations = local.on_kind ? {} : { "eks.amazonaws.com/role-arn" = var.mlflow_iam_role_arn }
    }
    backendStore = {
      databaseMigration = true
      postgres = {
        enabled  = true
        host     = "mlflow-postgresql.${local.mlflow_ns}.svc.cluster.local"
        port     = 5432
        database = local.db_name
      }
      existingDatabaseSecret = {
        name        = kubernetes_secret_v1.mlflow_db.metadata[0].name
        usernameKey = "username"
        passwordKey = "password"
      }
    }
    artifactRoot = {
      # Clients upload through the tracking server: pipeline steps need only the MLflow URL.
      proxiedArtifactStorage = true
      s3 = merge(
        { enabled = true, bucket = var.artifact_bucket, path = "artifacts" },
        local.on_kind ? { existingSecret = { name = kubernetes_secret_v1.mlflow_s3[0].metadata[0].name } } : {},
      )
    }
    extraEnvVars = local.on_kind ? {
      MLFLOW_S3_ENDPOINT_URL = local.minio_url
      } : {
      AWS_DEFAULT_REGION = var.aws_region
    }
    resources = {
      requests = { cpu = "250m", memory = "512Mi" }
      limits   = { cpu = "1", memory = "2Gi" }
    }
    podSecurityContext = {
      runAsNonRoot   = true
      runAsUser      = 1001
      fsGroup        = 1001
      seccompProfile = { type = "RuntimeDefault" }
    }
    securityContext = {
      allowPrivilegeEscalation = false
      capabilities             = { drop = ["ALL"] }
    }
  })]

  depends_on = [helm_release.mlflow_postgresql, helm_release.minio]
}
