# The two commands of the quick start:
#   make run   set everything up, then start the server on its built-in default config
#   make test  set everything up, then run every test
# Setup installs Debian packages (native/setup-system.sh), a virtualenv in .venv/ with the
# Python packages, and the native build (pjproject + pjsua2 + softswitch's module, cached
# outside the work tree in ~/.cache/softswitch).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMPS  := $(VENV)/.stamps
CONFIG  ?=
PYTEST_ARGS ?=

.PHONY: run test setup native system check bench clean

run: setup
	$(VENV)/bin/softswitch run $(if $(CONFIG),--config $(CONFIG))

# Fast suites first, then the SIPp suites; both run in CI.
test: setup
	$(PY) -m pytest -m "not sipp" -q $(PYTEST_ARGS)
	$(PY) -m pytest -m "sipp" -q $(PYTEST_ARGS)

check: setup
	$(VENV)/bin/softswitch check $(if $(CONFIG),--config $(CONFIG))

setup: system $(STAMPS)/python native

system:
	bash native/setup-system.sh

$(STAMPS)/python: pyproject.toml | system
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	mkdir -p $(STAMPS) && touch $@

native: $(STAMPS)/python
	cmake -S . -B build -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build -j 2
	cmake --install build >/dev/null
	$(PY) -c 'import pjsua2, _softswitch_native'

bench: setup
	$(PY) bench/capacity.py

clean:
	rm -rf build $(VENV)
