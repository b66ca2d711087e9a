"""CUDA-only checks (run by benchmarks/gpu_check.sh on a GPU machine; skipped elsewhere)."""

import pytest
import torch

from dfgen.config import LossWeights, SynthesisConfig
from dfgen.inversion import EngineSettings, InversionEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bf16_channels_last_engine_inverts_digits(digits_teacher):
    t = digits_teacher
    settings = EngineSettings(schedule=[(16, 60), (32, 60)], weights=LossWeights(), warmup=10, precision="bf16",
                              channels_last=True)
    engine = InversionEngine(t.model, t.mean, t.std, settings, torch.device("cuda"))
    labels = torch.arange(10).repeat_interleave(2)
    result = engine.invert(labels, seed=3)
    assert (result.predicted == labels).float().mean() >= 0.9


def test_synthesize_on_cuda_resolves_bf16(tmp_path):
    from dfgen.runplan import prepare
    from dfgen.synthesize import synthesize

    config = SynthesisConfig(teacher="digits", n=20, out=str(tmp_path / "o"), schedule=[(8, 3), (16, 3)],
                             classes_per_batch=5, images_per_class=2, shard_size=10, warmup=1, quiet=True)
    run = prepare(config)
    assert run.device.type == "cuda" and run.precision == "bf16"
    assert synthesize(config).complete
