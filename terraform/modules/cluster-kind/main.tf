# A local Kubernetes cluster in Docker containers: the whole platform on a laptop or a CI
# runner, for trying the pipeline and rollouts without a cloud account.

resource "kind_cluster" "this" {
  name           = var.cluster_name
  node_image     = var.node_image
  wait_for_ready = true

  kind_config {
    kind        = "Cluster"
    api_version = "kind.x-k8s.io/v1alpha4"

    node {
      role = "control-plane"

      # The Istio ingress gateway is a NodePort service on kind (no cloud load balancer):
      # map its HTTP node port to the host so `curl localhost:8080` reaches KServe.
      extra_port_mappings {
        container_port = 31080
        host_port      = var.ingress_http_port
        listen_address = "127.0.0.1"
      }
    }

    dynamic "node" {
      for_each = range(var.worker_count)
      content {
        role = "worker"
      }
    }
  }
}
