group "default" {
  targets = ["api-v1", "api-v2", "web"]
}

target "api-v1" {
  context = "api"
  args = {
    API = "1"
  }
}

target "api-v2" {
  context = "api"
  args = {
    API = "2"
  }
}

target "web" {
  context = "web"
}
