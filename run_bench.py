#!/usr/bin/env python
"""Entry point: see ``python run_bench.py --help`` and the README."""

import sys

from bench.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
