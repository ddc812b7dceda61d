variable "TAG" {
  default = "local"
}

target "default" {
  output = ["type=oci,dest=site.tar"]
}
