# Thin entry points; the work lives in scripts/ and the synclip package.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format lock plots serve rollback retrain drift-check

setup:  ## venv from requirements.lock + offline pretrained weights
	VENV=$(VENV) bash scripts/setup.sh

demo:  ## setup + the main job on the built-in corpus (SynthTalk, dvc repro)
	VENV=$(VENV) bash scripts/demo.sh

test:  ## the test suite (CPU, tiny configs)
	$(BIN)/pytest

serve:  ## the BentoML service and its web page on 127.0.0.1:3000 (the served model, or models/synclip)
	BENTOML_DO_NOT_TRACK=true $(BIN)/bentoml serve serving.service:LipSync --host 127.0.0.1 --port 3000

rollback:  ## serve the model promoted before the current one again (BentoML's store; restart serve after)
	$(BIN)/synclip model rollback

# Prefect flows, run once here (a temporary local Prefect server; its database in .prefect/)
PREFECT_LOCAL := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

retrain:  ## the retrain flow: dvc repro behind the data-quality gate, then promotion (bentoml build)
	$(PREFECT_LOCAL) $(BIN)/python flows/retrain.py

drift-check:  ## the drift-check flow: the service's request log against the training data
	$(PREFECT_LOCAL) $(BIN)/python flows/monitor.py

plots:  ## dvc plots show as a page that renders offline (dvc_plots/index.html)
	VENV=$(VENV) bash scripts/plots.sh

lint:  ## ruff lint + format check + the import contracts
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && PYTHONPATH=.:src $(BIN)/lint-imports --no-cache

format:
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

lock:  ## re-resolve pyproject.toml into requirements.lock
	bash scripts/lock.sh
