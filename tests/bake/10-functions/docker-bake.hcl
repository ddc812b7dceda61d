variable "REPO" {
  default = "ghcr.io/acme"
}

function "tag" {
  params = [name, version]
  result = ["${REPO}/${name}:${version}", "${REPO}/${name}:latest"]
}

function "increment" {
  params = [number]
  result = number + 1
}

function "labels" {
  params = [team]
  variadic_params = extra
  result = merge({ "com.acme.team" = team }, { "com.acme.extra" = join(",", extra) })
}

target "default" {
  tags = tag("api", "2.1")
  args = {
    RETRIES = increment(2)
    LEVEL = "${increment(increment(0))}"
  }
  labels = labels("platform", "a", "b")
}
