"""The command line: `run_bench.py run | table | methods | cache | tune`, the terminal
summary of a run and the cache listing. Each command parses its arguments and calls the rooms below."""
