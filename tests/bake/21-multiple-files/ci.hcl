variable "CHANNEL" {
  default = "stable"
}

target "cli" {
  args = {
    GOFLAGS = "-trimpath -mod=vendor"
  }
  platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7"]
}
