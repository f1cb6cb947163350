"""Offline tools: training, export, benchmarks, the load test and the deployment check.

Each runs from the repository root as a module, ``python -m scripts.train --help``, so a tool
imports its siblings (``scripts.cli_types``) and the test helpers (``tests.helpers``) by name.
"""
