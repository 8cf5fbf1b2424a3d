"""What a non-editable install gets: a wheel built from this tree carries every file the package reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_package_data(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="builds the wheel with the environment's setuptools (no network)")
    # From a copy without build leftovers: an old egg-info's file list can put in what the config leaves out.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("mtlora-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src" / "mtlora"
    data = {f"mtlora/{path.relative_to(package).as_posix()}" for path in package.rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc")}
    assert data, "the package has data files (the server's page)"
    assert data <= names, f"missing from the wheel: {sorted(data - names)}"


def test_the_public_api_exports_what_its_verbs_return_and_raise() -> None:
    import mtlora
    from mtlora.evaluation import RoutingReport, TaskReport
    from mtlora.routing import Route
    from mtlora.training import TrainingInterrupted, TrainOutcome

    assert (mtlora.Route, mtlora.TrainOutcome, mtlora.TaskReport, mtlora.RoutingReport) == \
        (Route, TrainOutcome, TaskReport, RoutingReport)
    assert mtlora.TrainingInterrupted is TrainingInterrupted and issubclass(TrainingInterrupted, mtlora.MtloraError)
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert mtlora.__version__ == declared  # read from the installed metadata, not written out twice
