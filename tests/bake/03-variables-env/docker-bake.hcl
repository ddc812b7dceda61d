variable "TAG" {
  default = "latest"
}

variable "REGISTRY" {
  default = "docker.io/username"
}

group "default" {
  targets = ["webapp"]
}

target "webapp" {
  tags = ["${REGISTRY}/webapp:${TAG}"]
}
