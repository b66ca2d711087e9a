"""distill under faults: bad values where they enter, bad launcher variables, unreadable images (skipped, counted,
named, never a lost epoch), stuck loaders, symbolic-link loops, data that does not fit the run, crafted
checkpoints, and data that moved between a run and its resume."""

import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from distill import DistillError, build_config, pipeline, train
from distill import data as data_module
from distill.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint
from distill.data import eval_loader, open_run_data
from distill.distributed import launch_from_env
from distill.evaluation import evaluate
from distill.pipeline import BadShards, StreamSettings, decode_samples, dense_logits, train_loader
from distill.run_log import write_config
from distill.sources import open_source, subset_counts
from distill.student import create_student

ROOT = Path(__file__).resolve().parents[1]
DIGITS_PRESET = ROOT / "configs" / "distill_digits.yaml"


def tiny_config(shards, out, **overrides):
    settings = dict(shards=[str(s) for s in shards], out=str(out), epochs=1, stage1_epochs=0, batch_size=16,
                    warmup_epochs=1, device="cpu", workers=0, quiet=True, attn_images=0, shuffle_buffer=32,
                    eval_every=1)
    settings.update(overrides)
    return build_config(DIGITS_PRESET, **settings)


def png(value: int = 0, size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, "PNG")
    return buffer.getvalue()


def folder(root: Path, classes: int = 10, per_class: int = 6) -> Path:
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / str(c) / f"{i}.png").write_bytes(png(25 * c))
    return root


def copy_folder(digits_dataset: Path, target: Path) -> Path:
    """The images of a dfgen dataset as an ImageFolder."""
    import webdataset as wds

    for url in open_source(digits_dataset).urls:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            (target / sample["cls"].decode()).mkdir(parents=True, exist_ok=True)
            (target / sample["cls"].decode() / f"{sample['__key__']}.png").write_bytes(sample["png"])
    return target


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize(("options", "message"), [
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr=-1.0), "--lr must be positive"),
    (dict(lr=float("inf")), "lr must be a finite number"),
    (dict(lr="fast"), "lr must be a number, got 'fast'"),
    (dict(warmup_epochs=-5), "warmup_epochs must be >= 0, got -5"),
    (dict(smoothing=2), r"smoothing must be in \[0, 1\), got 2"),
    (dict(mixup=-1), "mixup must be >= 0, got -1"),
    (dict(epochs=2.5), "epochs must be a whole number, got 2.5"),
    (dict(ema=3), "ema must be true or false"),
    (dict(scale=(0.5, 0.1)), "scale must be"),
    (dict(model_kwargs={1: 2}), "model_kwargs: keys must be names, got 1"),
    (dict(model_kwargs={"a": float("nan")}), "model_kwargs: numbers must be finite"),
])
def test_bad_values_are_refused_where_they_enter(options, message):
    with pytest.raises(DistillError, match=message):
        build_config(None, shards=["x"], **options)


def test_mix_with_nan_is_refused():
    with pytest.raises(DistillError, match="--mix must be finite numbers"):
        build_config(None, shards=["a", "b"], mix="nan,1")


