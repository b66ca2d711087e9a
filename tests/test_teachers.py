"""Teacher resolution, safe checkpoint loading and clear refusals."""

import pytest
import timm
import torch
import torchvision

from dfgen.errors import DfgenError
from dfgen.teachers import load_teacher, read_checkpoint, state_dict_sha256


class NotATensor:  # a pickled object of this class cannot be loaded with weights_only=True
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_unknown_teacher_suggests_close_names():
    with pytest.raises(DfgenError, match=r"unknown teacher 'resnet_18'.*resnet18"):
        load_teacher("resnet_18", pretrained=False)
    with pytest.raises(DfgenError, match="regnety_16gf"):
        load_teacher("regnety16gf", pretrained=False)


def test_teacher_without_batchnorm_is_refused():
    with pytest.raises(DfgenError, match="no BatchNorm2d"):
        load_teacher("alexnet", pretrained=False)


def test_missing_weights_file(tmp_path):
    with pytest.raises(DfgenError, match="not found"):
        load_teacher("resnet18", weights=tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(DfgenError, match="not a PyTorch checkpoint"):
        read_checkpoint(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotATensor()}, path)
    with pytest.raises(DfgenError, match="weights_only=True"):
        read_checkpoint(path)


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(DfgenError, match="not a state dict"):
        read_checkpoint(path)


def test_wrapped_state_dict_and_module_prefix_are_unwrapped(tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {"module.w": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_checkpoint(path)) == ["w"]


def test_torchvision_teacher_from_local_file(tmp_path):
    model = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    teacher = load_teacher("torchvision:resnet18", weights=path)
    assert teacher.source == "torchvision:resnet18"
    assert teacher.input_size == (3, 224, 224) and teacher.num_classes == 1000
    assert teacher.weights_sha256 == state_dict_sha256(model)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    # a name both libraries know resolves to timm, whose resnet18 takes the same keys
    assert load_teacher("resnet18", weights=path).source == "timm:resnet18"


def test_wrong_weights_for_the_model(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(DfgenError, match="do not fit"):
        load_teacher("torchvision:resnet34", weights=path)
    with pytest.raises(DfgenError, match="do not fit"):
        load_teacher("resnet34", weights=path)


def test_regnety_16gf_weights_in_timm_and_torchvision_key_format(tmp_path):
    """The paper's teacher from a local file, in either key format (random weights, no download)."""
    torch.manual_seed(0)
    tv_model = torchvision.models.regnet_y_16gf().eval()
    tv_path = tmp_path / "regnet_y_16gf_torchvision.pth"
    torch.save(tv_model.state_dict(), tv_path)
    from_tv = load_teacher("regnety_16gf", weights=tv_path)
    assert from_tv.source == "timm:regnety_160.deit_in1k"
    assert from_tv.input_size == (3, 224, 224) and from_tv.num_classes == 1000
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_tv.model(x), tv_model(x), rtol=1e-4, atol=1e-4)

    timm_path = tmp_path / "regnety_160_timm.pth"
    torch.save(from_tv.model.state_dict(), timm_path)
    from_timm = load_teacher("regnety_16gf", weights=timm_path)
    assert from_timm.weights_sha256 == from_tv.weights_sha256


def test_timm_teacher_random_init_data_config():
    teacher = load_teacher("resnet10t", pretrained=False)
    assert teacher.source == "timm:resnet10t"
    assert teacher.input_size[0] == 3 and len(teacher.mean) == 3


def test_offline_download_error_says_how_to_pass_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(DfgenError, match="--teacher-weights"):
        load_teacher("resnet10t")


# --------------------------------------------------------------------------- checkpoint shapes and own models

FACTORY = '''
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make(num_classes=10, in_chans=3, width=8):
    return SmallNet(num_classes, in_chans, width)
'''


def small_net(num_classes=10, in_chans=3, width=8, seed=0):
    """The FACTORY model built in the test, with non-trivial BatchNorm statistics."""
    namespace = {}
    exec(FACTORY, namespace)  # the same class the teacher file defines
    torch.manual_seed(seed)
    model = namespace["make"](num_classes, in_chans, width)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY)
    return path


