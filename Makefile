# kiln: the two commands of a fresh machine are `make example` (the main job) and `make test`.

CARGO ?= cargo

.PHONY: example plan test build lint bench fuzz compare

build:
	$(CARGO) build --release --bin kiln

# The main job: a real two-platform build of examples/hello on the embedded farm (as root:
# installs runc and qemu-user-static, makes a base image in a loopback registry first).
example:
	bash scripts/example.sh

# The same example's plan, without building (no root, no network).
plan: build
	./target/release/kiln build --dry-run --platform linux/amd64,linux/arm64 examples/hello

# The test suite: the kiln binary first (the end-to-end tests run it), then every test.
test:
	$(CARGO) build --bin kiln
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p kiln-shared --bench frontend
	$(CARGO) bench -p kiln-coordinator --bench scheduler
	$(CARGO) bench -p kiln-agent --bench transfer
	$(CARGO) build --release --bin kiln
	$(CARGO) bench -p kiln-tests --bench cluster
	$(CARGO) bench -p kiln-tests --bench advertise
	$(CARGO) bench -p kiln-tests --bench upload
	$(CARGO) bench -p kiln-tests --bench bake
	python3 scripts/bench-bake.py

# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the stable toolchain
# build with the sanitizer flags cargo-fuzz passes.
FUZZ_SECONDS ?= 300
fuzz:
	cd shared && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run parse -- -max_total_time=$(FUZZ_SECONDS)

# The judge: every Dockerfile of examples/compare built by kiln and by Docker's own BuildKit
# (Debian's docker.io, a private dockerd) for linux/amd64 and linux/arm64, compared image by
# image (as root; KILN_BIN picks the kiln binary, COMPARE_ARGS e.g. `--only 25-* --keep`).
compare:
	python3 scripts/compare.py $(COMPARE_ARGS)
