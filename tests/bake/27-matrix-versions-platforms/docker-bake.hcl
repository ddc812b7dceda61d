variable "PYTHON_VERSIONS" {
  default = ["3.11", "3.12"]
}

group "default" {
  targets = ["python"]
}

target "_python" {
  dockerfile = "python.Dockerfile"
  platforms = ["linux/amd64", "linux/arm64"]
  labels = {
    "org.opencontainers.image.title" = "python"
  }
}

target "python" {
  name = "python-${replace(py, ".", "")}-${variant}"
  matrix = {
    py = PYTHON_VERSIONS
    variant = ["slim", "full"]
  }
  inherits = ["_python"]
  args = {
    PYTHON_VERSION = py
    VARIANT = variant
  }
  tags = ["acme/python:${py}-${variant}"]
}
