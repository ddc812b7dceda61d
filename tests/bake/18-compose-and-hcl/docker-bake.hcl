target "api" {
  args = {
    PROFILE = "release"
  }
  platforms = ["linux/amd64", "linux/arm64"]
}
