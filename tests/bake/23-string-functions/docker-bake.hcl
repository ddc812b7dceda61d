variable "BRANCH" {
  default = "feature/Add-Login"
}

variable "VERSION" {
  default = "v2.7.1"
}

target "default" {
  tags = [
    "acme/app:${lower(sanitize(BRANCH))}",
    "acme/app:${trimprefix(VERSION, "v")}",
    "acme/app:${join(".", slice(split(".", trimprefix(VERSION, "v")), 0, 2))}",
  ]
  args = {
    UPPER = upper(BRANCH)
    TITLE = title("hello world")
    PADDED = format("%05d", 42)
    QUOTED = format("%q", "x")
    SUB = substr(VERSION, 1, 3)
    RE = regex_replace(BRANCH, "[^a-zA-Z]+", "-")
    TRIM = trimspace("  spaced  ")
    SUFFIX = trimsuffix("image.tar.gz", ".gz")
    REPLACED = replace(BRANCH, "/", "_")
    LEN = strlen(VERSION)
    B64 = base64encode("kiln")
  }
}
