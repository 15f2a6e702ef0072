# Two entry points (see README): `make run` runs the main job, `make test` the suite.
# Both create .venv and install the project from setup.py on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

.PHONY: run test test-fast infra-up infra-submit infra-down install firehose-demo

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# The main job: DirectRunner on the embedded synthetic world; pass more with ARGS="…".
run: $(STAMP)
	$(BIN)/python -m pipelines.run $(ARGS)
	@echo
	@echo "Open the portal over these outputs (subscribers' pages need the world's users and pings: --input WORLD):"
	@echo "  $(BIN)/python -m portal serve --output $(or $(patsubst --output=%,%,$(filter --output=%,$(ARGS))),out) [--input WORLD] --port 8088"
	@echo "  then http://127.0.0.1:8088/  (marketers: $(BIN)/python -m portal marketer-key --help; phones: $(BIN)/python -m nfc_gateway login --help)"

# The whole suite, including the Flink + Kafka integration tests (infra installs its own parts).
test: $(STAMP)
	bash infra/install.sh
	bash infra/browser.sh
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# Unit and DirectRunner tests only (no cluster).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not flink" $(PYTEST_ARGS)

infra-up: $(STAMP)
	bash infra/install.sh && bash infra/up.sh

# Stream a world (WORLD=DIR, default: a fresh small one) through Kafka on the local cluster:
# the native PyFlink job on Flink; ENGINE=beam for the Beam pipeline (Prism, or FlinkRunner
# once Beam's Flink job server is installable).
infra-submit: $(STAMP)
	test -n "$(WORLD)" || $(BIN)/python -m pipelines.generate --output out-world --users 200 --hours 3 --start 2026-11-20T17:00:00+09:00
	ENGINE=$(or $(ENGINE),flink) bash infra/submit.sh $(if $(WORLD),$(WORLD),out-world) $(ARGS)

infra-down:
	bash infra/down.sh

# The live firehose client (python -m nfc_gateway firehose) against the local firehose
# emulator serving a fresh world's tweets on 2 partitions, for DEMO_SECONDS (default 30);
# tweets land in out-firehose/tweets.jsonl, metrics on http://127.0.0.1:9464/metrics.
firehose-demo: $(STAMP)
	test -d out-firehose-world || $(BIN)/python -m pipelines.generate --output out-firehose-world --users 200 --hours 2
	rm -f out-firehose-world/emulator.json; export FIREHOSE_EMULATOR_TOKEN=demo-token TWITTER_BEARER_TOKEN=demo-token; \
	$(BIN)/python -m nfc_gateway.firehose_emulator --world out-firehose-world --port 0 --partitions 2 \
	    --rate 10 --keepalive 2 > out-firehose-world/emulator.json & emu=$$!; trap 'kill $$emu' EXIT; \
	until [ -s out-firehose-world/emulator.json ]; do kill -0 $$emu || exit 1; sleep 0.2; done; \
	url=$$($(BIN)/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' out-firehose-world/emulator.json); \
	timeout -s INT $(or $(DEMO_SECONDS),30) $(BIN)/python -m nfc_gateway firehose --url $$url --partitions 2 \
	    --output out-firehose --metrics-port 9464 || test $$? = 124; \
	wc -l out-firehose/tweets.jsonl
