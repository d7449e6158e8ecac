"""Build hook: generate acgs_client.v1 from the repository's protos/ before packaging.

Building from this repository (``pip install clients/python``) compiles ../../protos; an
sdist already carries the generated files, so a build from it compiles nothing.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self) -> None:
        protos = HERE.parents[1] / "protos"
        if (protos / "acgs" / "v1").is_dir():
            import sys

            sys.path.insert(0, str(HERE))
            from gen_stubs import generate

            generate(protos, HERE / "src" / "acgs_client" / "v1")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
