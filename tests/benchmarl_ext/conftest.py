"""Fixtures shared by the BenchMARL-level tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, as the runs it checks use (and the previous count restored):
    bit-exact comparisons of two trainings need the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
