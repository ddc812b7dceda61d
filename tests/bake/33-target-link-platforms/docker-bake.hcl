# buildx refuses a multi-platform link whose platforms differ from the target's.
target "base" {
  platforms = ["linux/amd64", "linux/arm64"]
}

target "app" {
  contexts = { base = "target:base" }
  platforms = ["linux/amd64", "linux/arm/v7"]
}
