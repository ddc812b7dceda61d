variable "DEBUG" {
  default = null
}

target "default" {
  description = "A tiny image from an inline Dockerfile"
  dockerfile-inline = <<EOT
FROM alpine
RUN echo hello
EOT
  args = {
    DEBUG = DEBUG
    LEVEL = "info"
  }
  labels = {
    "com.acme.debug" = DEBUG
  }
  network = "none"
  shm-size = "128m"
  ulimits = ["nofile=1024:1024"]
}
