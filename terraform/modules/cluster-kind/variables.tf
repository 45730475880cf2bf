variable "cluster_name" {
  description = "Name of the kind cluster."
  type        = string
}

variable "node_image" {
  description = "kindest/node image, which fixes the Kubernetes version."
  type        = string
}

variable "worker_count" {
  description = "Number of worker nodes besides the control plane."
  type        = number
}

variable "ingress_http_port" {
  description = "Port on the host that reaches the Istio ingress gateway's NodePort (31080) inside kind."
  type        = number
  default     = 8080

  validation {
    condition     = var.ingress_http_port > 0 && var.ingress_http_port < 65536
    error_message = "ingress_http_port must be a TCP port number."
  }
}
