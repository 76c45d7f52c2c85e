"""The package as pip installs it: the core (`singan`) needs torch, numpy and Pillow only; the
batch jobs come with the fleet extra, as commands."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "pillow"}
JOBS = {"singan-fleet-train": "jobs.commands:train",
        "singan-fleet-evaluate": "jobs.commands:evaluate",
        "singan-fleet-manifest": "jobs.commands:manifest",
        "singan-fleet-sync": "jobs.commands:sync",
        "singan-fleet-compact": "jobs.commands:compact"}


def closure(names: set[str]) -> set[str]:
    """These distributions and everything they require (no extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def expose(names: set[str], folder: Path) -> None:
    """Make the installed distributions `names` (their packages and .dist-info) importable from
    `folder` by symbolic links, and nothing else."""
    folder.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and top != "__pycache__":
                (folder / top).symlink_to(source)


@pytest.mark.slow
def test_the_wheel_installs_the_core_without_the_fleet(tmp_path):
    # Built from a copy of what the container image copies, so that the checkout stays clean.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for package in ("singan", "pipeline", "jobs"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(source)], check=True)
    [wheel] = dist.glob("singan_fleet-*.whl")

    # What pip installs with it: torch, numpy, Pillow; the fleet's packages only as an extra.
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [Requirement(line.split(":", 1)[1]) for line in
                    archive.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
        entry_points = archive.read(meta.replace("METADATA", "entry_points.txt")).decode()
        packages = {name.split("/")[0] for name in archive.namelist()}
    core = {canonical(r.name) for r in requires if r.marker is None}
    fleet = {canonical(r.name) for r in requires
             if r.marker is not None and r.marker.evaluate({"extra": "fleet"})}
    assert core == CORE
    assert {"ray", "mlflow", "s3fs", "pyarrow", "fsspec", "matplotlib", "tqdm"} <= fleet
    assert {"singan", "pipeline", "jobs"} <= packages
    for command, target in JOBS.items():
        assert f"{command} = {target}" in entry_points

    # A clean venv that sees only the core's dependencies (linked from this one, so that no
    # torch is downloaded), and the wheel installed into it by pip.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    expose(closure(CORE), tmp_path / "core")
    (site / "core.pth").write_text(str(tmp_path / "core") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    missing = subprocess.run([str(python), "-c", "import ray"], capture_output=True, env=env)
    assert missing.returncode != 0, "ray is importable from the clean venv"
    missing = subprocess.run([str(python), "-c", "import mlflow"], capture_output=True, env=env)
    assert missing.returncode != 0, "mlflow is importable from the clean venv"

    shown = subprocess.run([str(venv / "bin" / "singan"), "--help"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True)
    assert "train" in shown.stdout and "sample" in shown.stdout
    # A job's command exists, and without the fleet extra it says what to install.
    job = subprocess.run([str(venv / "bin" / "singan-fleet-train"), "--help"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert job.returncode == 2 and "pip install 'singan-fleet[fleet]'" in job.stderr
    assert "Traceback" not in job.stderr
