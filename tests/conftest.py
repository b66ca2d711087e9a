import os

import pytest

# Tests are small and CPU-bound; keep them deterministic and independent of the machine's cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def digits_teacher():
    from dfgen.teachers import load_teacher

    return load_teacher("digits")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """64 training and 32 test real digits in the dfgen format (what a student can learn quickly)."""
    import torch

    from dfgen.realdata import write_image_dataset
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    root = tmp_path_factory.mktemp("digits")
    to_uint8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    write_image_dataset(root / "train", to_uint8(split.train_images[:64]), split.train_labels[:64],
                        {"num_classes": 10}, shard_size=32)
    write_image_dataset(root / "test", to_uint8(split.test_images[:32]), split.test_labels[:32],
                        {"num_classes": 10}, shard_size=32)
    return root


@pytest.fixture
def dfgen_cli(capsys):
    """Runs `dfgen ARGS` in-process (main() is what the console script runs): (exit code, stdout, stderr)."""
    from dfgen.cli import main

    def run(args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
