# Build, boot artifacts, tests and benchmarks.
CARGO  ?= cargo
TARGET := x86_64-unknown-linux-gnu
BUILD  := build
# Where cargo puts its output (CARGO_TARGET_DIR when set).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The tether is PID 1 in the guest: a static binary, small profile.
TETHER_RUSTFLAGS := -C target-feature=+crt-static

.PHONY: all deps tether iso appliance run test lint bench clean

all: iso appliance

deps:
	@bash .ci/deps

tether:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$(TETHER_RUSTFLAGS)" \
	  $(CARGO) build -p tether --profile guest --target $(TARGET)
	@mkdir -p $(BUILD)
	@cp $(TARGET_DIR)/$(TARGET)/guest/tether $(BUILD)/tether
	@echo "tether: $$(stat -c %s $(BUILD)/tether) bytes, $$(file -b $(BUILD)/tether | cut -d, -f1-5)"

iso: tether
	$(CARGO) run -q -p bootstrap-iso -- --out $(BUILD) --tether $(BUILD)/tether

appliance:
	$(CARGO) build -p appliance

# The main job: a busybox container VM, through `appliance serve` and the
# CLI, prints a line.
run: deps iso appliance
	@bash scripts/demo

# The end-to-end tests drive the appliance binary, so build it first.
test: deps iso appliance
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps iso
	$(CARGO) build --release -p appliance
	$(CARGO) run --release -p tests --bin bench

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