def _shapes(state):
    """Every way training code saves weights, with what `load_teacher` needs to read them."""
    ones = {k: torch.ones_like(v) if v.is_floating_point() else v for k, v in state.items()}
    return {
        "bare": (state, False),
        "state_dict": ({"state_dict": state, "epoch": 7}, False),
        "model": ({"model": state, "optimizer": {"lr": 0.1}}, False),
        "model_ema": ({"model": ones, "model_ema": state}, True),
        "state_dict_ema": ({"state_dict": ones, "state_dict_ema": {f"module.{k}": v for k, v in state.items()}},
                           True),
        "lightning": ({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 9,
                       "hyper_parameters": {"lr": 0.1}}, False),
        "lightning_with_loss": ({"state_dict": {**{f"model.{k}": v for k, v in state.items()},
                                                "criterion.weight": torch.ones(10)}}, False),
        "dataparallel": ({f"module.{k}": v for k, v in state.items()}, False),
        "ddp_in_lightning": ({"state_dict": {f"model.module.{k}": v for k, v in state.items()}}, False),
        "compiled": ({f"_orig_mod.{k}": v for k, v in state.items()}, False),
    }


@pytest.mark.parametrize("shape", list(_shapes({})))
def test_every_checkpoint_shape_loads_to_the_same_outputs(tmp_path, factory_file, shape):
    reference = small_net()
    checkpoint, use_ema = _shapes(reference.state_dict())[shape]
    path = tmp_path / f"{shape}.pt"
    torch.save(checkpoint, path)
    teacher = load_teacher(f"{factory_file}:make", weights=path, use_ema=use_ema, image_size=16)
    assert teacher.weights_sha256 == state_dict_sha256(reference)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(x), reference(x))


def test_plain_weights_unless_ema_is_asked_for(tmp_path, factory_file):
    plain, ema = small_net(seed=0), small_net(seed=1)
    path = tmp_path / "train.pt"
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict(), "epoch": 3}, path)
    spec = f"{factory_file}:make"
    assert load_teacher(spec, path, image_size=16).weights_sha256 == state_dict_sha256(plain)
    assert load_teacher(spec, path, image_size=16, use_ema=True).weights_sha256 == state_dict_sha256(ema)
    bare = tmp_path / "bare.pt"
    torch.save(plain.state_dict(), bare)
    with pytest.raises(DfgenError, match="--use-ema: .* holds no EMA weights"):
        load_teacher(spec, bare, image_size=16, use_ema=True)


def test_timm_and_torchvision_key_formats_and_wrappers_give_the_same_teacher(tmp_path):
    """A torchvision ResNet-18 fine-tuned to 10 classes, saved as torchvision keys in a Lightning checkpoint and
    as timm keys in a DataParallel state dict: the same weights, 10 classes inferred from the classifier."""
    torch.manual_seed(0)
    tv_model = torchvision.models.resnet18(num_classes=10).eval()
    tv_path = tmp_path / "tv.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tv_model.state_dict().items()}}, tv_path)
    from_tv = load_teacher("resnet18", weights=tv_path, image_size=32)
    assert from_tv.source == "timm:resnet18" and from_tv.num_classes == 10 and from_tv.input_size == (3, 32, 32)
    timm_path = tmp_path / "timm.pt"
    torch.save({f"module.{k}": v for k, v in from_tv.model.state_dict().items()}, timm_path)
    from_timm = load_teacher("timm:resnet18", weights=timm_path)
    as_tv = load_teacher("torchvision:resnet18", weights=tv_path)
    assert from_timm.weights_sha256 == from_tv.weights_sha256 == as_tv.weights_sha256
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_timm.model(x), tv_model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_class_count_mismatch_names_both_shapes(tmp_path, name):
    path = tmp_path / "ten.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    message = r"checkpoint classifier has 10 classes \(fc.weight \[10, 512\]\) but --num-classes 37"
    with pytest.raises(DfgenError, match=message):
        load_teacher(name, weights=path, num_classes=37)


