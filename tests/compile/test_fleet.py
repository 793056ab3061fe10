"""--target a,b,c: one bundle per board, a board that fails does not stop the others, --force
replaces only a fleet robopt wrote (compile/fleet.py, local executor; Ray: tests/executor)."""

from __future__ import annotations

import json

from helpers import assert_one_error_line, run_cli


def test_fleet_keeps_going_past_a_failed_board(tmp_path, capsys) -> None:
    out = tmp_path / "fleet"
    args = ["zoo:state-mlp", "--target", "host,jetson-orin-nano-8gb", "--precision",
            "int8-dynamic", "--threads", "1", "-o", str(out)]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 3, err  # a board failed: exit 3 at the end, after the others were built
    assert "jetson-orin-nano-8gb" in stdout and "FAILED" in stdout and "1/2 boards" in stdout
    summary = json.loads((out / "fleet.json").read_text())
    host, jetson = summary["boards"]
    assert host["backend"] == "onnxruntime" and host["error"] is None
    assert "int8-dynamic" in jetson["error"] and jetson["bundle"] is None
    assert (out / "host" / "manifest.json").is_file() and not (
        out / "jetson-orin-nano-8gb"
    ).exists()
    # --force replaces the fleet robopt wrote; a foreign file in it makes it not robopt's
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 3, err
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 2 and "not a robopt bundle" in err and (out / "notes.txt").exists()


def test_fleet_bad_input_is_one_line(tmp_path, capsys) -> None:
    base = ["zoo:state-mlp", "-o", str(tmp_path / "f")]
    for target, needle in (("host,,rk3588", "empty board"), ("host,host", "named twice"),
                           ("host,nope-board", "unknown target")):  # fmt: skip
        code, _, err = run_cli([*base, "--target", target], capsys)
        assert code == 2 and needle in err, err
        assert_one_error_line(err)
    code, _, err = run_cli([*base, "--target", "host,rk3588", "--objective", "latency"], capsys)
    assert code == 2 and "one board" in err
    tok = tmp_path / "tok"
    tok.write_text("t" * 32 + "\n")
    code, _, err = run_cli([*base, "--target", "host,rk3588", "--device", "http://127.0.0.1:9",
                            "--token-file", str(tok)], capsys)  # fmt: skip
    assert code == 2 and "for one board" in err
    code, _, err = run_cli([*base, "--target", "host,jetson-orin-nano-8gb", "--precision",
                            "bf16"], capsys)  # fmt: skip
    assert code == 3 and "no board built" in err and not (tmp_path / "f").exists()
