"""A check shared by the top-k cache tests (stand-in engine and real vLLM engine against the HF cache)."""

import numpy as np


def assert_same_topk(got, want, *, atol: float, tail_atol: float = 1e-4) -> None:
    """Two ``TopkCache`` of the same rows agree: lengths and k, top-k log-probs within ``atol``, tail masses within
    ``tail_atol``, and token ids wherever the ranking has no near-tie (gaps > 1e-5 between neighbours)."""
    assert got.lengths == want.lengths and got.k == want.k
    for a, b in zip(got.logps, want.logps):
        np.testing.assert_allclose(a, b, atol=atol)
    for a, b in zip(got.tail_logps, want.tail_logps):
        np.testing.assert_allclose(a, b, atol=tail_atol)
    for a, b, logps in zip(got.ids, want.ids, want.logps):
        distinct = np.abs(np.diff(logps, axis=1)) > 1e-5
        assert (a[:, :-1][distinct] == b[:, :-1][distinct]).all()
