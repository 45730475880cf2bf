terraform {
  # 1.6: `terraform test`, and validation blocks that reference other variables.
  required_version = ">= 1.6.0, < 2.0.0"

  # Every provider pinned to a minor line: a new major version must be a deliberate change.
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    kind = {
      source  = "tehcyx/kind"
      version = "~> 0.8"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.36"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
    kustomization = {
      source  = "kbst/kustomization"
      version = "~> 0.9"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}
