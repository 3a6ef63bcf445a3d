"""Installing like a package: the distribution's name, the constraints file every install is
held to, the CPU torch the Makefile names, and a core install (no test extras) that runs
`dynsys verify`."""

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TEST_ONLY = ("pytest", "xdist", "hypothesis", "torch", "transformers", "quantecon",
             "statsmodels", "jsonschema", "ruff")


def pins() -> dict[str, Version]:
    """constraints.txt as {canonical name: pinned version}; every line is NAME==VERSION."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            out[canonicalize_name(name)] = Version(version)
    return out


def test_the_distribution_is_dynsys_lm():
    """`dynsys` on PyPI is an unrelated project; the metadata every reader asks for is ours."""
    import dynsys

    assert PROJECT["name"] == dynsys.DISTRIBUTION == "dynsys-lm"
    assert importlib.metadata.version("dynsys-lm") == PROJECT["version"]
    assert importlib.metadata.entry_points(group="console_scripts", name="dynsys")


def test_constraints_pin_every_requirement_to_a_version_it_admits():
    """Core, test and dev requirements all pinned exactly, each pin inside the requirement's
    range; torch is the CPU build."""
    pinned = pins()
    extras = PROJECT["optional-dependencies"]
    for text in [*PROJECT["dependencies"], *extras["test"], *extras["dev"]]:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version, prereleases=True), (text, version)
    assert pinned["torch"].local == "cpu"


def test_the_environment_is_the_constrained_one():
    """What the tests run on is what constraints.txt says (make installs with -c); a package
    upgraded by hand shows here, and the file is regenerated from a tested .venv."""
    differ = []
    for name, version in pins().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed != version:
            differ.append(f"{name}: {installed} installed, {version} pinned")
    assert not differ, differ


def test_the_makefile_installs_with_the_constraints_and_cpu_torch(tmp_path):
    """Every pip install of `make test` (the README's, CI's) takes -c constraints.txt, and torch
    is named as torch==VERSION+cpu, whatever the machine's pip configuration."""
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={tmp_path}",
                           f"{tmp_path}/.test"], capture_output=True, text=True, check=True)
    installs = [line for line in plan.stdout.splitlines() if "pip install" in line]
    assert len(installs) == 3, plan.stdout
    assert all(" -c constraints.txt " in line for line in installs), installs
    torch = pins()["torch"]
    assert any(re.search(rf'--index-url \S+ "torch=={re.escape(str(torch))}"', line)
               for line in installs), installs


def test_verify_imports_no_test_package():
    """A core install (no [test] extra) runs `dynsys verify`: the CLI, every study, the test
    beds and the figures import with the test-only packages made unimportable."""
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TEST_ONLY!r}:
            raise ImportError(f"{{name}} is a test-only package")
sys.meta_path.insert(0, Block())
import dynsys.cli, dynsys.figstyle, dynsys.studies, dynsys.testbeds
for name in dynsys.studies.STUDIES:
    dynsys.studies.study(name)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
