.PHONY: demo test lint bench clean

demo:  ## the daemon against the built-in Rutter simulator
	bash scripts/demo.sh

test:  ## the whole test suite (installs what it needs)
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy --strict monitor/

bench:
	bash bench/run.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