def test_own_model_mismatches_name_what_differs(tmp_path, factory_file):
    path = tmp_path / "w.pt"
    torch.save(small_net().state_dict(), path)
    spec = f"{factory_file}:make"
    with pytest.raises(DfgenError, match=r"checkpoint classifier has 10 classes \(fc.weight \[10, 16\]\) but the model "
                                         r"from .* has 4 \(fc.weight \[4, 16\]\).*--teacher-kwargs"):
        load_teacher(spec, path, kwargs={"num_classes": 4}, image_size=16)
    with pytest.raises(DfgenError, match=r"do not fit .*shape mismatch features.0.weight \[8, 3, 3, 3\] in the file, "
                                         r"\[16, 3, 3, 3\] in the model"):
        load_teacher(spec, path, kwargs={"width": 16}, image_size=16)
    other = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), other)
    with pytest.raises(DfgenError, match=r"do not fit .*missing keys features.0.weight, .*unexpected keys "
                                         r"conv1.weight"):
        load_teacher(spec, other, image_size=16)
    with pytest.raises(DfgenError, match=r"has 10 classes but --num-classes 7 \(pass it to your factory"):
        load_teacher(spec, path, num_classes=7, image_size=16)


def test_timm_overrides_in_chans_and_data_config():
    teacher = load_teacher("resnet10t", pretrained=False, num_classes=37, in_chans=1, image_size=48,
                           mean="0.5", std=[0.25])
    assert teacher.num_classes == 37 and teacher.input_size == (1, 48, 48)
    assert teacher.mean == (0.5,) and teacher.std == (0.25,)
    assert teacher.spec["num_classes"] == 37 and teacher.spec["in_chans"] == 1
    with pytest.raises(DfgenError, match="--mean has 2 values but the teacher takes 3-channel images"):
        load_teacher("resnet10t", pretrained=False, mean="0.5,0.5")
    with pytest.raises(DfgenError, match="torchvision models take 3-channel images"):
        load_teacher("torchvision:resnet18", pretrained=False, in_chans=1)


def test_timm_class_and_channel_counts_come_from_the_weights_file(tmp_path):
    torch.manual_seed(0)
    grey = timm.create_model("resnet10t", in_chans=1, num_classes=5).eval()
    path = tmp_path / "grey.pt"
    torch.save({"state_dict": grey.state_dict()}, path)
    teacher = load_teacher("resnet10t", weights=path, image_size=32)
    assert teacher.num_classes == 5 and teacher.input_size == (1, 32, 32) and len(teacher.mean) == 1
    assert teacher.weights_sha256 == state_dict_sha256(grey)
    with pytest.raises(DfgenError, match=r"first convolution takes 1 channels \(conv1.0.weight \[24, 1, 3, 3\]\) but "
                                         r"--in-chans 3"):
        load_teacher("resnet10t", weights=path, in_chans=3)


def test_own_model_whose_keys_start_with_a_wrapper_prefix(tmp_path):
    """User code often wraps its network as `self.model`: its own `model.` keys are kept, a DDP `module.` goes."""
    path = tmp_path / "wrapper.py"
    path.write_text(FACTORY + '''

class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = make()

    def forward(self, x):
        return self.model(x)
''')
    namespace = {}
    exec(path.read_text(), namespace)
    torch.manual_seed(3)
    reference = namespace["Wrapper"]().eval()
    for name, state in (("bare", reference.state_dict()),
                        ("ddp", {f"module.{k}": v for k, v in reference.state_dict().items()})):
        weights = tmp_path / f"{name}.pt"
        torch.save(state, weights)
        teacher = load_teacher(f"{path}:Wrapper", weights, image_size=16)
        assert teacher.weights_sha256 == state_dict_sha256(reference), name
