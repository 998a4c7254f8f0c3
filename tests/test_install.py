"""How latentsweep is installed: cluster.yaml's nodes, the Makefile's .venv, the pins in pyproject.toml.

Fast and offline: nothing is downloaded. Commands that would install or start Ray run against stand-ins
(a fake `ray`, a fake venv python that records what pip was asked), never the real tools.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The CUDA builds PyTorch publishes per release (PyTorch's RELEASE.md, "Release Compatibility Matrix":
# 2.13 has CUDA 12.6 and 13.0, and 13.2 as experimental; 12.8 was dropped in 2.12).
TORCH_CUDA_BUILDS = {"2.13": {"12.6", "13.0", "13.2"}}
# The CUDA a faiss-gpu release needs, from its requirements on PyPI (read with `pip install --dry-run`):
# faiss-gpu 1.15.1 requires nvidia-cuda-runtime-cu12>=12.6,<13 and nvidia-cublas-cu12>=12.6,<13.
FAISS_GPU_CUDA = {"1.15.1": SpecifierSet(">=12.6,<13")}

VENV_CREATE = re.compile(r"-m venv (?:--\S+ )*(\S+)")


def _venv() -> str:
    """The venv cluster.yaml's setup commands create (as the shell will spell it)."""
    found = {m.group(1) for c in CLUSTER["setup_commands"] for m in VENV_CREATE.finditer(c)}
    assert len(found) == 1, f"setup_commands must create one virtual environment, found {found or 'none'}"
    return found.pop().replace("~/", "$HOME/")


def _words(command: str) -> list[str]:
    return [w.replace("~/", "$HOME/") for w in shlex.split(command, comments=False)]


def _pip_installs() -> list[list[str]]:
    return [_words(c) for c in CLUSTER["setup_commands"] if re.search(r"\bpip3? install\b", c)]


def _requirement(specs: list[str], name: str) -> Requirement:
    found = [Requirement(s) for s in specs if Requirement(s).name == name]
    assert len(found) == 1, f"{name} must be required once, found {found}"
    return found[0]


