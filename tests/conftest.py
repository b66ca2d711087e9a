import os

import pytest

# Tests are small and CPU-bound; keep them deterministic and independent of the machine's cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def digits_teacher():
    from dfgen.teachers import load_teacher

    return load_teacher("digits")
