"""Build hook: the wheel carries the repository's top-level weights_manifest.json inside the package.

The manifest has one home, the top level of the repository; derain_cli.weights.bundled_manifest
reads it there in a source checkout (editable installs included) and, in an installed wheel, from
the copy this hook puts at derain_cli/weights_manifest.json. Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MANIFEST = "weights_manifest.json"


class BuildWithManifest(build_py):
    """build_py that also copies the top-level manifest into the built package (not needed when editable)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(MANIFEST, str(self._target()))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(self._target())]

    def _target(self) -> Path:
        return Path(self.build_lib) / "derain_cli" / MANIFEST


setup(cmdclass={"build_py": BuildWithManifest})
