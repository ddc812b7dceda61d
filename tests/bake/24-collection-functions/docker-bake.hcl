variable "EXTRA_TAGS" {
  default = ["edge", "nightly", "edge"]
}

variable "COMMON_LABELS" {
  default = {
    "org.opencontainers.image.vendor" = "ACME"
    "org.opencontainers.image.licenses" = "MIT"
  }
}

target "default" {
  tags = concat(["acme/svc:1"], [for t in distinct(EXTRA_TAGS) : "acme/svc:${t}"])
  labels = merge(COMMON_LABELS, { "org.opencontainers.image.licenses" = "Apache-2.0" })
  platforms = sort(["linux/s390x", "linux/amd64", "linux/arm64"])
  args = {
    COUNT = length(EXTRA_TAGS)
    FIRST = element(EXTRA_TAGS, 0)
    KEYS = join(",", keys(COMMON_LABELS))
    VENDOR = lookup(COMMON_LABELS, "org.opencontainers.image.vendor", "none")
    MISSING = lookup(COMMON_LABELS, "nope", "none")
    RANGE = join(" ", range(3))
    FLAT = join(",", flatten([["a"], ["b", ["c"]]]))
    HAS = contains(EXTRA_TAGS, "nightly")
    REV = join("", reverse(["c", "b", "a"]))
  }
}
