variable "TAG" {
  default = "latest"
}

target "default" {
  tags = ["acme/site:${TAG}"]
  output = ["type=cacheonly"]
}
