group "default" {
  targets = ["app", "tools"]
}

target "app" {
  tags = ["acme/app:1"]
  args = {
    MODE = "dev"
  }
  platforms = ["linux/amd64"]
}

target "tools" {
  tags = ["acme/tools:1"]
}
