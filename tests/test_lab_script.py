"""scripts/lab.py, behind `make lab` and the browser test: root, address, port, token, URL, backend."""
import importlib.util
import re
import socket
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("lab", Path(__file__).resolve().parents[1] / "scripts" / "lab.py")
lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab)


@pytest.mark.parametrize("uid", [0, 1000])
def test_allow_root_only_as_root(monkeypatch, uid):
    monkeypatch.setattr(lab.os, "geteuid", lambda: uid)
    argv, _ = lab.command(*lab.parse(["notebooks", "--port=0"]))
    assert ("--allow-root" in argv) == (uid == 0)


def test_defaults_local_only_random_token_and_url():
    (argv, url), (_, url2) = lab.command(*lab.parse(["nb"])), lab.command(*lab.parse(["nb"]))
    assert "--ip=127.0.0.1" in argv and "--no-browser" not in argv and "--ServerApp.port_retries=0" in argv
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]{48})", url)
    assert m and f"--port={m.group(1)}" in argv and f"--IdentityProvider.token={m.group(2)}" in argv
    assert url2 != url                                   # a new token each time


def test_options_and_pass_through():
    argv, url = lab.command(*lab.parse(["nb", "--ip=0.0.0.0", "--port=0", "--no-browser", "--token=abc",
                                        "--LabApp.user_settings_dir=/tmp/x"]))
    assert argv[-1] == "--LabApp.user_settings_dir=/tmp/x" and "--no-browser" in argv and "--ip=0.0.0.0" in argv
    assert url.startswith("http://127.0.0.1:") and url.endswith("token=abc")


def test_busy_port_falls_back_to_a_free_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        argv, url = lab.command(*lab.parse(["nb", f"--port={busy}"]))
    assert f"--port={busy}" not in argv and f":{busy}/" not in url


def test_headless_backend_is_dropped_for_the_kernels():
    assert "MPLBACKEND" not in lab.child_env({"MPLBACKEND": "Agg", "A": "1"})
    assert lab.child_env({"MPLBACKEND": "module://ipympl.backend_nbagg"})["MPLBACKEND"].endswith("nbagg")