def _pinned(requirement: Requirement) -> str:
    """The one `==` version (or `==X.Y.*`) a requirement allows; fails on a range."""
    specs = list(requirement.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{requirement} is not pinned with =="
    return specs[0].version


def _torch_install() -> tuple[Requirement, str]:
    for words in _pip_installs():
        reqs = [w for w in words if w.startswith("torch")]
        if reqs:
            assert "--index-url" in words, f"torch is installed without its CUDA index: {words}"
            return Requirement(reqs[0]), words[words.index("--index-url") + 1]
    raise AssertionError("cluster.yaml installs no torch")


def _cuda_of(tag: str) -> str:
    """cu126 -> 12.6, cu130 -> 13.0"""
    digits = re.fullmatch(r"cu(\d+)(\d)", tag)
    assert digits, tag
    return f"{digits.group(1)}.{digits.group(2)}"


# --- cluster.yaml -------------------------------------------------------------------------------


def test_cluster_installs_into_a_venv_with_that_venvs_pip():
    venv = _venv()
    installs = _pip_installs()
    assert installs, "cluster.yaml installs nothing"
    for words in installs:
        assert words[:4] == [f"{venv}/bin/python", "-m", "pip", "install"], (
            f"a pip install outside {venv} (refused by PEP 668 system Pythons): {shlex.join(words)}")
    assert any("latentsweep[gpu,cluster]" in w for words in installs for w in words)


def test_cluster_venv_setup_is_idempotent(tmp_path):
    """`ray up` reruns setup_commands: the steps that make the venv run twice and leave one venv."""
    probe = subprocess.run(["python3", "-c", "import ensurepip"], capture_output=True)
    if probe.returncode:
        pytest.skip("python3 here has no ensurepip: the setup would apt-get python3-venv")
    env = dict(os.environ, HOME=str(tmp_path))
    steps = [c for c in CLUSTER["setup_commands"] if not re.search(r"\bpip3? install\b", c)]
    venv = Path(_venv().replace("$HOME", str(tmp_path)))
    stamps = []
    for _ in range(2):
        for command in steps:
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
            assert done.returncode == 0, (command, done.stderr)
        assert (venv / "bin" / "python").exists()
        stamps.append((venv / "pyvenv.cfg").stat().st_mtime_ns)
    assert stamps[0] == stamps[1], "the second run made the venv again"
    bashrc = (tmp_path / ".bashrc").read_text()
    assert bashrc.count("latentsweep-venv/bin") == 1, bashrc


def test_ray_starts_from_the_venv_with_it_first_on_path(tmp_path):
    """Run the start commands with stand-ins: a `ray` in the venv and a decoy `ray` on the PATH."""
    venv = Path(_venv().replace("$HOME", str(tmp_path)))
    log = tmp_path / "calls.jsonl"
    recorder = (f"#!{sys.executable}\nimport json, os, shutil, sys\n"
                f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv, "
                "'python': shutil.which('python'), 'latentsweep': shutil.which('latentsweep')}) + '\\n')\n")
    decoys = tmp_path / "decoys"
    for folder, names in ((venv / "bin", ("ray", "python", "latentsweep")), (decoys, ("ray",))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text(recorder)
            (folder / name).chmod(0o755)
    env = dict(os.environ, HOME=str(tmp_path), PATH=f"{decoys}:{os.environ['PATH']}", RAY_HEAD_IP="10.0.0.1")
    commands = CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]
    for command in commands:
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == len(commands)
    assert all(call["argv"][0] == str(venv / "bin" / "ray") for call in calls), calls
    starts = [call for call in calls if call["argv"][1] == "start"]
    assert len(starts) == 2  # head and workers
    for call in starts:  # jobs inherit the raylet's PATH: the venv's python and latentsweep
        assert call["python"] == str(venv / "bin" / "python")
        assert call["latentsweep"] == str(venv / "bin" / "latentsweep")


def test_cluster_torch_is_a_cuda_12_build_that_exists_and_matches_faiss_gpu():
    torch, index = _torch_install()
    tag = re.fullmatch(r"https://download\.pytorch\.org/whl/(cu\d+)/?", index)
    assert tag, f"torch's index is not a CUDA build of download.pytorch.org: {index}"
    cuda = _cuda_of(tag.group(1))
    torch_version = Version(_pinned(torch))
    assert torch_version.local in (None, tag.group(1)), f"{torch} from the {tag.group(1)} index"
    release = f"{torch_version.major}.{torch_version.minor}"
    assert cuda in TORCH_CUDA_BUILDS[release], f"torch {release} has no CUDA {cuda} build"
    faiss_gpu = _pinned(_requirement(PYPROJECT["project"]["optional-dependencies"]["gpu"], "faiss-gpu"))
    assert faiss_gpu in FAISS_GPU_CUDA, f"faiss-gpu {faiss_gpu}: record the CUDA it needs first"
    assert cuda in FAISS_GPU_CUDA[faiss_gpu], f"torch's CUDA {cuda} is not faiss-gpu {faiss_gpu}'s"
    # cluster.yaml asks for the same faiss-gpu as the extra (pip refuses a conflict at install time)
    named = [Requirement(w) for words in _pip_installs() for w in words if w.startswith("faiss-gpu")]
    assert [str(r.specifier) for r in named] in ([], [f"=={faiss_gpu}"]), named


def test_cluster_torch_is_the_version_the_project_is_tested_with():
    torch, _ = _torch_install()
    makefile = (ROOT / "Makefile").read_text()
    default = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.M)
    assert default, "the Makefile's TORCH_SPEC default"
    tested = Version(installed_version("torch")).public
    assert Version(_pinned(torch)).public == Version(_pinned(Requirement(default.group(1)))).public == tested


