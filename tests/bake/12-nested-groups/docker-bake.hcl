group "default" {
  targets = ["services", "docs"]
}

group "services" {
  description = "Every deployable service"
  targets = ["api", "worker", "backend"]
}

group "backend" {
  targets = ["api", "db-migrate"]
}

target "api" {
  context = "services/api"
}

target "worker" {
  context = "services/worker"
}

target "db-migrate" {
  context = "services/db"
  target = "migrate"
}

target "docs" {
  context = "docs"
  output = ["type=local,dest=site"]
}
