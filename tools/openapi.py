"""`make openapi`: the OpenAPI (Swagger 2.0) document of the HTTP/JSON API, from the protos.

Usage: python tools/openapi.py [--out PATH] [--plugin-only]
Runs grpc-gateway's protoc-gen-openapiv2 over the public services' protos (the ones Envoy's
transcoder serves, from the topology) with docs/openapi/openapiv2.yaml and writes one merged
document, docs/openapi/leaky.swagger.json (ADR 0043). The plugin is built once with
`go install` from the Go module proxy and cached in $LEAKY_TOOLS_DIR (default
~/.cache/leaky-tokens/tools), outside the clone; --plugin-only prints its path.

The options below keep the document true to what Envoy answers (its transcoder's
print_options in services/leaky_tokens/gateway/envoy_config.py): proto3 JSON names
(json_names_for_fields), enums by name (enums_as_ints off), int64 as strings (the plugin's
default), google.rpc.Status errors (the default error response).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2"
VERSION = "v2.34.0"
CONFIG = ROOT / "docs" / "openapi" / "openapiv2.yaml"
OUT = ROOT / "docs" / "openapi" / "leaky.swagger.json"
OPTIONS = (
    "allow_merge=true",
    "merge_file_name=leaky",
    "json_names_for_fields=true",
    "openapi_naming_strategy=simple",
    "ignore_go_package_option=true",
    f"openapi_configuration={CONFIG}",
)


def tools_dir() -> Path:
    """The download cache, created on first use."""
    default = Path.home() / ".cache" / "leaky-tokens" / "tools"
    path = Path(os.environ.get("LEAKY_TOOLS_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_plugin() -> Path:
    """The cached protoc-gen-openapiv2 binary, built with `go install` if it is not there yet."""
    target = tools_dir() / f"protoc-gen-openapiv2-{VERSION}"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            "protoc-gen-openapiv2 is built from the Go module proxy and needs Go (1.22 or "
            "later): install it (https://go.dev/dl/ or apt-get install golang) and run again"
        )
    print(
        f"building protoc-gen-openapiv2 {VERSION} with {go} (once, cached in {target.parent})",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GOBIN": tmp, "GOFLAGS": "-trimpath"}
        subprocess.run([go, "install", f"{MODULE}@{VERSION}"], check=True, env=env)
        partial = target.with_suffix(".partial")
        shutil.move(Path(tmp) / "protoc-gen-openapiv2", partial)
    partial.replace(target)
    return target


def public_protos() -> list[str]:
    """The proto files declaring the services Envoy transcodes (the topology's)."""
    sys.path[:0] = [str(ROOT / "services"), str(ROOT / "gen")]
    from importlib import import_module

    from leaky_tokens.topology import SERVICES

    files = {import_module(s.proto_module).DESCRIPTOR.name for s in SERVICES if s.proto_services}
    return sorted(files, key=lambda f: (f != "leaky/auth/v1/auth.proto", f))  # auth: the info


def generate(out: Path) -> None:
    """Run protoc with the plugin and write the merged document to `out`."""
    plugin = ensure_plugin()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos")]
        argv += [f"--plugin=protoc-gen-openapiv2={plugin}", f"--openapiv2_out={tmp}"]
        argv += [f"--openapiv2_opt={','.join(OPTIONS)}", *public_protos()]
        subprocess.run(argv, check=True, cwd=ROOT / "protos")
        document = json.loads((Path(tmp) / "leaky.swagger.json").read_text())
    # Stable and reviewable: sorted keys, two-space indent, one trailing newline.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default {OUT.relative_to(ROOT)}")
    parser.add_argument("--plugin-only", action="store_true", help="print the plugin's path")
    args = parser.parse_args()
    if args.plugin_only:
        print(ensure_plugin())
        return
    generate(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