def test_every_pytorch_index_named_is_the_clusters_build():
    """README, Makefile and cluster.yaml name one CUDA build of torch (the README once named cu124)."""
    _, index = _torch_install()
    tag = index.rstrip("/").rsplit("/", 1)[1]
    for name in ("README.md", "Makefile", "cluster.yaml"):
        named = set(re.findall(r"download\.pytorch\.org/whl/(cu\d+)", (ROOT / name).read_text()))
        assert named <= {tag}, f"{name} names {named - {tag}}; cluster.yaml installs {tag}"


def test_scale_model_describes_cluster_yaml():
    """docs/scale.md's GPU count is cluster.yaml's, or cluster.yaml says how to raise it to that count."""
    scale = (ROOT / "docs" / "scale.md").read_text()
    counts = {int(n) for n in re.findall(r"(\d+) GPU workers", scale)}
    counts |= {int(n) for n in re.findall(r"on (\d+) GPUs", scale)}
    assert len(counts) == 1, f"docs/scale.md models {counts} GPU workers"
    modelled = counts.pop()
    shipped = CLUSTER["available_node_types"]["gpu_worker"]["max_workers"]
    assert CLUSTER["max_workers"] >= shipped
    if modelled != shipped:  # the comment above the top-level max_workers says how to get there
        lines = (ROOT / "cluster.yaml").read_text().splitlines()
        above = []
        for line in reversed(lines[:next(i for i, x in enumerate(lines) if x.startswith("max_workers:"))]):
            if not line.startswith("#"):
                break
            above.insert(0, line.lstrip("# "))
        comment = " ".join(above)
        assert "docs/scale.md" in comment and re.search(rf"\bto {modelled}\b", comment), (
            f"docs/scale.md models {modelled} GPU workers, cluster.yaml ships {shipped} and does not say how")
        assert "cluster.yaml" in scale


# --- pyproject.toml -----------------------------------------------------------------------------


def test_ray_is_pinned_to_the_ray_the_tests_run():
    project = PYPROJECT["project"]
    running = Version(installed_version("ray"))
    for spec, extra in ((project["dependencies"], "data"),
                        (project["optional-dependencies"]["cluster"], "default")):
        ray = _requirement(spec, "ray")
        assert extra in ray.extras
        _pinned(ray)
        assert ray.specifier.contains(running), f"{ray} but the tests run ray {running}"


def test_faiss_builds_are_pinned_to_one_line():
    extras = PYPROJECT["project"]["optional-dependencies"]
    gpu = _pinned(_requirement(extras["gpu"], "faiss-gpu"))
    cpu = _requirement(extras["cpu"], "faiss-cpu")
    pin = _pinned(cpu)
    assert cpu.specifier.contains(Version(gpu)), f"{cpu} and faiss-gpu=={gpu} are different FAISS lines"
    assert Version(pin.rstrip(".*")).release[:2] == Version(gpu).release[:2]


# --- Makefile -----------------------------------------------------------------------------------


def _make(*args: str, cwd: Path = ROOT) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(cwd), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_torch_index_url_reaches_pip_as_its_own_argument(tmp_path):
    url = "https://download.pytorch.org/whl/cu128"
    lines = _make("-n", f"VENV={tmp_path / 'venv'}", "TORCH_SPEC=torch==2.13.0", f"TORCH_INDEX_URL={url}", "venv")
    torch = [shlex.split(line) for line in lines if "torch==2.13.0" in line]
    assert len(torch) == 1, lines
    words = torch[0]
    assert words[words.index("install"):] == ["install", "-q", "torch==2.13.0", "--index-url", url], words
    # the default (CI's fresh clone): PyPI, no index option at all
    default = [line for line in _make("-n", f"VENV={tmp_path / 'venv'}", "venv") if "torch" in line]
    assert default and not any("index-url" in line for line in default), default


