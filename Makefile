# uvm — two commands:
#   make demo   install what is missing, build, boot a UVM, run a command in it
#   make test   every test (unit, real-VM integration, CLI end to end, bounded fuzz)
# Both are idempotent; the kernel, the agent and the initramfs are cached.

CARGO        ?= cargo
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT        := target/$(AGENT_TARGET)/agent/uvm-gcs
UVMCTL       := target/release/uvmctl
DEMO_CMD     ?= uname -a
DEMO_IMAGE   := target/busybox-oci.tar
SNAPSHOT     := $${UVM_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/uvm}/snapshot

export UVM_AGENT := $(CURDIR)/$(AGENT)

.PHONY: demo test deps agent build image bench clean-cache

deps:
	@bash scripts/install-deps.sh

# The agent runs as PID 1 in the guest: a static binary.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile agent -p uvm-gcs --target $(AGENT_TARGET)

build: agent
	$(CARGO) build --release -p uvmctl -p uvm-shim

# Kernel (built once, ~6 min on 2 cores), initramfs and the default
# snapshot (a booted UVM, for warm starts), all cached under ~/.cache/uvm.
image: deps build
	$(UVMCTL) image build --snapshot

demo: image
	@echo "+ uvmctl run --stats -- $(DEMO_CMD)          # cold: boots the kernel"
	@$(UVMCTL) run --stats -- $(DEMO_CMD)
	@echo "+ uvmctl run --stats --from-snapshot $(SNAPSHOT) -- $(DEMO_CMD)   # warm: restores a booted UVM"
	@$(UVMCTL) run --stats --from-snapshot $(SNAPSHOT) -- $(DEMO_CMD)
	@$(UVMCTL) image oci-busybox $(DEMO_IMAGE) >/dev/null
	@echo "+ uvmctl run --image $(DEMO_IMAGE) -- sh -c 'echo pid \$$\$$ in \$$(hostname); ps'"
	@$(UVMCTL) run --image $(DEMO_IMAGE) -- sh -c 'echo pid $$$$ in $$(hostname); ps'

# Real-VM tests must not skip here; the soak and chaos tests run at full length.
test: image
	UVM_REQUIRE_REAL_VM=1 UVM_SOAK_LIFECYCLES=100 UVM_CHAOS_SECS=60 \
	  $(CARGO) test --workspace --no-fail-fast -- --test-threads=2

bench: image
	$(UVMCTL) bench --json target/bench.json

clean-cache:
	rm -rf "$${UVM_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/uvm}"
