# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv here and install what they need (system packages with
# apt-get when run as root and missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo lint bench system-deps venv bytecode clean

# The whole suite on four pytest-xdist workers (tests/support/kinds.py orders and groups the tests): a third of a
# worker's time is waits, which two workers on 2 cores leave idle (bench/README.md has the measured runs).
TEST_WORKERS ?= 4
test: system-deps venv bytecode
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The edit-test loop: tests/unit, every test that starts no TensorFlow and no sshd (tests/support/kinds.py), in under a minute.
# Its time is mostly waits (timeouts, retries, sleeping stand-ins), not CPU: four workers overlap them, even on 2 cores.
FAST_WORKERS ?= 4
test-fast: venv bytecode
	$(BIN)/python -m pytest --fast -n $(FAST_WORKERS) --dist loadgroup tests/unit $(PYTEST_ARGS)

demo: system-deps venv
	@$(BIN)/python -m deploy.demo

lint: venv
	$(BIN)/ruff check trainer deploy tests bench fabfile.py remote_scripts
	$(BIN)/shellcheck remote_scripts/*.sh .ci/run

bench: venv
	$(BIN)/python bench/input_pipeline.py
	$(BIN)/python bench/deploy_latency.py

venv: $(STAMP)

# The project's bytecode, compiled once: where PYTHONDONTWRITEBYTECODE is set (some CI images), every Python
# the tests start (hundreds of fab processes) would otherwise compile it again.
bytecode:
	@$(BIN)/python -m compileall -q trainer deploy remote_scripts tests fabfile.py

# pip's output goes to .venv/install.log; one progress line shows the elapsed time (deploy/host/progress.py, stdlib only).
$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(PYTHON) deploy/host/progress.py $(VENV)/install.log "installing the Python packages into $(VENV) (TensorFlow: minutes)" -- \
	  sh -c "$(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[train-cpu,deploy,aws,dev]'"
	@touch $(STAMP)

# sshd, rsync and tmux stand in for the GPU host in tests and the demo; sudo for its EC2-like user;
# strace records every connect(2) of the demo (tests/journeys/test_demo.py: nothing leaves 127.0.0.0/8).
system-deps:
	@missing=""; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v ps >/dev/null || missing="$$missing procps"; \
	command -v sudo >/dev/null || missing="$$missing sudo"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (run as root, or: sudo apt-get install$$missing)" >&2; exit 2; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .facenet build *.egg-info
