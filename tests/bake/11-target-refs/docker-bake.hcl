target "foo" {
  dockerfile = "${target.docs.name}.Dockerfile"
  tags = ["acme/foo:${target.base.args.VERSION}"]
  args = {
    VERSION = target.base.args.VERSION
  }
}

target "base" {
  args = {
    VERSION = "3.18"
  }
  platforms = ["linux/amd64"]
}

target "docs" {
  name = "docs"
  platforms = target.base.platforms
}
