"""minift installs its kernels as `minift.kernels`, never as a top-level `kernels`.

The name `kernels` belongs to Hugging Face's `kernels` distribution, which transformers and
bitsandbytes import when it is present; a top-level `kernels` from minift would shadow it (or
be overwritten by it). The checks run in one fresh interpreter whose working directory is
outside the repository, as a user's would be: run from the repository root, Python puts the root
on sys.path and `kernels/` would be found as a plain folder, which proves nothing about the install.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_REAL = os.path.realpath(REPO)

PROBE = """
import importlib.util, json
spec = importlib.util.find_spec("kernels")       # before anything else is imported
top_level = None if spec is None else [spec.origin, list(spec.submodule_search_locations or [])]
import minift, minift.kernels.cross_entropy as ce
import transformers, bitsandbytes
from transformers import Qwen2ForCausalLM
print(json.dumps({"kernels": top_level, "ce_file": ce.__file__, "minift_file": minift.__file__,
                  "ce_fn": ce.linear_cross_entropy.__name__,
                  "versions": [transformers.__version__, bitsandbytes.__version__]}))
"""


def _pythonpath_without_the_repo() -> str:
    """The parent's PYTHONPATH less any entry inside this repository: packages installed with
    `pip install --target DIR` + PYTHONPATH=DIR (bitsandbytes on the GPU image) stay importable,
    while minift itself must come from the install, not from the source folder."""
    def inside_repo(entry: str) -> bool:
        path = os.path.realpath(entry or ".")
        return path == REPO_REAL or path.startswith(REPO_REAL + os.sep)
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(e for e in entries if e and not inside_repo(e))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("outside_repo")
    env = dict(os.environ, PYTHONPATH=_pythonpath_without_the_repo())
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_top_level_kernels_is_not_minifts(probe):
    if probe["kernels"] is not None:  # Hugging Face's kernels may be installed; it must not be our folder
        origin, locations = probe["kernels"]
        ours = os.path.realpath(os.path.join(REPO, "kernels"))
        assert not os.path.realpath(origin or "/nonexistent").startswith(ours), origin
        assert all(os.path.realpath(p) != ours for p in locations), locations


def test_minift_kernels_import_from_outside_the_repo(probe):
    assert probe["ce_fn"] == "linear_cross_entropy"
    assert os.path.realpath(probe["ce_file"]) == os.path.realpath(os.path.join(REPO, "kernels", "cross_entropy.py"))
    assert os.path.realpath(probe["minift_file"]) == os.path.realpath(os.path.join(REPO, "minift", "__init__.py"))


def test_transformers_and_bitsandbytes_still_import(probe):
    transformers_version, bnb_version = probe["versions"]
    assert transformers_version and bnb_version
