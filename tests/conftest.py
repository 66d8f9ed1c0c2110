import os
import tempfile

# Generated kernels run on the CPU through Triton's interpreter. Triton decides how to build a
# @triton.jit function when the kernel module is imported, so set this before anything does.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The key that signs cache entries: a private one for the test run (and its subprocesses),
# never the user's ~/.config/attngen/cache.key.
os.environ.setdefault("ATTNGEN_CACHE_KEY_FILE",
                      os.path.join(tempfile.mkdtemp(prefix="attngen-key-"), "cache.key"))

from hypothesis import HealthCheck, settings

# `ci`: deterministic and bounded; `dev`: more examples, random. HYPOTHESIS_PROFILE picks.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=2000, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("attngen-cache")


@pytest.fixture
def interpreter(monkeypatch, kernel_cache):
    """Run generated kernels on the CPU through Triton's interpreter, with a private cache."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(kernel_cache))
