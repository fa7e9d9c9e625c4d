"""The package as users get it: the wheel, its metadata, and the API reference's coverage.

The wheel test builds an sdist and a wheel from it, installs the wheel (not editable) into a
fresh virtual environment and runs the command line and an import from a directory outside
the checkout, so a file that exists only in the source tree fails it.
"""

from __future__ import annotations

import email
import importlib
import importlib.util
import os
import re
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyrodiff

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_api_generator():
    spec = importlib.util.spec_from_file_location("pyrodiff_api", DOCS / "_ext" / "pyrodiff_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


# --- the API reference ---------------------------------------------------------------------


def test_every_subpackage_is_public_or_declared_internal():
    api = _load_api_generator()
    undeclared = set(api.subpackages()) - set(api.PUBLIC) - set(api.INTERNAL)
    assert not undeclared, f"add {sorted(undeclared)} to PUBLIC or INTERNAL in docs/_ext"
    for name in api.PUBLIC:
        assert hasattr(importlib.import_module(name), "__all__"), f"{name} has no __all__"


def test_api_reference_has_an_entry_for_every_name_in_every_all(tmp_path):
    api = _load_api_generator()
    sources = api.generate(tmp_path)
    documented = {
        m.group(2): stem
        for stem, text in sources.items()
        for m in re.finditer(r"^\.\. auto(class|exception|function|data):: (\S+)$", text, re.M)
    }
    # no object is documented twice (Sphinx would warn of a duplicate description)
    directives = [
        m.group(1)
        for text in sources.values()
        for m in re.finditer(r"^\.\. auto\w+:: (\S+)$", text, re.M)
    ]
    assert len(directives) == len(set(directives))
    for module_name in api.PUBLIC:
        module = importlib.import_module(module_name)
        page = sources[module_name]
        assert f".. automodule:: {module_name}" in page
        assert f"   {module_name}" in sources["index"]  # in the reference's table of contents
        for name in module.__all__:
            obj = getattr(module, name)
            if hasattr(obj, "__path__") or type(obj).__name__ == "module":
                assert f"`{name} <{obj.__name__}>`" in page
                assert obj.__name__ in sources
                continue
            # listed on its module's page, linked to the one entry that documents it
            link = re.search(rf"`{re.escape(name)} <(\S+)>`", page)
            assert link, f"{module_name}.{name} is not in its page's table"
            canonical = link.group(1)
            assert canonical in documented, f"{module_name}.{name}: no entry for {canonical}"
            home, _, attr = canonical.rpartition(".")
            assert getattr(importlib.import_module(home), attr) is obj


def test_front_page_states_the_public_surface():
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    section = text.split("## The public surface", 1)[1]
    for name in (
        "pyrodiff.Diffusion",
        "pyrodiff.guides",
        "pyrodiff.infer",
        "pyrodiff.train.fit",
        "Not public",
        "underscore",
        "examples/",
    ):
        assert name in section


def _sphinx_project(tmp_path: Path, body: str) -> Path:
    src = tmp_path / "src"
    (src / "_ext").mkdir(parents=True)
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    conf = conf.replace("Path(__file__).parent", f"Path({str(DOCS)!r})")
    (src / "conf.py").write_text(conf + '\nexclude_patterns += ["api"]\nhtml_theme = "basic"\n')
    (src / "index.rst").write_text("Test\n====\n\n" + body + "\n", encoding="utf-8")
    return src


def _sphinx_build(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html"]
        + [str(src), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


@pytest.mark.slow
def test_docs_build_fails_on_a_reference_to_a_missing_class(tmp_path):
    """With the docs' own configuration: a renamed class breaks the build; an alias does not."""
    pytest.importorskip("sphinx")
    documented = ".. autoclass:: pyrodiff.schedules.NoiseSchedule\n   :no-members:\n\n"
    # the same class under its defining module's path, as type hints name it: resolves
    good = _sphinx_project(
        tmp_path / "good", documented + "See :class:`pyrodiff.schedules.discrete.NoiseSchedule`."
    )
    result = _sphinx_build(good, tmp_path / "good_out")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "good_out" / "index.html").read_text(encoding="utf-8")
    assert 'href="#pyrodiff.schedules.NoiseSchedule"' in html
    bad = _sphinx_project(
        tmp_path / "bad", documented + "See :class:`pyrodiff.schedules.NoiseScheduleV2`."
    )
    result = _sphinx_build(bad, tmp_path / "bad_out")
    assert result.returncode != 0
    assert "pyrodiff.schedules.NoiseScheduleV2" in result.stderr


# --- the wheel -----------------------------------------------------------------------------


def _requirement_name(line: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower()


def _check_metadata(wheel: zipfile.ZipFile) -> None:
    (meta_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Name"] == "pyrodiff"
    assert meta["Version"] == pyrodiff.__version__  # one source: pyrodiff.__version__
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert meta["License-Expression"] == "MIT"
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert meta.get_payload(decode=True).decode("utf-8").strip() == readme.strip()

    runtime = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    names = {_requirement_name(r) for r in runtime}
    assert names == {"torch", "pyro-ppl", "numpy", "matplotlib", "scikit-learn", "tqdm"}
    for requirement in runtime:
        specifiers = requirement[len(_requirement_name(requirement)) :].split(";")[0]
        # a lower bound each, and no upper cap (none is known to be needed)
        assert re.fullmatch(r"\s*>=\s*[0-9][0-9.]*\s*", specifiers), requirement


def _check_contents(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "pyrodiff/py.typed" in names
    # every file of the package in the source tree ships (there are no other data files)
    for path in (ROOT / "pyrodiff").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            assert path.relative_to(ROOT).as_posix() in names, path
    assert not any(n.startswith(("tests/", "examples/", "docs/")) for n in names)
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"pyrodiff = pyrodiff.cli:main" in entry_points


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    # sdist first, then the wheel from the unpacked sdist: a file missing from the sdist fails
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel_path,) = dist.glob("pyrodiff-*.whl")
    (sdist_path,) = dist.glob("pyrodiff-*.tar.gz")
    with tarfile.open(sdist_path) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"README.md", "pyproject.toml", "pyrodiff/py.typed"} <= members
    with zipfile.ZipFile(wheel_path) as wheel:
        _check_metadata(wheel)
        _check_contents(wheel)

    # A fresh venv. Third-party dependencies are seen through a .pth file naming this
    # interpreter's site-packages (installing torch again would take minutes); pyrodiff itself
    # can only come from the wheel: a .pth line adds a directory without running the .pth
    # files inside it, so the editable install's hook does not follow.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= set(site.getsitepackages())
    (venv_site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "-q", str(wheel_path)],
        check=True,
        capture_output=True,
    )
    # pyrodiff's declared requirements are met by what the venv sees
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert "pyrodiff" not in check.stdout, check.stdout

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, pathlib, pyrodiff;"
            "assert pyrodiff.__version__ == m.version('pyrodiff');"
            "assert (pathlib.Path(pyrodiff.__file__).parent / 'py.typed').is_file();"
            "print(pyrodiff.__file__)",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).resolve().is_relative_to(venv.resolve())

    run = cwd / "run"
    train = subprocess.run(
        [venv / "bin" / "pyrodiff", "train", "--updates", "20", "--data", "eight_gaussians"]
        + ["--T", "10", "--width", "32", "--depth", "1", "--no-progress", "--out", str(run)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr
    assert "20 updates" in train.stdout
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "figures/elbo.png"):
        assert (run / name).is_file(), name
