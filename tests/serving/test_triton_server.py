"""A real Triton Inference Server (from nvidia-pytriton's wheel) serves the repository that
`export_triton` writes: 120 concurrent sequences of 10 ms blocks, with random start times and
lengths, each sequence's concatenated output against its offline output.

Runs under `make test-serving` (its own venv: the server's Python backend needs NumPy < 2);
elsewhere it skips, saying why."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import torchstreamer as pts
from tests.conftest import assert_matches
from torchstreamer.examples.models import vollo_cnn
from torchstreamer.serve.server import LocalTriton, serving_environment_problem

problem = serving_environment_problem()
pytestmark = pytest.mark.skipif(problem is not None, reason=f"make test-serving: {problem}")

SEQUENCES = 120
BLOCK = 160  # 10 ms at 16 kHz


def test_a_triton_server_streams_many_sequences_exactly(tmp_path: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpc

    model = vollo_cnn().eval()
    example = torch.randn(1, 32, 4 * BLOCK)
    pts.export_triton(model, example, tmp_path, name="vollo", block=BLOCK, max_batch_size=16,
                      onnx=False)  # fmt: skip
    rng = random.Random(0)
    signals = [torch.randn(1, 32, BLOCK * rng.randint(1, 12)) for _ in range(SEQUENCES)]
    delays = [rng.uniform(0.0, 2.0) for _ in range(SEQUENCES)]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(SEQUENCES)}
    latencies: list[float] = []
    lock = threading.Lock()

    with LocalTriton(tmp_path) as server:

        def run(index: int) -> None:
            client = grpc.InferenceServerClient(server.grpc_url)
            time.sleep(delays[index])
            x = signals[index]
            blocks = x.shape[-1] // BLOCK
            for b in range(blocks):
                data = x[..., b * BLOCK : (b + 1) * BLOCK].numpy()
                tensor = grpc.InferInput("in_signal", list(data.shape), "FP32")
                tensor.set_data_from_numpy(data)
                began = time.perf_counter()
                reply = client.infer(
                    "vollo", [tensor], sequence_id=1000 + index, sequence_start=b == 0,
                    sequence_end=b == blocks - 1, client_timeout=60,
                )  # fmt: skip
                with lock:
                    latencies.append(time.perf_counter() - began)
                results[index].append(reply.as_numpy("out_signal"))
                time.sleep(0.01)  # a real-time client: one block per 10 ms
            client.close()

        with ThreadPoolExecutor(max_workers=SEQUENCES) as workers:
            list(workers.map(run, range(SEQUENCES)))
    for index, x in enumerate(signals):
        outputs = results[index]
        assert all(o.nbytes for o in outputs), "the server returned empty outputs"
        y = torch.from_numpy(np.concatenate(outputs, -1))
        assert_matches(y, model(x).detach())
    latencies.sort()
    print(f"p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.1f} ms, {len(latencies)} requests, "
          f"server ready in {server.started_in:.1f} s")  # fmt: skip
