variable "CHANNEL" {
  default = "edge"
}

target "cli" {
  context = "cmd/cli"
  tags = ["acme/cli:${CHANNEL}"]
  args = {
    CGO_ENABLED = "0"
    GOFLAGS = "-trimpath"
  }
}