FAKE_PYTHON = """#!{python}
# A stand-in venv python: records pip's calls and keeps the installed FAISS builds in a JSON file.
import json, pathlib, sys
state = pathlib.Path(__file__).with_name("installed.json")
installed = set(json.loads(state.read_text())) if state.exists() else set()
args = [a for a in sys.argv[1:] if a not in ("-q", "-y")]
with open(state.with_name("calls.log"), "a") as log:
    log.write(" ".join(args) + "\\n")
assert args[:2] == ["-m", "pip"], args
command, names = args[2], args[3:]
if command == "show":
    sys.exit(0 if names[0] in installed else 1)
if command == "uninstall":
    installed -= set(names)
if command == "install":
    extra = next(name for name in names if "[" in name).split("[")[1].split(",")[0]
    if ("faiss-cpu" in installed or "faiss-gpu" in installed) and "faiss-" + extra not in installed:
        sys.exit("both FAISS builds would be installed")
    installed.add("faiss-" + extra)
state.write_text(json.dumps(sorted(installed)))
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("before", [["faiss-cpu"], ["faiss-cpu", "faiss-gpu"]])
def test_switching_faiss_extra_replaces_the_other_build(tmp_path, before):
    """FAISS_EXTRA=gpu on a cpu .venv: faiss-cpu goes before faiss-gpu comes (also from a venv that
    already has both, as the old Makefile left it), and back; the stamps follow."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    (venv / "bin" / "installed.json").write_text(json.dumps(before))
    (venv / ".installed-cpu").touch()
    dry = _make("-n", f"VENV={venv}", "FAISS_EXTRA=gpu", "venv")
    uninstall = [i for i, line in enumerate(dry) if "uninstall" in line and "faiss-cpu" in line]
    install = [i for i, line in enumerate(dry) if 'install -q -e ".[gpu,' in line]
    assert uninstall and install and uninstall[0] < install[0], f"faiss-cpu is not uninstalled first: {dry}"

    _make(f"VENV={venv}", "FAISS_EXTRA=gpu", "venv")
    assert json.loads((venv / "bin" / "installed.json").read_text()) == ["faiss-gpu"]
    assert (venv / ".installed-gpu").exists() and not (venv / ".installed-cpu").exists()
    _make(f"VENV={venv}", "FAISS_EXTRA=cpu", "venv")
    assert json.loads((venv / "bin" / "installed.json").read_text()) == ["faiss-cpu"]
    assert (venv / ".installed-cpu").exists() and not (venv / ".installed-gpu").exists()
    assert not any("pip" in line for line in _make(f"VENV={venv}", "FAISS_EXTRA=cpu", "venv"))  # done


def test_the_production_wheel_holds_the_product_and_needs_no_research_packages(tmp_path):
    """``pip install .`` installs the product alone: no research package in the wheel, no scikit-image
    among its requirements, the shipped weights of the codec and of the learned descriptor inside."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob("latentsweep-*.whl")))
    names = wheel.namelist()
    assert not [name for name in names if name.startswith("latentsweep_lab")]
    for weights in ("latentsweep/codec/weights/bop-default.pt", "latentsweep/descriptors/weights/self-description.pt"):
        assert weights in names
    metadata = wheel.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
    required = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    unconditional = {requirement.name.lower() for requirement in required if requirement.marker is None}
    assert "torch" in unconditional and not unconditional & {"scikit-image", "latentsweep-lab"}
    assert "scikit-image" not in {requirement.name.lower() for requirement in required}


def test_the_command_line_imports_no_research_module():
    code = ("import sys, latentsweep.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('latentsweep_lab', 'skimage')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_help_lists_the_workflow_in_order_and_research_commands_apart():
    """Installed with the research package (as `make venv` does), its commands join through the entry
    point under their own heading, after the night's commands in the order a night runs them."""
    result = subprocess.run([sys.executable, "-m", "latentsweep", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    workflow = ["ingest", "index", "sweep", "pull", "evaluate", "attribute", "compress", "decompress"]
    positions = [re.search(rf"│ {name}\s", text).start() for name in workflow]
    assert positions == sorted(positions), text
    research = text.index("Research and demo")
    assert positions[-1] < research
    assert all(text.index(f"│ {name} ") > research for name in ("demo", "make-corpus", "train-codec"))
