variable "BUILD_TIME" {
  default = "2025-03-09T17:04:05Z"
}

variable "REPLICAS" {
  default = 3
}

target "default" {
  tags = ["acme/report:${formatdate("YYYYMMDD", BUILD_TIME)}"]
  labels = {
    "org.opencontainers.image.created" = BUILD_TIME
    "com.acme.built" = formatdate("EEE, DD MMM YYYY hh:mm:ss ZZZ", BUILD_TIME)
    "com.acme.week" = formatdate("YY-M-D h:m", BUILD_TIME)
  }
  args = {
    THREADS = multiply(REPLICAS, 4)
    HALF = floor(divide(REPLICAS, 2))
    CEIL = ceil(divide(REPLICAS, 2))
    MAX = max(1, REPLICAS, 2)
    MIN = min(5, REPLICAS)
    SUM = add(REPLICAS, 0.5)
    NEG = negate(REPLICAS)
    MOD = modulo(10, REPLICAS)
    HEX = parseint("ff", 16)
    SAME = notequal(REPLICAS, 3)
  }
}
