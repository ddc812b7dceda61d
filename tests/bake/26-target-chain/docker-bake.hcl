group "default" {
  targets = ["app"]
}

target "base" {
  context = "base"
  platforms = ["linux/amd64", "linux/arm64"]
}

target "toolchain" {
  context = "toolchain"
  contexts = {
    base = "target:base"
  }
}

target "app" {
  contexts = {
    toolchain = "target:toolchain"
    assets = "./assets"
  }
  tags = ["acme/app:1"]
}
