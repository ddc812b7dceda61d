group "default" {
  targets = ["a", "b"]
}

target "a" {
  tags = ["localhost:5000/a"]
  output = ["type=oci,dest=a.tar"]
}

target "b" {
  tags = ["localhost:5000/b"]
}
