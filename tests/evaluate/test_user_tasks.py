"""A team's own simulator as the evaluation task (issue 22): a gymnasium id, and a
``module:factory`` with its observation -> inputs mapping; seeds, success from
``info["success"]`` or ``--success-return``, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_one_error_line, run_cli
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("gymnasium", reason="the [sim] extra is not installed")


def _model(path: Path, inputs: dict[str, int], nodes, inits=()) -> Path:
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, d]) for n, d in inputs.items()]
    out = [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 1])]
    graph = helper.make_graph(nodes, "p", io, out, list(inits))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """int8 bundles of: a pendulum policy (input "x" [3]); a reach controller reading
    "pos" and "goal" (action = clip(goal - pos)); the same with one input "obs2" [2]."""
    from robopt_compile import api

    d = tmp_path_factory.mktemp("usertasks")
    w = numpy_helper.from_array(np.array([[0.4], [-0.3], [0.2]], np.float32), "w")
    pend = _model(d / "pend.onnx", {"x": 3}, [helper.make_node("MatMul", ["x", "w"], ["m"]),
                  helper.make_node("Tanh", ["m"], ["action"])], [w])  # fmt: skip
    lo, hi = (numpy_helper.from_array(np.array([v], np.float32), n)
              for n, v in (("lo", -0.2), ("hi", 0.2)))  # fmt: skip
    reach = _model(d / "reach.onnx", {"pos": 1, "goal": 1}, [helper.make_node("Sub", ["goal",
                   "pos"], ["e"]), helper.make_node("Clip", ["e", "lo", "hi"], ["action"])],
                   [lo, hi])  # fmt: skip
    sel = numpy_helper.from_array(np.array([[-1.0], [1.0]], np.float32), "sel")
    single = _model(d / "single.onnx", {"obs2": 2}, [helper.make_node("MatMul", ["obs2", "sel"],
                    ["e"]), helper.make_node("Clip", ["e", "lo", "hi"], ["action"])],
                    [sel, lo, hi])  # fmt: skip
    out = {"single.onnx": single}
    for name, src in (("pend", pend), ("reach", reach), ("single", single)):
        out[name] = d / f"b-{name}"
        precision = "fp32" if name == "reach" else "int8-dynamic"  # reach has no MatMul
        api.compile(str(src), out=out[name], backend="onnxruntime", precision=precision,
                    threads=1, record=False)  # fmt: skip
    return out


def _eval(bundle: Path, args: list[str], capsys) -> tuple[int, dict | None, str]:
    code, out, err = run_cli(["evaluate", str(bundle), "--episodes", "4", "--json", *args], capsys)
    return code, (json.loads(out) if code == 0 else None), err


def test_a_gymnasium_id_with_a_success_return(bundles, capsys):
    code, r, err = _eval(bundles["pend"], ["--task", "Pendulum-v1", "--success-return",
                                           "-1e9"], capsys)  # fmt: skip
    assert code == 0, err
    assert r["task"]["name"] == "Pendulum-v1[success-return=-1e+09]"
    assert "return >= -1e+09" in r["task"]["success_rule"]
    ref, opt = r["engines"]
    assert ref["per_seed"]["steps"] == [200] * 4  # Pendulum's time limit
    assert ref["success"]["rate"] == opt["success"]["rate"] == 1.0
    code, again, _ = _eval(bundles["pend"], ["--task", "Pendulum-v1"], capsys)
    assert code == 0
    # the seeds decide the episodes; without a threshold, lasting to the limit is success
    assert again["engines"][0]["per_seed"] == {**ref["per_seed"], "success": [True] * 4}
    assert (bundles["pend"] / "results" / "eval-Pendulum-v1.json").is_file()


def test_a_factory_with_its_mapping_and_info_success(bundles, capsys):
    code, r, err = _eval(bundles["reach"], ["--task", "user_envs:reach_two_inputs"], capsys)
    assert code == 0, err
    assert r["task"]["inputs"] == ["pos", "goal"]
    assert [e["success"]["rate"] for e in r["engines"]] == [1.0, 1.0]
    code, r, err = _eval(bundles["single"], ["--task", "user_envs:reach_single"], capsys)
    assert code == 0, err  # one input, named as the model names it ("obs2")
    assert r["engines"][1]["success"]["rate"] == 1.0


def test_compile_calibrates_and_evaluates_on_a_user_task(bundles, tmp_path, capsys):
    task = "name=user_envs:reach_single"
    args = [str(bundles["single.onnx"]), "-b", "onnxruntime", "--precision", "int8",
            "--calibration", f"task:{task},episodes=2", "--eval", f"task:{task},episodes=4",
            "--threads", "1", "-o", str(tmp_path / "b"), "--json"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "b" / "results" / "eval-user_envs_reach_single.json")
                        .read_text())  # fmt: skip
    assert result["task"]["name"] == "user_envs:reach_single"
    assert result["engines"][0]["success"]["rate"] == 1.0  # the fp32 controller
    assert [len(e["per_seed"]["seed"]) for e in result["engines"]] == [4, 4]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["quantization"]["data"]["calibration_ids"][0].startswith("task.npz")


@pytest.mark.parametrize(
    ("bundle", "args", "says"),
    [
        ("pend", ["--task", "user_envs:reach_single"], "takes x of shape ['B', 3] but task "
         "user_envs:reach_single's observation is ['B', 2]"),
        ("reach", ["--task", "Pendulum-v1"], "takes 2 inputs ['pos', 'goal'] but task "
         "Pendulum-v1 feeds one observation of shape ['B', 3]"),
        ("pend", ["--task", "Pendulum-v9"], "unknown task 'Pendulum-v9'. Did you mean"),
        ("pend", ["--task", "user_envs:nothing"], "cannot import 'nothing' from 'user_envs'"),
        ("pend", ["--task", "HopperBulletEnv-v0", "--success-return", "1"], "applies to a user"),
    ],
    ids=["obs-shape", "two-inputs", "unknown-id", "bad-factory", "builtin-success"],
)  # fmt: skip
def test_bad_input_is_one_line(bundles, bundle, args, says, capsys):
    code, _, err = _eval(bundles[bundle], args, capsys)
    assert code == 2, err
    assert says in err
    assert_one_error_line(err)
