"""The library's front door: `help(derain_cli)` lists the API, `load_model`, and the README snippet runs."""

import pydoc
import re

import pytest
import torch
from PIL import Image

import derain_cli

from tests.conftest import REPO


def readme_library_snippet() -> str:
    """The ```python block of the README's "## Library" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_help_of_the_package_lists_the_public_api():
    text = pydoc.render_doc(derain_cli, renderer=pydoc.plaintext)
    for name in ("class DerainPipeline", "class SampleOptions", "class IRSDE", "class Cascade", "load_model(",
                 "load_unet("):
        assert name in text
    assert set(derain_cli.__all__) <= set(dir(derain_cli))


def test_every_name_the_readme_snippet_imports_from_derain_cli_exists():
    snippet = readme_library_snippet()
    names = [n.strip() for line in re.findall(r"^from derain_cli import (.+)$", snippet, re.M) for n in line.split(",")]
    assert names
    for name in names:
        assert getattr(derain_cli, name) is not None


def test_the_readme_library_snippet_runs_on_the_bundled_model(tmp_path, monkeypatch):
    small = tmp_path / "rainy.png"  # a crop of the example, so that the test stays fast
    Image.open(REPO / "examples" / "rainy" / "cat.png").crop((100, 100, 164, 148)).save(small)
    snippet = readme_library_snippet()
    assert '"examples/rainy/cat.png"' in snippet
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet.replace('"examples/rainy/cat.png"', repr(str(small))), "README.md", "exec"), scope)
    assert scope["clean"].size == (64, 48) and scope["clean"].mode == "RGB"
    for name in ("restored", "out", "x0"):
        assert scope[name].shape == scope["lq"].shape and torch.isfinite(scope[name]).all()
    assert list(tmp_path.iterdir()) == [small]  # the snippet writes nothing


def test_load_model_takes_a_manifest_name_or_a_checkpoint_file(plain_unet_file):
    from derain_cli.cascade import Cascade
    from derain_cli.pipeline import DerainPipeline

    assert isinstance(derain_cli.load_model("compact", device="cpu"), Cascade)
    single = derain_cli.load_model("compact", device="cpu", passes=1)
    assert isinstance(single, DerainPipeline) and single.card.steps == 1
    bare = derain_cli.load_model(plain_unet_file, device="cpu")
    assert isinstance(bare, DerainPipeline) and bare.card.sde.max_sigma == 10
    with pytest.raises(derain_cli.DerainError):
        derain_cli.load_model("no-such-model", device="cpu", offline=True)


def test_load_model_warns_about_a_device_fallback(plain_unet_file):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: no fallback")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        derain_cli.load_model(plain_unet_file, device="cuda")
