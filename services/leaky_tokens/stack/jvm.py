"""Finding a supported `java` and resolving a JVM server's jars from Maven Central."""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from leaky_tokens.runtime.paths import tools
from leaky_tokens.stack.component import ComponentError
from leaky_tokens.stack.debian import ensure_packages

TOOLS = tools()  # tools/<component>/pom.xml, shipped as package data
MARKER = ".complete"  # in a lib directory; holds the digest of the pom + properties behind it
MVN_TIMEOUT = 900.0

_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Maven 3.8 colours even in batch mode
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def java_major(java: str) -> int | None:
    """The major version `java -version` reports (8 for "1.8.0"), or None if it cannot run."""
    try:
        answer = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _JAVA_VERSION.search(answer.stderr + answer.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def java_candidates() -> list[str]:
    """Every `java` to try, in order: $JAVA_HOME's, PATH's, then those under /usr/lib/jvm."""
    candidates = []
    if java_home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(java_home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    # Any installed JDK; the caller's version check rejects unsupported ones (e.g. a Temurin 25).
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"))
    return list(dict.fromkeys(candidates))


def _first_java(majors: range, seen: dict[str, int | None]) -> str | None:
    for candidate in java_candidates():
        major = seen[candidate] = java_major(candidate)
        if major in majors:
            return str(Path(candidate).resolve())
    return None


@functools.cache
def find_java(majors: range, why: str) -> str:
    """A resolved `java` of a major in `majors` (else install Debian's); `why` heads errors."""
    seen: dict[str, int | None] = {}
    if java := _first_java(majors, seen):
        return java
    package = f"openjdk-{majors.start}-jre-headless"
    arch = _DEB_ARCH.get(platform.machine(), platform.machine())
    try:
        ensure_packages({f"/usr/lib/jvm/java-{majors.start}-openjdk-{arch}/bin/java": package})
    except ComponentError as exc:  # e.g. not root: the error below says what to install
        installing = f" ({exc})"
    else:
        installing = ""
        if java := _first_java(majors, seen):
            return java
    found = ", ".join(
        f"{java} ({f'Java {major}' if major else 'not runnable'})" for java, major in seen.items()
    )
    raise ComponentError(
        f"{why}; found {found or 'no java'}: apt-get install {package}, "
        f"or point JAVA_HOME at a JDK {majors.start}{installing}"
    )


def pom_digest(pom: Path, properties: dict[str, str]) -> str:
    """The SHA-256 of the pom's bytes and the -D properties it is resolved with."""
    digest = hashlib.sha256(pom.read_bytes())
    digest.update(json.dumps(properties, sort_keys=True).encode())
    return digest.hexdigest()


def maven_tail(output: str, chars: int = 1500) -> str:
    """Maven's output without colour codes or the trailing [Help 1] boilerplate, last `chars`."""
    return _ANSI.sub("", output).split("-> [Help 1]")[0].strip()[-chars:]


def resolve_jars(
    pom: Path,
    lib: Path,
    properties: dict[str, str] | None = None,
    *,
    java: str,
    expect: str,
) -> None:
    """Copy the pom's runtime jars into `lib` with mvn, once per pom + properties digest."""
    name = pom.parent.name  # the component: poms live in TOOLS / <component> / pom.xml
    properties = properties or {}
    if not pom.is_file():
        raise ComponentError(f"{name}: {pom} not found")
    digest = pom_digest(pom, properties)
    marker = lib / MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    ensure_packages({"mvn": "maven"})
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentError(f"{name}: mvn not found after installing maven")
    partial = lib.with_name(lib.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        *(f"-D{key}={value}" for key, value in properties.items()),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=MVN_TIMEOUT,
            env={**os.environ, "JAVA_HOME": str(Path(java).resolve().parents[1])},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ComponentError(f"{name}: resolving jars with Maven failed: {exc}") from exc
    if result.returncode != 0 or not list(partial.glob(expect)):
        shutil.rmtree(partial, ignore_errors=True)
        problem = f"exit {result.returncode}" if result.returncode else f"no {expect}"
        raise ComponentError(
            f"{name}: resolving jars with Maven failed ({problem}):\n"
            f"{maven_tail(result.stdout + result.stderr)}"
        )
    (partial / MARKER).write_text(digest + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
