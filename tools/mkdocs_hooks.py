"""MkDocs hooks of the documentation site (mkdocs.yml): files from outside docs/ it shows.

The benchmarks' timeline chart is written by `make bench` to benchmarks/timeline.png, where
benchmarks/RESULTS.md shows it; the site shows the same file as images/timeline.png, with no
copy in the repository to fall out of date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

# site path -> source file, relative to the repository's root
EXTERNAL = {"images/timeline.png": "benchmarks/timeline.png"}


def on_files(files: Files, config: Any) -> Files:
    for uri, source in EXTERNAL.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    return files
