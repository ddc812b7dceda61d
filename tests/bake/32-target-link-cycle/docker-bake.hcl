# A chain of target: contexts that comes back to where it started.
target "a" {
  contexts = { b = "target:b" }
}

target "b" {
  contexts = { c = "target:c" }
}

target "c" {
  contexts = { a = "target:a" }
}
