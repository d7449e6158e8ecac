"""Generate acgs_client.v1 (messages, gRPC stubs, .pyi) from the repository's protos/.

The descriptors keep their proto file names (``acgs/v1/governance.proto``), so a process
that also imports the server's ``acgs.v1`` shares one descriptor pool entry per file;
only the Python import lines are rewritten from ``acgs.v1`` to ``acgs_client.v1``.
Used by the package build (setup.py) and by ``make proto``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

_IMPORT = re.compile(rb"^from acgs\.v1 import ", re.MULTILINE)


def generate(protos: Path, out: Path) -> list[Path]:
    """Compile every ``protos/acgs/v1/*.proto`` into ``out`` (the acgs_client/v1 folder)."""
    from grpc_tools import protoc  # build-time dependency only

    sources = sorted((protos / "acgs" / "v1").glob("*.proto"))
    if not sources:
        raise SystemExit(f"gen_stubs: no .proto files under {protos}/acgs/v1")
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{protos}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, sources)]
        if protoc.main(args) != 0:
            raise SystemExit("gen_stubs: protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((Path(tmp) / "acgs" / "v1").iterdir()):
            target = out / path.name
            target.write_bytes(_IMPORT.sub(b"from acgs_client.v1 import ", path.read_bytes()))
            written.append(target)
    (out / "__init__.py").write_text('"""Generated from protos/acgs/v1 by gen_stubs.py."""\n')
    return written


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[1] / "protos",
             here / "src" / "acgs_client" / "v1")