def test_numbers_written_as_text_are_numbers_and_a_runs_config_json_is_a_preset(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("shards: [x]\nlr: 5e-4\nepochs: '10'\nstage1_epochs: 4\nema: 'true'\n")
    cfg = build_config(preset)
    assert (cfg.lr, cfg.epochs, cfg.ema) == (5e-4, 10, True) and isinstance(cfg.epochs, int)
    assert build_config(None, shards=[tmp_path], val=tmp_path, out=tmp_path / "o").out == str(tmp_path / "o")
    write_config(tmp_path, cfg)  # what a run writes into its directory
    assert build_config(tmp_path / "config.json").content() == cfg.content()


def test_yaml_keys_nesting_and_alias_bombs_are_one_line_errors(tmp_path):
    cases = {
        "intkey.yaml": ("shards: [x]\n5: 3\n", "option names must be text, got 5"),
        "deep.yaml": ("shards: [x]\nmodel_kwargs: {a: " + "[" * 3000 + "]" * 3000 + "}\n", "nested"),
        "deep16.yaml": ("shards: [x]\nmodel_kwargs: {a: " + "[" * 20 + "]" * 20 + "}\n", "deeper than 16 levels"),
        "bomb.yaml": ("shards: [x]\nmodel_kwargs:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                      + "".join(f"  {k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n"
                                for p, k in zip("abcdefgh", "bcdefghi", strict=True)),
                      "more than 10,000 values"),
        "text.yaml": ("shards: [x]\nsmoothing: lots\n", "smoothing must be a number, got 'lots'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DistillError, match=message):
            build_config(tmp_path / name)


# ------------------------------------------------------------------------------------------------ launchers
def test_launcher_variables_are_checked_before_any_process_group():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert launch_from_env(torchrun) == (1, 1, 2)
    assert launch_from_env({}) == (0, 0, 1)
    assert launch_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "MASTER_ADDR": "n",
                            "MASTER_PORT": "1234"}) == (1, 3, 4)
    with pytest.raises(DistillError, match=r"RANK=2 but WORLD_SIZE=2: ranks run 0..1"):
        launch_from_env({**torchrun, "RANK": "2"})
    with pytest.raises(DistillError, match=r"WORLD_SIZE=2 processes but no rendezvous address \(MASTER_ADDR and "
                                           r"MASTER_PORT unset\)"):
        launch_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistillError, match=r"SLURM_NTASKS=4 processes but no rendezvous"):  # sbatch without srun
        launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})
    with pytest.raises(DistillError, match="RANK='abc' is not a whole number"):
        launch_from_env({**torchrun, "RANK": "abc"})
    with pytest.raises(DistillError, match="MASTER_PORT='http' is not a port number"):
        launch_from_env({**torchrun, "MASTER_PORT": "http"})


def test_rank_abc_is_one_line_from_the_command_line(digits, tmp_path, capsys, monkeypatch):
    from distill.cli import main

    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--shards", str(digits / "train"), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("Error: RANK='abc'") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ unreadable images
def test_unreadable_validation_image_costs_no_epoch_and_is_named(digits, tmp_path, capsys):
    val = copy_folder(digits / "test", tmp_path / "val")
    broken = sorted((val / "3").iterdir())[0]
    broken.write_bytes(b"not an image")
    out = tmp_path / "run"
    with pytest.raises(DistillError, match=rf"1 unreadable evaluation images \({broken}\), more than the 0 allowed"):
        train(tiny_config([digits / "train"], out, val=str(val), epochs=2, max_bad_images=0))
    # the trained epoch was saved before its evaluation failed: resuming goes on with epoch 2
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and metrics(out)[0]["epoch"] == 1
    capsys.readouterr()
    summary = train(tiny_config([digits / "train"], out, val=str(val), epochs=2, max_bad_images=5, resume=True))
    assert summary["epoch"] == 2
    last = metrics(out)[-1]
    assert last["epoch"] == 2 and last["val_n"] == 31 and last["val_skipped"] == 1
    err = capsys.readouterr().err
    assert f"skipped in validation: 1 unreadable image(s) ({broken})" in err


def test_unreadable_training_image_is_skipped_not_a_failed_start(digits, tmp_path, capsys):
    train_dir = copy_folder(digits / "train", tmp_path / "train")
    first = sorted((train_dir / "0").iterdir())[0]  # the first file: the start-up reads and probes it
    first.write_bytes(b"\x89PNG truncated")
    summary = train(tiny_config([train_dir], tmp_path / "run", attn_images=16, max_bad_images=1))
    assert summary["epoch"] == 1
    err = capsys.readouterr().err
    assert f"skipping unreadable image {first}" in err and f"1 unreadable image(s) ({first})" in err
    assert metrics(tmp_path / "run")[0]["bad_shards"] == 1
    (sorted((train_dir / "1").iterdir())[0]).write_bytes(b"")  # a second one, past the limit
    with pytest.raises(DistillError, match=r"2 unreadable training images .* more than the 1 allowed"):
        train(tiny_config([train_dir], tmp_path / "again", max_bad_images=1))


