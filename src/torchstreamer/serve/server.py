"""Run a local Triton Inference Server on a model repository: the ``tritonserver`` binary that
the ``nvidia-pytriton`` wheel carries, with its Python backend, on 127.0.0.1.

For tests and benchmarks on one machine; production servers run NVIDIA's container. What the
Python backend needs, found the hard way (docs/serving.md):

- its stub (``triton_python_backend_stub``) must sit beside ``libtriton_python.so``;
- the stub imports packages from the environment of the first ``python3`` on ``PATH``, and
  that environment needs NumPy < 2 (with NumPy 2 every output comes back empty);
- the stub links ``libpython3.11.so`` dynamically: ``LD_LIBRARY_PATH`` must lead to the same
  Python build as that environment's standard library.

Example (needs ``make test-serving``'s environment)::

    with LocalTriton("repository") as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

from torchstreamer.errors import StreamError

__all__ = ["LocalTriton", "serving_environment_problem"]


def serving_environment_problem() -> Optional[str]:
    """Why a local Triton server cannot run Python-backend models from this Python, or
    ``None`` when it can."""
    try:
        import numpy
        import pytriton  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed here (make test-serving installs the server)"
    if int(numpy.__version__.split(".")[0]) >= 2:
        return (
            f"NumPy {numpy.__version__} is installed here; the Python backend stub of "
            "nvidia-pytriton 0.7.0 is built against NumPy 1 and returns empty outputs with NumPy 2"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalTriton:
    """A ``tritonserver`` process serving ``repository`` until the ``with`` block ends.

    Attributes:
        http_url, grpc_url: ``127.0.0.1:PORT`` for tritonclient.
        log: the server's log file.
        started_in: seconds from launch to ready.
    """

    def __init__(self, repository: Union[str, Path], ready_within: float = 60.0) -> None:
        problem = serving_environment_problem()
        if problem:
            raise StreamError(f"A local Triton server cannot run: {problem}.")
        import pytriton

        self.repository = Path(repository)
        self.ready_within = ready_within
        self._package = Path(pytriton.__file__).parent / "tritonserver"
        self._libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        self._work = Path(tempfile.mkdtemp(prefix="torchstreamer-triton-"))
        self.log = self._work / "server.log"
        self._process: Optional[subprocess.Popen[bytes]] = None
        self.started_in = 0.0
        self.http_url = self.grpc_url = ""

    def _backends(self) -> Path:
        """A backend folder like pytriton's own: the Python backend with its stub beside it."""
        backends = self._work / "backends"
        python = backends / "python"
        python.mkdir(parents=True)
        for item in (self._package / "backends" / "python").iterdir():
            (python / item.name).symlink_to(item)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self._package / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise StreamError(f"nvidia-pytriton has no Python backend stub for Python {version}.")
        shutil.copy2(stub, python / stub.name)
        (python / stub.name).chmod(0o755)
        return backends

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [p for p in (libdir, str(self._libs), env.get("LD_LIBRARY_PATH", "")) if p]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def __enter__(self) -> LocalTriton:
        backends = self._backends()
        http, grpc, metrics = _free_port(), _free_port(), _free_port()
        self.http_url, self.grpc_url = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        binary = self._package / "bin" / "tritonserver"
        binary.chmod(binary.stat().st_mode | 0o111)
        command = [
            str(binary), f"--model-repository={self.repository}",
            f"--backend-directory={backends}", f"--cache-directory={self._package / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={http}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--allow-metrics=false", f"--metrics-port={metrics}",
            f"--backend-config=python,shm-region-prefix-name=torchstreamer{os.getpid()}_{http}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
            "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
        ]  # fmt: skip
        began = time.perf_counter()
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._environment()
            )
        while time.perf_counter() - began < self.ready_within:
            if self._process.poll() is not None:
                self.__exit__(None, None, None)
                raise StreamError(f"tritonserver exited: {self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1):
                    self.started_in = time.perf_counter() - began
                    return self
            except OSError:
                time.sleep(0.1)
        tail = self.tail()
        self.__exit__(None, None, None)
        raise StreamError(f"tritonserver was not ready within {self.ready_within} s: {tail}")

    def tail(self, lines: int = 15) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        error: Optional[BaseException],
        trace: Optional[TracebackType],
    ) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._work / "backends", ignore_errors=True)
