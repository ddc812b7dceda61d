variable "RELEASE" {
  default = false
}

variable "JOBS" {
  default = 1
}

target "default" {
  args = {
    JOBS = JOBS + 1
    CHANNEL = RELEASE ? "stable" : "nightly"
  }
  output = RELEASE ? ["type=registry"] : ["type=cacheonly"]
  tags = ["example/tool:${RELEASE ? "release" : "dev"}"]
}
