"""One compute thread for the clustering tests.

The tests use small matrices, where multi-threaded BLAS / OpenMP gains nothing and, on a shared
2-core machine, spin-waiting thread pools make each tiny GEMM take milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from clusterfit.cluster.kmeans import _import_faiss


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    faiss = _import_faiss()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    if faiss is not None:
        faiss_before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_before)
