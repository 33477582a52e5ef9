"""One BLAS thread for the numpy products of a query.

Why: OpenBLAS's idle threads keep spinning for a while after a call, and on a small machine they starve
the sentence model (torch's own thread pool) of the next query: hybrid text search on 22,123 fashion-small
products, 2 cores, p50 95.7 ms with OpenBLAS's threads against 20.2 ms with one (two runs of
benchmarks/fashion_text_search.py; BENCHMARKS.md). A query's products are small (a matrix-vector product,
a few hundred photos through the category probe), so one thread costs little. threadpoolctl
(scikit-learn's own thread-pool control) does the limiting.
"""

from __future__ import annotations

import functools


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread."""
    return _controller().limit(limits=1, user_api="blas")
