"""scripts/bundle: the release tarball for GX devices (Venus OS >= 3.60, CPython 3.12).

The full build downloads wheels for armv7l and aarch64 with pip; it is skipped (with pip's own
words) only when pip cannot fetch a package at all. The --no-deps build needs no network.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from aggbatt.config import default_config, parse_config
from aggbatt.daemon.paths import PRODUCT_ID
from tests.gxhelpers import BUNDLE, REPO

# ELF e_machine values: EM_ARM = 40, EM_AARCH64 = 183.
ELF_MACHINE = {"armv7l": 40, "aarch64": 183}
EXECUTABLES = {"service/run", "service/log/run", "bin/aggbatt-ctl"}
sys.path.insert(0, str(REPO / "scripts" / "lib"))
import guiplugin  # noqa: E402 - the bundle's own plugin builder, found through the path above

RCC = guiplugin.find_rcc()


def project_version() -> str:
    match = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert match
    return match.group(1)


def python312() -> str | None:
    """A CPython 3.12 for the .pyc files, if this machine has one (pyenv or PATH)."""
    candidates = [*sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
                  "python3.12"]
    for exe in candidates:
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 12)":
            return exe
    return None


def unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        tar.extractall(dest)
    tops = {n.split("/")[0] for n in names}
    assert len(tops) == 1
    return dest / tops.pop()


def check_sums(release: Path) -> None:
    listed = {}
    for line in (release / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    files = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    assert set(listed) == files - {"SHA256SUMS"}
    for rel, digest in listed.items():
        assert hashlib.sha256((release / rel).read_bytes()).hexdigest() == digest, rel
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=release).returncode == 0


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bool]:
    work = tmp_path_factory.mktemp("bundle")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--platform", "manylinux2014_armv7l", "--python-version", "3.12", "--implementation",
         "cp", "-d", str(work / "probe"), "tomli"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("pip cannot fetch packages here: " + probe.stderr.strip().splitlines()[-1])
    compiler = python312()
    args = [sys.executable, str(BUNDLE), "--out", str(work / "dist")]
    args += ["--compile", compiler] if compiler else ["--compile", "none"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    tarball = Path(result.stdout.strip())
    return tarball, unpack(tarball, work / "unpacked"), compiler is not None


def test_tarball_and_sidecar_checksum(full_bundle: tuple[Path, Path, bool]) -> None:
    tarball, release, _ = full_bundle
    assert tarball.name == f"aggbatt-{project_version()}.tar.gz"
    assert release.name == f"aggbatt-{project_version()}"
    sidecar = Path(f"{tarball}.sha256").read_text()
    assert sidecar == f"{hashlib.sha256(tarball.read_bytes()).hexdigest()}  {tarball.name}\n"
    check_sums(release)


def test_layout_tags_and_modes(full_bundle: tuple[Path, Path, bool]) -> None:
    tarball, release, _ = full_bundle
    assert (release / "VERSION").read_text() == f"{project_version()}\n"
    assert (release / "PYTHON_TAG").read_text() == "cp312\n"
    assert (release / "app" / "aggbatt" / "cli.py").read_bytes() == (
        REPO / "src" / "aggbatt" / "cli.py").read_bytes()
    assert (release / "service" / "run").read_bytes() == (REPO / "service" / "run").read_bytes()
    assert (release / "bin" / "aggbatt-ctl").read_bytes() == (
        REPO / "scripts" / "aggbatt-ctl").read_bytes()
    check_gui_plugin(release, project_version())
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            expected = 0o755 if member.isdir() or rel in EXECUTABLES else 0o644
            assert stat.S_IMODE(member.mode) == expected, member.name
            assert (member.uid, member.gid) == (0, 0)


def test_pure_python_dependencies(full_bundle: tuple[Path, Path, bool]) -> None:
    _, release, _ = full_bundle
    common = release / "lib" / "common"
    for module in ("pydantic", "annotated_types", "typing_inspection", "tomli"):
        assert (common / module / "__init__.py").is_file(), module
    assert (common / "typing_extensions.py").is_file()
    assert not list(common.rglob("*.so")), "lib/common must be pure Python"
    assert not (common / "pydantic_core").exists()
    fast = release / "lib" / "dbus-fast"
    assert (fast / "dbus_fast" / "aio" / "message_bus.py").is_file()
    assert not list(fast.rglob("*.so")) and not list(fast.rglob("*.pxd"))
    assert len(list(fast.glob("dbus_fast-2.*.dist-info"))) == 1  # STRUCTs as lists, like Venus


def test_pydantic_core_per_arch_matches_pydantic(full_bundle: tuple[Path, Path, bool]) -> None:
    _, release, _ = full_bundle
    metadata = next((release / "lib" / "common").glob("pydantic-*.dist-info")) / "METADATA"
    required = re.search(r"(?m)^Requires-Dist: pydantic-core==(\S+)$", metadata.read_text())
    assert required
    for arch, machine in ELF_MACHINE.items():
        lib = release / "lib" / arch
        assert (lib / f"pydantic_core-{required.group(1)}.dist-info").is_dir(), arch
        (so,) = (lib / "pydantic_core").glob("_pydantic_core.cpython-312-*.so")
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        assert struct.unpack("<H", header[18:20])[0] == machine, arch


def test_precompiled_bytecode_is_never_rewritten(full_bundle: tuple[Path, Path, bool]) -> None:
    _, release, compiled = full_bundle
    pycs = list(release.rglob("*.pyc"))
    if not compiled:
        assert pycs == []
        pytest.skip("no CPython 3.12 on this machine to precompile with")
    cache = release / "app" / "aggbatt" / "config" / "__pycache__"
    assert (cache / "__init__.cpython-312.pyc").is_file()
    assert all(p.name.endswith(".cpython-312.pyc") for p in pycs)
    # PEP 552 flags: 1 = hash-based without source check ("unchecked-hash").
    assert {struct.unpack("<I", p.read_bytes()[4:8])[0] for p in pycs} == {1}


def test_bundled_code_runs_with_the_pure_dbus_fast(full_bundle: tuple[Path, Path, bool],
                                                   bus_address: str) -> None:
    """Our code, the bundled pydantic and the bundled pure-Python dbus-fast work together (on
    this machine's Python and pydantic-core, which the pins match)."""
    _, release, _ = full_bundle
    import pydantic_core

    bundled = re.search(r"(?m)^Requires-Dist: pydantic-core==(\S+)$", next(
        (release / "lib" / "common").glob("pydantic-*.dist-info")).joinpath("METADATA").read_text())
    if bundled is None or bundled.group(1) != pydantic_core.__version__:
        pytest.skip("this Python's pydantic-core differs from the bundled pydantic's pin")
    script = (
        "import asyncio, dbus_fast.message, pydantic\n"
        "from dbus_fast.aio import MessageBus\n"
        "from aggbatt.config import default_config\n"
        "async def main():\n"
        f"    bus = await MessageBus(bus_address={bus_address!r}).connect()\n"
        "    print(bus.unique_name.startswith(':'), dbus_fast.message.__file__, pydantic.__file__)\n"
        "    bus.disconnect()\n"
        "default_config()\n"
        "asyncio.run(main())\n")
    path = os.pathsep.join(str(release / p) for p in ("app", "lib/common", "lib/dbus-fast"))
    result = subprocess.run([sys.executable, "-s", "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1"),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    connected, message_module, pydantic_module = result.stdout.split()
    assert connected == "True"
    assert message_module == str(release / "lib" / "dbus-fast" / "dbus_fast" / "message.py")
    assert pydantic_module.startswith(str(release / "lib" / "common" / "pydantic"))


def test_no_deps_build_and_commented_config(tmp_path: Path) -> None:
    args = [sys.executable, str(BUNDLE), "--no-deps", "--compile", "none", "--python-tag", "cp311",
            "--version", "7.0.0+test", "--out", str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    tarball = Path(first.stdout.strip())
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    # Same tree, same bytes: the tarball is reproducible.
    assert subprocess.run(args, capture_output=True, timeout=60).returncode == 0
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == digest
    release = unpack(tarball, tmp_path / "unpacked")
    check_sums(release)
    assert not (release / "lib").exists()
    assert (release / "PYTHON_TAG").read_text() == "cp311\n"
    example = (release / "config.example.toml").read_text()
    assigned = [line for line in example.splitlines()
                if line.strip() and not line.startswith(("#", "["))]
    assert assigned == []  # every option commented out: the user's file sets nothing yet
    assert "# max_charge_current = 200.0" in example
    assert parse_config(example) == default_config()


def check_gui_plugin(release: Path, version: str) -> None:
    plugin = json.loads((release / "gui-v2" / "aggbatt.json").read_text())
    assert plugin["name"] == "aggbatt" and plugin["version"] == version
    assert {i["productId"] for i in plugin["integrations"]} == {f"0x{PRODUCT_ID:X}"}
    resource = base64.b64decode(plugin["resource"])
    assert resource.startswith(b"qres")  # a Qt binary resource, as gui-v2 registers it


@pytest.mark.skipif(RCC is None, reason="no Qt rcc (the gui extra; scripts/test installs it)")
def test_the_release_carries_the_gui_plugin(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BUNDLE), "--no-deps", "--compile", "none",
                             "--version", "7.0.1", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    release = unpack(Path(result.stdout.strip()), tmp_path / "unpacked")
    check_gui_plugin(release, "7.0.1")
    assert "gui-v2 plugin aggbatt" in (release / "BUNDLE").read_text()


def test_a_full_release_without_rcc_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "AGGBATT_RCC": str(tmp_path / "no-rcc")}
    result = subprocess.run([sys.executable, str(BUNDLE), "--compile", "none", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "rcc" in result.stderr


def test_bad_arguments(tmp_path: Path) -> None:
    for extra, message in ((["--version", "../evil"], "letters, digits"),
                           (["--python-tag", "py3"], "not a CPython tag")):
        result = subprocess.run([sys.executable, str(BUNDLE), "--no-deps", "--compile", "none",
                                 "--out", str(tmp_path), *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert message in result.stderr
