"""Stock ImageNet architectures on small images: set-up finds the BatchNorm layers that see tiny maps at the teacher's
size and says so in one note, changing nothing; the teachers built for small images get no note."""

from pathlib import Path

import pytest
import torch

import dfgen
from benchmarks import small_nets, stock_nets
from dfgen.runplan import prepare, tiny_maps_note
from dfgen.teachers import Teacher, load_teacher
from dfgen.tiny_maps import bn_map_sizes

STOCK = Path(stock_nets.__file__)
NETS = Path(small_nets.__file__)


def test_map_sizes_of_a_stock_resnet18_at_32_and_64_px():
    model = stock_nets.resnet18_stock()
    at32 = bn_map_sizes(model, 1, 32)
    assert at32.sides == (16,) + (8,) * 4 + (4,) * 5 + (2,) * 5 + (1,) * 5  # stem, layer1..layer4
    assert at32.tiny == 10 and at32.has_tiny_maps
    assert bn_map_sizes(model, 1, 64).sides[-5:] == (2,) * 5
    assert model.training  # the mode is given back


@pytest.mark.parametrize("factory, size", [("lenet5_bn", 28), ("resnet18_small", 32), ("vgg_bn_small", 28),
                                           ("mobilenet_small", 28)])
def test_teachers_built_for_small_images_are_not_of_this_family(factory, size):
    maps = bn_map_sizes(getattr(small_nets, factory)(), 1, size)
    assert not maps.has_tiny_maps, maps  # LeNet-5's one 1x1 layer is not enough


def test_bundled_digits_teacher_keeps_its_schedule():
    teacher = load_teacher("digits")
    assert not bn_map_sizes(teacher.model, 1, 32).has_tiny_maps
    assert tiny_maps_note(teacher) is None


def test_mobilenetv3_is_of_this_family():
    assert bn_map_sizes(stock_nets.mobilenetv3_stock(), 1, 32).has_tiny_maps


def test_set_up_notes_tiny_maps_and_keeps_the_default_schedule(tmp_path, capsys):
    config = dfgen.build_config(None, out=str(tmp_path / "o"), teacher=f"{STOCK}:resnet18_stock", image_size=32,
                                mean=[0.3], std=[0.3], n=10)
    run = prepare(config)
    assert run.schedule == [(8, 200), (16, 200), (32, 200)] and run.multires == "native"
    note = ("10 of the teacher's 20 BatchNorm layers see maps of 2x2 or less at 32 px: their statistics constrain "
            "the images little")
    assert note in run.notes[-1] and f"note: {run.notes[-1]}" in capsys.readouterr().err.splitlines()
    assert note in prepare(config, log=False).notes[-1] and not capsys.readouterr().err  # kept, not printed


class FixedTiny(torch.nn.Module):
    """Tiny deep maps, but a flatten-and-Linear head: runs only at 16 px."""

    def __init__(self) -> None:
        super().__init__()
        layers = []
        for i in range(4):
            layers += [torch.nn.Conv2d(1 if i == 0 else 4, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4)]
        self.body = torch.nn.Sequential(*layers, torch.nn.Flatten())
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_fixed_size_teacher_with_tiny_maps_is_noted():
    teacher = Teacher(model=FixedTiny().eval(), name="fixed", source="test", input_size=(1, 16, 16), mean=(0.5,),
                      std=(0.5,), num_classes=3, weights_sha256="0")
    assert tiny_maps_note(teacher) == (
        "2 of the teacher's 4 BatchNorm layers see maps of 2x2 or less at 16 px: their statistics constrain the "
        "images little, so a small set may teach a student less; more images help (--mode generator makes them for "
        "a tenth of the teacher passes), or a teacher that keeps wider maps at this size (a 3x3 stride-1 stem, no "
        "max-pool)")
