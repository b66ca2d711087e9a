"""`--mode auto`, the default: which mode a teacher gets, the BN weight that comes with it, options that make the
intent clear, and folders that resume in the mode their shards were made in."""

from __future__ import annotations

from pathlib import Path

import dfgen
from benchmarks import cifar_nets
from dfgen import mode_choice
from dfgen.amortized_settings import COLOUR_GENERATOR_BN, GREY_GENERATOR_BN
from dfgen.config import SynthesisConfig, build_config
from dfgen.mode_choice import auto_mode, resolve_mode
from dfgen.outdir import claimed_mode
from dfgen.runplan import prepare

# Tiny generator runs: batches of 2 classes x 2 images, shards of 4; flips and distances given, so no probe runs.
GENERATOR = {"steps": 2, "warmup_steps": 3, "width": 2, "latent": 8, "chains": 1}
TINY = dict(teacher="digits", n=4, batch_size=4, shard_size=4, flip="off", losses={"ep_reach": 0.2, "margin": 0.34},
            generator=GENERATOR, quiet=True)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


def test_auto_takes_the_generator_up_to_the_measured_size_and_pixels_above_it():
    assert auto_mode(28) == auto_mode(32) == "generator"
    assert auto_mode(33) == auto_mode(64) == auto_mode(224) == "pixels"


def test_pixel_mode_options_and_generator_options_decide_auto_at_once():
    assert build_config(None).mode == "auto"
    assert SynthesisConfig().mode == "auto"
    assert build_config(None, schedule="16:5").mode == "pixels"
    assert build_config(None, early_stop=0.01).mode == "pixels"
    given = build_config(None, gen_steps=5)
    assert (given.mode, given.generator.steps, given.mode_bn) == ("generator", 5, True)
    assert build_config(None, mode="generator", schedule="16:5").mode == "generator"  # a mode given stands


def test_the_generator_brings_its_own_bn_weight_for_the_teachers_channels_unless_one_is_given():
    config, note = resolve_mode(build_config(None, out="here"), 32, 1)
    assert (config.mode, config.losses.bn) == ("generator", GREY_GENERATOR_BN)
    assert "mode: generator" in note and "--mode pixels" in note
    assert resolve_mode(build_config(None), 32, 3)[0].losses.bn == COLOUR_GENERATOR_BN
    explicit = resolve_mode(build_config(None, mode="generator"), 224, 3)  # a mode given: no note, its own weight
    assert (explicit[0].mode, explicit[0].losses.bn, explicit[1]) == ("generator", COLOUR_GENERATOR_BN, None)
    assert resolve_mode(explicit[0], 224, 1)[0].losses.bn == COLOUR_GENERATOR_BN  # decided once, not again
    assert resolve_mode(build_config(None, bn=50.0), 32, 3)[0].losses.bn == 50.0
    assert resolve_mode(build_config(None, mode="generator", bn=100.0), 32, 1)[0].losses.bn == 100.0
    paper = resolve_mode(build_config(None, losses={"form": "paper"}), 32, 3)[0]
    assert paper.losses.bn == build_config(None, losses={"form": "paper"}).losses.bn  # the paper form keeps its own
    large, note = resolve_mode(build_config(None), 224, 3)
    assert (large.mode, large.losses.bn, note) == ("pixels", 100.0, None)
    pixels = build_config(None, mode="pixels")
    assert resolve_mode(pixels, 32, 3) == (pixels, None)


def test_a_colour_teacher_records_the_colour_weight_and_a_grey_one_the_grey_weight(tmp_path):
    def recorded(**options):
        run = prepare(build_config(None, out=str(tmp_path), n=10, **options), log=False)
        return run.config.mode, run.requested_content()["losses"]["bn"]

    colour = dict(teacher=f"{Path(cifar_nets.__file__)}:vgg8_bn", image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    assert recorded(**colour) == ("generator", COLOUR_GENERATOR_BN)
    assert recorded(**colour, mode="generator") == ("generator", COLOUR_GENERATOR_BN)
    assert recorded(**colour, mode="pixels") == ("pixels", 100.0)
    assert recorded(**colour, bn=10.0) == ("generator", 10.0)
    assert recorded(teacher="digits") == ("generator", GREY_GENERATOR_BN)


def test_auto_has_the_content_of_the_mode_it_picks_and_a_resumed_mode_wins(tmp_path):
    def content(**options):
        return prepare(build_config(None, teacher="digits", out=str(tmp_path), **options), log=False)

    auto, generator, pixels = content(), content(mode="generator"), content(mode="pixels")
    assert auto.config.mode == "generator"
    assert auto.requested_content() == generator.requested_content()
    assert "mode" not in pixels.requested_content()  # pixel folders made before auto existed keep their fingerprint
    resumed = prepare(build_config(None, teacher="digits", out=str(tmp_path)), log=False, resumed_mode="pixels")
    assert resumed.config.mode == "pixels"
    assert resumed.requested_content() == pixels.requested_content()
    assert any("as the shards already in" in note for note in resumed.notes)


def test_a_folder_resumes_in_its_mode_when_auto_would_now_take_the_other(tmp_path, monkeypatch):
    out = tmp_path / "made"
    made = SynthesisConfig(**TINY, out=str(out), mode="generator")
    dfgen.synthesize(made)
    first = shard_bytes(out)
    assert claimed_mode(out) == "generator" and claimed_mode(out, overwrite=True) is None
    monkeypatch.setattr(mode_choice, "GENERATOR_MAX_SIZE", 16)  # a new folder would now be made in pixels
    assert resolve_mode(SynthesisConfig(**TINY, out=str(tmp_path / "new")), 32, 1)[0].mode == "pixels"
    again = dfgen.synthesize(SynthesisConfig(**TINY, out=str(out)))  # auto: the generator's weight, as made
    assert again.complete and again.shards_made == [] and again.shards_skipped == [0]
    assert shard_bytes(out) == first


def test_a_pixel_folder_is_claimed_as_pixels(tmp_path):
    out = tmp_path / "pixels"
    dfgen.synthesize(build_config(None, **{**TINY, "generator": None}, schedule="16:2", out=str(out)))
    assert claimed_mode(out) == "pixels"
    assert claimed_mode(tmp_path / "none") is None
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    assert claimed_mode(tmp_path / "damaged") is None  # the folder checks refuse it, naming the file
