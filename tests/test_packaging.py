"""How sigroute installs: one `sigroute` package in site-packages, and an SDK that installs alone.

The wheel is built once per run from a copy of the working tree (never from the live checkout:
a build writes `build/` beside the sources). The light-SDK test installs it into a fresh virtual
environment with nothing but its declared dependencies (httpx, from the package registry or pip's
cache) and talks to a real gateway on loopback from there.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from sigroute.gateway.serving import ServerThread
from tests.conftest import base_policy

ROOT = Path(__file__).resolve().parent.parent
OUR_FOLDERS = ("gateway", "signals", "bandits", "cache", "plugins", "policies")
SERVER_ONLY = ("torch", "faiss", "litellm", "presidio_analyzer", "fastapi", "starlette", "uvicorn",
               "sentence_transformers", "sklearn", "onnxruntime", "redis", "numpy")
COPY_IGNORED = shutil.ignore_patterns(".git", "__pycache__", "build", "dist", "*.egg-info", ".venv*", "results",
                                      ".benchmarks", ".pytest_cache", "tests", "benchmarks")


def _python_files() -> list[Path]:
    out = []
    for folder in (*OUR_FOLDERS, "tests", "benchmarks"):
        out += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return out + [ROOT / "__init__.py"]


def test_no_module_imports_our_folders_as_top_level_packages():
    """`import gateway` works only by accident from the repository root; installed, only
    `sigroute.gateway` exists. Every import of our code names the `sigroute` package."""
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in OUR_FOLDERS:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not offenders, "import these as sigroute.<folder>:\n" + "\n".join(offenders)


def test_every_source_folder_is_a_listed_package():
    """A folder of modules missing from pyproject's package list would silently be left out of
    the wheel (and work in an editable install)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for folder in OUR_FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            dotted = "sigroute." + ".".join(init.parent.relative_to(ROOT).parts)
            assert f'"{dotted}"' in text, f"{dotted} is not in [tool.setuptools] packages"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORED)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(work / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    wheels = list((work / "dist").glob("sigroute-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_only_the_sigroute_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    version = wheel.name.split("-")[1]
    assert tops == {"sigroute", f"sigroute-{version}.dist-info"}, tops
    # every module of ours is inside, with the data the gateway reads at run time
    for path in _python_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks"):
            assert "sigroute/" + rel.as_posix() not in names
        else:
            assert "sigroute/" + rel.as_posix() in names, f"{rel} is missing from the wheel"
    for data in ("sigroute/policies/examples/default.yaml", "sigroute/gateway/sim/data/demo_questions.json",
                 "sigroute/signals/trained/domain/weights.npz", "sigroute/cache/trained/verifier/head.json"):
        assert data in names, data
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sigroute = sigroute.gateway.cli:main" in entry_points


def test_the_sdk_is_the_base_install_and_the_gateway_an_extra(wheel):
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode()
    always = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert [req.split(">")[0].split("=")[0].split("[")[0].strip() for req in always] == ["httpx"], always
    server = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and 'extra == "server"' in line]
    assert any("fastapi" in line for line in server) and any("litellm" in line for line in server)


def _venv(where: Path, system_site_packages: bool) -> Path:
    venv.EnvBuilder(with_pip=True, system_site_packages=system_site_packages, clear=True).create(where)
    return where / "bin" / "python"


SDK_SCRIPT = r"""
import importlib.util, json, subprocess, sys
report = {"server_modules": [m for m in %(server_only)r if importlib.util.find_spec(m) is not None]}
try:
    import gateway
    report["gateway_importable"] = True
except ImportError:
    report["gateway_importable"] = False
import sigroute
from sigroute import Client, AsyncClient
report["sigroute_file"] = sigroute.__file__
with Client(sys.argv[1], api_key="sk-sdk") as client:
    answer = client.chat("hello from a light install")
    report["decision"] = answer.routing.decision
    report["model"] = answer.routing.model
    report["text"] = answer.text
    with client.stream("stream to a light install") as stream:
        report["streamed"] = stream.text()
report["heavy_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in %(server_only)r)
print(json.dumps(report))
"""


def test_the_light_sdk_install_works_without_the_server_dependencies(wheel, tmp_path, sim):
    """`pip install sigroute` (here: the wheel) in a fresh environment pulls httpx and its own
    dependencies only; the SDK imports and talks to a running gateway from there."""
    from sigroute.gateway.app import create_app
    from sigroute.policies.loader import validate_policy_data

    python = _venv(tmp_path / "sdk-venv", system_site_packages=False)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=120)
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "sigroute" in installed and "httpx" in installed
    assert not installed & {"torch", "faiss-cpu", "litellm", "presidio-analyzer", "fastapi", "uvicorn", "numpy",
                            "pydantic", "orjson"}, installed

    policy = validate_policy_data(base_policy(sim))
    with ServerThread(create_app(policy)) as gateway:
        script = tmp_path / "use_sdk.py"
        script.write_text(SDK_SCRIPT % {"server_only": SERVER_ONLY})
        run = subprocess.run([str(python), str(script), gateway.url], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["server_modules"] == [] and report["heavy_loaded"] == []
    assert report["gateway_importable"] is False
    assert str(tmp_path / "sdk-venv") in report["sigroute_file"]
    assert report["decision"] and report["model"] and report["text"]
    assert report["streamed"]
    # the command line says what to install instead of failing on an import
    cli = subprocess.run([str(tmp_path / "sdk-venv" / "bin" / "sigroute"), "serve"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert cli.returncode == 2 and "sigroute[server]" in cli.stderr, cli.stderr


REGULAR_SCRIPT = r"""
import json, sys
import importlib.util
report = {"gateway_importable": importlib.util.find_spec("gateway") is not None}
import sigroute
from sigroute.gateway.app import app_from_file
from sigroute.gateway.serving import ServerThread
from sigroute.policies.loader import load_default_policy
report["sigroute_file"] = sigroute.__file__
report["default_policy_models"] = sorted(load_default_policy().models)
from sigroute.gateway.sim import load_question_bank
report["questions"] = len(load_question_bank())
print(json.dumps(report))
"""


def test_a_regular_install_is_self_contained(wheel, tmp_path):
    """A non-editable install (`pip install .`) runs from site-packages alone: the embedded policy,
    the simulator's data and the CLI come from inside the `sigroute` package. The server
    dependencies are borrowed from this environment, the package itself is not."""
    python = _venv(tmp_path / "full-venv", system_site_packages=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "use_server.py"
    script.write_text(REGULAR_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert str(tmp_path / "full-venv") in report["sigroute_file"]
    assert report["gateway_importable"] is False
    assert report["default_policy_models"] and report["questions"] > 0
    cli = subprocess.run([str(tmp_path / "full-venv" / "bin" / "sigroute"), "validate", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=env)
    assert cli.returncode == 0, cli.stderr[-3000:]
