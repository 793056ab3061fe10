"""``robopt-compile token`` and ``serve``'s refusals, from the command line."""

from __future__ import annotations

import json

from tests.helpers import assert_one_error_line, run_cli


def test_token_create_list_revoke(tmp_path, capsys) -> None:
    store = str(tmp_path / "store")
    code, out, err = run_cli(["token", "create", "--role", "operator", "--name", "ci",
                              "--store", store], capsys)  # fmt: skip
    assert code == 0 and out.startswith("rbt_") and "shown once" in err
    from robopt_compile.service.tokens import check_token
    from robopt_compile.store import open_store

    text = out.strip()
    with open_store(store) as st:
        tok = check_token(st, text)
        assert tok is not None and tok.role == "operator"
        assert out.strip().split("_", 2)[2] not in (
            tmp_path / "store" / "store.db"
        ).read_bytes().decode(errors="replace")  # only the hash is kept
    code, out, _ = run_cli(["token", "list", "--store", store, "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["name"] == "ci"
    code, out, _ = run_cli(["token", "revoke", tok.id, "--store", store], capsys)
    assert code == 0 and "revoked" in out
    with open_store(store) as st:
        assert check_token(st, text) is None
    code, _, err = run_cli(["token", "revoke", "ffffffffffff", "--store", store], capsys)
    assert code == 2
    assert_one_error_line(err)
    code, _, err = run_cli(["token", "create", "--name", " ", "--store", store], capsys)
    assert code == 2
    assert_one_error_line(err)


def test_serve_refuses_half_tls(tmp_path, capsys) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    code, _, err = run_cli(["serve", "--store", str(tmp_path / "s"), "--ssl-certfile",
                            str(cert)], capsys)  # fmt: skip
    assert code == 2 and "--ssl-keyfile" in err
    assert_one_error_line(err)


def test_serve_on_a_taken_port_is_one_line(tmp_path, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "--store", str(tmp_path / "s"), "--port", str(port)],
                               capsys)  # fmt: skip
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err
    assert_one_error_line(err)
