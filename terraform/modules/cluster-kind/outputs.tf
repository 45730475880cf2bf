output "connection" {
  description = "How the Kubernetes/Helm providers reach the cluster (client certificate auth)."
  value = {
    host                   = kind_cluster.this.endpoint
    cluster_ca_certificate = kind_cluster.this.cluster_ca_certificate
    client_certificate     = kind_cluster.this.client_certificate
    client_key             = kind_cluster.this.client_key
    token                  = null
  }
  sensitive = true
}

output "kubeconfig_path" {
  description = "Path of the kubeconfig file kind wrote for this cluster."
  value       = kind_cluster.this.kubeconfig_path
}
