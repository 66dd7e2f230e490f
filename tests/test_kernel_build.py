"""The C-simulated kernel outside a source checkout: built with g++ into the user cache on first use, and an
installed wheel (kernel sources as package data) running a csim step from site-packages (issue #24 item 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from glitches.fpga_worker import kernel_build, kernel_csim
from glitches.services.runtime.errors import FailedPrecondition

ROOT = Path(__file__).resolve().parent.parent
KERNEL_FILES = {"Makefile", "glitches_abi.h", "glitches_attention.h", "glitches_csim.cpp", "glitches_decode.cpp",
                "glitches_hbm.h", "glitches_numerics.h", "glitches_tensors.h", "testbench.cpp", "vitis/hls.cfg",
                "vitis/u280_link.cfg"}


@pytest.fixture
def no_in_tree_library(monkeypatch, tmp_path):
    """As an installed package: no kernel/build/ library, the user cache in tmp_path, nothing loaded yet."""
    monkeypatch.setattr(kernel_csim, "LIBRARY", tmp_path / "absent" / kernel_build.LIBRARY_NAME)
    monkeypatch.setattr(kernel_csim, "_library", None)
    monkeypatch.setenv("GLITCHES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(kernel_build.LIBRARY_ENV, raising=False)
    return tmp_path / "cache"


def test_without_a_build_the_kernel_is_compiled_into_the_cache_on_first_use(no_in_tree_library):
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("needs g++ and make")
    lib = kernel_csim.library()
    built = kernel_build.cache_library()
    assert built.is_relative_to(no_in_tree_library) and built.parent.name == kernel_build.source_key()
    assert kernel_csim.constants(lib)["abi_version"] == 2
    stamp = built.stat().st_mtime_ns
    assert kernel_build.library_path(kernel_csim.LIBRARY) == built and built.stat().st_mtime_ns == stamp  # no rebuild
    assert not [p for p in built.parent.iterdir() if p.name != kernel_build.LIBRARY_NAME]  # no scratch left


def test_without_a_compiler_the_error_says_what_to_install(no_in_tree_library, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FailedPrecondition, match="install g\\+\\+ and make.*GLITCHES_CSIM_LIBRARY"):
        kernel_csim.library()


def test_an_explicit_library_path_must_exist(no_in_tree_library, monkeypatch, tmp_path):
    monkeypatch.setenv(kernel_build.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(FailedPrecondition, match="is not a file"):
        kernel_csim.library()


# Run by the scratch venv's interpreter, from a directory outside the checkout: the installed package's
# C simulation (built on first use) and its Python kernel agree bit for bit on a seeded tiny model.
INSTALLED_CHECK = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
import glitches
from glitches.fpga_worker import kernel_csim
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.weight_image import build_from_state_dict
assert glitches.__file__.startswith(sys.prefix), glitches.__file__
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5)
model = LlamaForCausalLM(config).eval()
image = build_from_state_dict(config, model.state_dict())
ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5))
with torch.inference_mode():
    cache = model(ids[:, :16], use_cache=True).past_key_values.layers
logits = []
for numerics in ("w4a8", "csim"):
    card = W4A8EmulatedCard(image, 32 * 2 * 1024 * 1024, numerics=numerics)
    card.reserve("r", 24)
    for layer, kv in enumerate(cache):
        card.write_kv("r", layer, 0, kv.keys, kv.values)
    card.seal("r", 16)
    logits.append(torch.stack([card.step("r", int(ids[0, p]), p) for p in range(16, 24)]))
assert torch.equal(logits[0].view(torch.int32), logits[1].view(torch.int32))
print("csim library", kernel_csim.library()._name)
"""


@pytest.mark.slow
def test_an_installed_wheel_builds_and_runs_the_c_simulation(tmp_path):
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("needs g++ and make")
    source = tmp_path / "src"  # a copy, so the wheel build writes nothing into the shared checkout
    shutil.copytree(ROOT / "glitches", source / "glitches",
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("glitches-*.whl")
    shipped = {n.removeprefix("glitches/fpga_worker/kernel/") for n in zipfile.ZipFile(wheel).namelist()
               if n.startswith("glitches/fpga_worker/kernel/")}
    assert shipped == KERNEL_FILES  # the sources and the Vitis files, no built library
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the dependencies (torch, transformers, ...) from this interpreter's site-packages, added after the venv's
    # own (a plain path line: the checkout's editable-install hook in that directory is not run)
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", kernel_build.LIBRARY_ENV)}
    env.update(GLITCHES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    run = subprocess.run([str(python), "-c", INSTALLED_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"csim library {tmp_path / 'cache' / 'kernel-csim'}" in run.stdout
    assert not (venv_site / "glitches" / "fpga_worker" / "kernel" / "build").exists()  # site-packages only read