def test_an_undecodable_image_in_evaluation_shards_is_skipped_and_a_wrong_label_named(tmp_path):
    import webdataset as wds

    from distill.data import Unreadable, eval_dataset

    tar = tmp_path / "val-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        for key, image, label in (("a", png(), b"1"), ("b", b"garbage", b"2"), ("c", png(), b"3")):
            sink.write({"__key__": key, "png": image, "cls": label})
    items = list(eval_dataset(open_source(str(tar), num_classes=10), lambda image: torch.zeros(1), 1, 10))
    assert [item[1] for item in items if not isinstance(item, Unreadable)] == [1, 3]
    assert [item.name for item in items if isinstance(item, Unreadable)] == [f"{tar}:b"]
    with pytest.raises(DistillError, match=rf"sample c of {tar} in the evaluation data: label 3 is outside the 3 "):
        list(eval_dataset(open_source(str(tar), num_classes=3), lambda image: torch.zeros(1), 1, 3))


def test_an_imagefolder_none_of_whose_images_decodes_is_an_error_not_a_hang(tmp_path):
    root = folder(tmp_path / "train", classes=2, per_class=3)
    info = open_source(root)
    for path in root.rglob("*.png"):  # broken after the start-up check: met only while training
        path.write_bytes(b"garbage")
    settings = StreamSettings(seed="0", batch_size=2, num_classes=2, mode="L", transform=lambda image: torch.zeros(1),
                              shuffle_buffer=4)
    with pytest.raises(DistillError, match=f"no image of the ImageFolder {root} can be read"):
        next(iter(train_loader([info], settings, steps=1, workers=0, known_bad=set())))
    with pytest.raises(DistillError, match=f"none of the first 6 images of {root} can be read"):
        open_source(root)


