"""The shape of the `shared.store` package (issue 22): modules that each import on their own,
in a fresh interpreter, without h5py; functions short enough to read in one screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import shared.store

PACKAGE_DIR = Path(shared.store.__file__).parent
MODULES = ("schema", "checks", "memmap", "feature_store", "write")
MAX_FUNCTION_LINES = 60


def test_each_module_imports_first_and_alone_without_hdf5():
    """Importing any module first (no cycle needs another to be loaded before it) brings in the
    whole read API and never h5py or hdf5plugin: the trainer imports this package."""
    for module in MODULES:
        code = (
            f"import sys; import shared.store.{module}; from shared.store import open_store; "
            "bad = [m for m in ('h5py', 'hdf5plugin') if m in sys.modules]; "
            "assert not bad, bad"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


def test_every_function_is_at_most_60_lines():
    long = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
