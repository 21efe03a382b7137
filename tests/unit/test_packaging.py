"""The installable package (what the container image runs) carries every file the services
read at run time, not only the Python modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_contains_every_data_file_under_services(tmp_path):
    # built from a copy, as the Dockerfile's COPY does, so no build/ lands in the work tree
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("services", "deploy"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    packaged = set(zipfile.ZipFile(next(tmp_path.glob("muisti-*.whl"))).namelist())
    needed = {str(path.relative_to(REPO)) for path in (REPO / "services").rglob("*")
              if path.is_file() and path.suffix not in (".py", ".pyc")
              and "__pycache__" not in path.parts}
    assert needed, "expected data files under services/"
    assert needed <= packaged, sorted(needed - packaged)
