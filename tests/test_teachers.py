"""Teacher resolution, safe checkpoint loading and clear refusals (SPEC sections 4 and 7)."""

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
