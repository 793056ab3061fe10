"""A newcomer's own policy package as a source (issue 19): output names from a returned dict
(factory and .pt2), a TorchScript module from a factory, what each kind of .pt file is and
what to do with it, and a typo in the factory name."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from robopt_compile.compile.frontend import load_source
from robopt_compile.errors import RoboptError

POLICY = textwrap.dedent(
    """
    import torch

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU(),
                                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.action = torch.nn.Linear(8 + 9, 7)
            self.value = torch.nn.Linear(8 + 9, 1)

        def forward(self, image, proprio):
            h = torch.cat([self.cnn(image), proprio], 1)
            return {"action": self.action(h), "value": self.value(h)}

    class AsTuple(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image, proprio):
            o = self.m(image, proprio)
            return o["action"], o["value"]

    def inputs():
        return {"image": torch.rand(1, 3, 32, 32), "proprio": torch.randn(1, 9)}

    def make_policy():
        torch.manual_seed(0)
        return Policy().eval(), inputs()

    def make_scripted():
        m, ins = make_policy()
        return torch.jit.trace(AsTuple(m), (ins["image"], ins["proprio"])), inputs()
    """
)


@pytest.fixture
def userpol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "userpol_src.py").write_text(POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _out_names(src) -> list[str]:
    return [o.name for o in src.model.graph.outputs]


def test_a_returned_dict_names_the_outputs(userpol: Path) -> None:
    import torch
    from userpol_src import make_policy

    assert _out_names(load_source("userpol_src:make_policy")) == ["action", "value"]
    m, ins = make_policy()
    torch.export.save(torch.export.export(m, (ins["image"], ins["proprio"])), "p.pt2")
    assert _out_names(load_source(str(userpol / "p.pt2"))) == ["action", "value"]


def test_a_torchscript_module_from_a_factory_compiles(userpol: Path) -> None:
    src = load_source("userpol_src:make_scripted")
    assert src.exporter == "torchscript" and src.parity["export"]["cosine"] > 0.9999
    assert [i.name for i in src.model.graph.inputs] == ["image", "proprio"]


def test_each_kind_of_pt_file_says_what_to_do(userpol: Path) -> None:
    import torch
    from userpol_src import make_policy, make_scripted

    m, _ = make_policy()
    torch.save(m.state_dict(), "weights.pt")
    torch.save(m, "whole.pth")
    make_scripted()[0].save("scripted.pt")
    torch.save(m.state_dict(), "saved.pt2")  # torch.save under the .pt2 suffix
    with zipfile.ZipFile("other.pt2", "w") as z:
        z.writestr("a.txt", "not a program")
    for name, says in [
        ("weights.pt", "holds a state_dict"),
        ("whole.pth", "pickled module (userpol_src.Policy)"),
        ("scripted.pt", "TorchScript archive"),
        ("saved.pt2", "written by torch.save, not torch.export.save"),
        ("other.pt2", "not one torch.export.save wrote"),
    ]:
        with pytest.raises(RoboptError) as e:
            load_source(str(userpol / name))
        msg = str(e.value)
        assert says in msg and len(msg.splitlines()) == 1 and "warnings above" not in msg, msg


def test_a_factory_typo_suggests_the_name(userpol: Path) -> None:
    with pytest.raises(RoboptError, match="Did you mean userpol_src:make_policy"):
        load_source("userpol_src:make_polcy")


def test_the_mixed_precision_search_reports_progress(userpol: Path) -> None:
    """A bound int8 cannot meet at once sends the per-layer search's progress as ticks (the
    CLI draws them as a bar with an ETA on a terminal)."""
    import robopt_compile.api as robopt

    ticks: list[tuple[str, float]] = []

    def progress(stage: str, event: str, fraction: float) -> None:
        if event == "tick":
            ticks.append((stage, fraction))

    robopt.compile("userpol_src:make_policy", out=userpol / "o", target="host",
                   backend="onnxruntime", precision="int8", calibration="random",
                   max_drop=1e-6, threads=1, cache=False, progress=progress)  # fmt: skip
    layer = [t for t in ticks if t[0].startswith("quantize: layer sensitivity")]
    n = layer[-1][0].rsplit("/", 1)[-1]
    assert layer[-1][1] == 1.0 and layer[0][0].endswith(f" 1/{n}") and len(layer) == int(n)
