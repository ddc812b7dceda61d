# Optional settings read with try and can, versions handled as a set, a stable id from uuidv5.
variable "OVERRIDES" {
  default = {}
}

variable "VERSIONS" {
  default = ["1.21", "1.20", "1.22", "1.21"]
}

target "app" {
  args = {
    TAG     = try(OVERRIDES.tag, "latest")
    HAS_TAG = can(OVERRIDES.tag)
    PORT    = try(parseint("80x", 10), 8080)
    OLDEST  = element(setunion(VERSIONS, ["1.19"]), 0)
    SHARED  = join(",", setintersection(VERSIONS, ["1.20", "1.22", "2.0"]))
    ID      = uuidv5("dns", "app.example.com")
  }
  tags = [for v in distinct(VERSIONS) : "acme/app:${try(regex("^1\\.(\\d+)$", v)[0], v)}"]
}
