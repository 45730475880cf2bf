terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    kind = {
      source  = "tehcyx/kind"
      version = "~> 0.8"
    }
  }
}