def test_a_stuck_loader_times_out_with_a_message(tmp_path, monkeypatch):
    import time

    info = open_source(folder(tmp_path / "val", classes=2, per_class=2))
    monkeypatch.setattr(pipeline, "LOADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(data_module.FileEval, "__getitem__", lambda self, i: time.sleep(60))  # a dead mount
    loader = eval_loader(info, lambda image: torch.zeros(1, 4, 4), 1, 2, batch_size=2, workers=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with pytest.raises(DistillError, match="the evaluation data loader delivered no batch for 1 s"):
        evaluate({"model": model}, loader, torch.device("cpu"))


def test_a_symbolic_link_loop_is_one_line(tmp_path):
    root = folder(tmp_path / "train", classes=2, per_class=1)
    os.symlink("loop.png", root / "1" / "loop.png")
    with pytest.raises(DistillError, match=r"loop.png: Too many levels of symbolic links \(a symbolic link loop\?\)"):
        open_source(root)
    (root / "1" / "loop.png").unlink()
    os.symlink(root / "c", root / "c")
    with pytest.raises(DistillError, match="symbolic link loop"):
        open_source(root)


# ---------------------------------------------------------------------------------------------- data that does not fit
def test_fraction_takes_the_share_asked_for_of_a_small_imagefolder(tmp_path):
    root = folder(tmp_path / "train", classes=10, per_class=6)
    assert open_source(root, fraction=0.1).n == 6
    assert open_source(root, fraction=0.5).n == 30
    assert subset_counts([6] * 10, 0.1) == [1] * 6 + [0] * 4
    assert subset_counts([1300, 1300], 0.1) == [130, 130] and subset_counts([3, 1], 0.01) == [1, 0]


def test_flat_validation_labels_outside_the_classes_name_the_file(digits, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.png").write_bytes(png())
    (tmp_path / "labels.txt").write_text("0.png 1\n1.png 12\n2.png 3\n")
    cfg = tiny_config([digits / "train"], tmp_path / "run", val=str(flat), val_labels=str(tmp_path / "labels.txt"))
    with pytest.raises(DistillError, match=rf"{flat / '1.png'} has label 12 \({tmp_path / 'labels.txt'}\), outside "
                                           r"the 10 classes"):
        open_run_data(cfg)
    (tmp_path / "labels.txt").write_bytes(b"\x89PNG\x00\xff binary")
    with pytest.raises(DistillError, match="is not text of \"FILE LABEL\" lines"):
        open_run_data(cfg)


def test_hidden_causes_are_named(tmp_path):
    from dfgen.realdata import write_image_dataset

    images = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    data = write_image_dataset(tmp_path / "data", images, torch.arange(8), {"num_classes": 10}, shard_size=4)
    settings = StreamSettings(seed="0", batch_size=2, num_classes=5, mode="L", transform=lambda image: torch.zeros(1),
                              shuffle_buffer=1)
    with pytest.raises(DistillError, match=r"label [5-7] is outside the 5 classes \(0..4\)"):
        for _ in train_loader([open_source(data)], settings, steps=4, workers=0, known_bad=set()):
            pass

    soft = dict(settings.__dict__, num_classes=10, soft=True)
    stored = [SimpleNamespace(soft_k=2)]

    def sample(meta):
        return {"image": png(), "cls": b"3", "json": json.dumps(meta).encode(), "key": "000007", "url": "s.tar",
                "source": 0}

    cases = [({}, "no stored soft labels"), ({"soft": {"index": [3, 4], "logit": [1.0]}}, "wrongly sized"),
             ({"soft": {"index": [3, 11], "logit": [1.0, 0.5]}}, r"index outside 0..9 \(the 10 classes\)"),
             ({"soft": {"index": [3, 4], "logit": [float("nan"), 0.5]}}, r"stored logits are not finite \(nan")]
    for meta, message in cases:
        with pytest.raises(DistillError, match=f"sample 000007 of s.tar: .*{message}"):
            next(decode_samples(iter([sample(meta)]), stored, StreamSettings(**soft), BadShards()))
    assert torch.equal(dense_logits({"index": [1], "logit": [2.0]}, 0, 3, True), torch.tensor([-float("inf"), 2.0,
                                                                                                -float("inf")]))


def test_crafted_checkpoints_name_the_keys(tmp_path, capsys):
    from distill.cli import main

    model = create_student("dearkd_micro_patch4_32", 10, 1, None, 0.0, {})
    state = model.state_dict()
    missing = sorted(state)[0]
    state.pop(missing)
    state["head.weight"] = torch.zeros(3, 3)
    args = {"name": "dearkd_micro_patch4_32", "num_classes": 10, "in_chans": 1, "img_size": None, "model_kwargs": {}}
    torch.save({"format": CHECKPOINT_FORMAT, "model_args": json.dumps(args), "model": state}, tmp_path / "bad.pt")
    with pytest.raises(DistillError, match=rf"do not fit the student they describe: missing {missing}; wrong shape "
                                           r"head.weight \(3x3 stored, 10x\d+ expected\)"):
        model_from_checkpoint(load_checkpoint(tmp_path / "bad.pt"))
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}}, tmp_path / "noargs.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--checkpoint", str(tmp_path / "noargs.pt"), "--data", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "model_args are missing or malformed" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ moved data
def test_resume_after_the_data_moved_and_not_on_other_data(digits, tmp_path, capsys):
    staged = tmp_path / "staged"
    shutil.copytree(digits / "train", staged)
    out = tmp_path / "run"
    train(tiny_config([staged], out, val=str(digits / "test"), epochs=2, stop_after=1))
    moved = tmp_path / "scratch" / "train"  # staged again elsewhere (node-local disk)
    moved.parent.mkdir()
    shutil.move(staged, moved)
    capsys.readouterr()
    summary = train(tiny_config([moved], out, val=str(digits / "test"), epochs=2, resume=True))
    assert summary["epoch"] == 2 and "the data moved (shards), with the same content" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(moved, other)
    first_shard = other / "shards" / "shard-000000.tar"
    index = json.loads((other / "index.json").read_text())
    index["shardlist"][0]["sha256"] = "0" * 64  # same names and counts, other bytes
    (other / "index.json").write_text(json.dumps(index))
    assert first_shard.is_file()
    with pytest.raises(DistillError, match=r"made with other data \(shards hold different images\)"):
        train(tiny_config([other], out, val=str(digits / "test"), epochs=2, resume=True))
    with pytest.raises(DistillError, match="made with other data"):
        train(tiny_config([digits / "test"], out, val=str(digits / "test"), epochs=2, resume=True))
