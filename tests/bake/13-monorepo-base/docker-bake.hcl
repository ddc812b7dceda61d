variable "REGISTRY" {
  default = "registry.acme.internal"
}

variable "GIT_SHA" {
  default = "dev"
}

target "_base" {
  dockerfile = "../../build/service.Dockerfile"
  platforms = ["linux/amd64", "linux/arm64"]
  args = {
    RUST_VERSION = "1.80"
  }
  labels = {
    "org.opencontainers.image.revision" = GIT_SHA
    "org.opencontainers.image.vendor" = "ACME"
  }
  cache-from = ["type=registry,ref=${REGISTRY}/cache:base"]
}

group "default" {
  targets = ["billing", "search", "gateway"]
}

target "billing" {
  inherits = ["_base"]
  context = "services/billing"
  tags = ["${REGISTRY}/billing:${GIT_SHA}"]
  cache-from = ["type=registry,ref=${REGISTRY}/cache:billing"]
}

target "search" {
  inherits = ["_base"]
  context = "services/search"
  tags = ["${REGISTRY}/search:${GIT_SHA}"]
  args = {
    FEATURES = "simd"
  }
}

target "gateway" {
  inherits = ["_base"]
  context = "services/gateway"
  tags = ["${REGISTRY}/gateway:${GIT_SHA}"]
  platforms = ["linux/amd64"]
  labels = {
    "org.opencontainers.image.vendor" = "ACME Edge"
  }
}
