"""Secrets off argv, protected mode, and the data commands against a keyed, tokened TLS origin
(issue #11).  Real processes: the `edgekv` daemons and data commands as users run them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import edgekv
from edgekv import security_cli as security
from edgekv.errors import InvalidInput
from edgekv.node.certs import write_dev_certs
from edgekv.node.tlsconfig import TlsConfig

KEY = b"k3y-from-a-file"


def run_cli(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("edgekv.origin_cli", ["origin", "--listen", "0.0.0.0:0"]),
        ("edgekv.edge_cli", ["edge", "--listen", "0.0.0.0:0", "--origin", "127.0.0.1:9"]),
        ("edgekv.origin_cli", ["origin", "--listen", "127.0.0.1:0", "--http", "[::]:0"]),
        (
            "edgekv.edge_cli",
            [
                "edge",
                "--origin",
                "127.0.0.1:9",
                "--cluster-key-file",
                "KEYFILE",
                "--http",
                "[::]:0",
            ],
        ),
    ],
)
def test_protected_mode_refuses_to_start_with_one_line(
    tmp_path: Path, module: str, args: list[str]
) -> None:
    env = {k: "" for k in (security.CLUSTER_KEY_ENV, security.TOKEN_ENV)}
    (tmp_path / "key").write_bytes(KEY)  # a key protects gossip, not an HTTP port
    args = [str(tmp_path / "key") if a == "KEYFILE" else a for a in args]
    r = run_cli(module, *args, "--data-dir", str(tmp_path / "d"), env=env)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("edgekv: error: refusing to ")
    assert "(not loopback)" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_protected_mode_rules(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, ["n"])
    tls = TlsConfig(tmp_path / "ca.pem", tmp_path / "n.pem", tmp_path / "n-key.pem")
    # the data commands' TLS options, host name check included
    from edgekv.cli import build_parser

    ca = str(tmp_path / "ca.pem")
    for extra, verify in (([], False), (["--tls-verify-hostname"], True)):
        args = build_parser().parse_args(["get", "--tls-ca", ca, *extra, "s", "k"])
        client_tls = security.tls(args)
        assert client_tls is not None and client_tls.verify_hostname is verify
    check = security.check_protected_mode
    for loopback in ("127.0.0.1:7300", "127.9.9.9:1", "[::1]:7300", "localhost:7300"):
        check([loopback, None], tls=None, key=None, insecure=False)
    for exposed in ("0.0.0.0:7300", "[::]:7300", "10.1.2.3:7300", "edge.example:7300"):
        with pytest.raises(InvalidInput, match="not loopback"):
            check([exposed], tls=None, key=None, insecure=False)
        check([exposed], tls=tls, key=None, insecure=False)
        check([exposed], tls=None, key=KEY, insecure=False)
        check([exposed], tls=None, key=None, insecure=True)
        # the origin's HTTP port: neither TLS nor the cluster key authenticates HTTP clients
        with pytest.raises(InvalidInput, match="without tokens"):
            check([exposed], tls=tls, key=KEY, insecure=False, http=exposed)
        check([exposed], tls=tls, key=None, insecure=False, http=exposed, tokens={"t": "read:*"})


@pytest.mark.parametrize(
    ("module", "args", "hint"),
    [
        ("edgekv.origin_cli", ["origin", "--cluster-key", "s3cret"], "--cluster-key-file"),
        ("edgekv.origin_cli", ["origin", "--token", "s3cret=write:*"], "--tokens-file"),
        ("edgekv.edge_cli", ["edge", "--origin", "127.0.0.1:9", "--token", "t"], "--token-file"),
        ("edgekv.origin_cli", ["put", "--token", "s3cret", "s", "k", "v"], "EDGEKV_TOKEN"),
        ("edgekv.origin_cli", ["get", "--cluster-key", "s3cret", "s", "k"], "EDGEKV_CLUSTER_KEY"),
    ],
)
def test_secrets_on_argv_are_refused(module: str, args: list[str], hint: str) -> None:
    r = run_cli(module, *args)
    assert r.returncode == 2
    assert "every local user" in r.stderr and hint in r.stderr
    assert "Traceback" not in r.stderr


def test_secrets_from_files_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ns(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"cluster_key_file": None, "token_file": None, **kw})

    monkeypatch.delenv(security.CLUSTER_KEY_ENV, raising=False)
    monkeypatch.delenv(security.TOKEN_ENV, raising=False)
    assert security.cluster_key(ns()) is None and security.token(ns()) is None
    monkeypatch.setenv(security.CLUSTER_KEY_ENV, "from-env\n")
    monkeypatch.setenv(security.TOKEN_ENV, "tok-env")
    assert security.cluster_key(ns()) == b"from-env"
    assert security.token(ns()) == "tok-env"
    (tmp_path / "key").write_bytes(KEY + b"\n")
    (tmp_path / "tok").write_text("tok-file\n")
    # a file wins over the environment
    assert security.cluster_key(ns(cluster_key_file=str(tmp_path / "key"))) == KEY
    assert security.token(ns(token_file=str(tmp_path / "tok"))) == "tok-file"
    with pytest.raises(InvalidInput, match="cannot read the cluster key file"):
        security.cluster_key(ns(cluster_key_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(InvalidInput, match="is empty"):
        security.token(ns(token_file=str(tmp_path / "empty")))

    tokens = tmp_path / "tokens"
    tokens.write_text("# admin\nabc=write:*\n\n  reader = read:flags,read:x \n")
    assert security.tokens(argparse.Namespace(tokens_file=str(tokens))) == {
        "abc": "write:*",
        "reader": "read:flags,read:x",
    }
    tokens.write_text("fine=read:*\nhunter2-no-scopes\n")
    with pytest.raises(InvalidInput, match=":2: use TOKEN=") as info:
        security.tokens(argparse.Namespace(tokens_file=str(tokens)))
    assert "hunter2" not in str(info.value)  # the secret is never echoed
    tokens.write_text("# nothing but comments\n")
    with pytest.raises(InvalidInput, match="holds no TOKEN=SCOPES"):
        security.tokens(argparse.Namespace(tokens_file=str(tokens)))


async def test_data_commands_against_a_keyed_tokened_tls_origin(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    write_dev_certs(certs, ["origin"], clients=["cli"])
    (tmp_path / "key").write_bytes(KEY)
    (tmp_path / "writer").write_text("w-token\n")
    tls = TlsConfig(certs / "ca.pem", certs / "origin.pem", certs / "origin-key.pem")
    tls_args = ["--tls-ca", str(certs / "ca.pem")]
    client_cert = ["--tls-cert", str(certs / "cli.pem"), "--tls-key", str(certs / "cli-key.pem")]
    with trio.fail_after(60):
        async with edgekv.Origin(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            cluster_key=KEY,
            tokens={"w-token": "write:*", "r-token": "read:flags"},
            tls=tls,
        ) as origin:
            o = ["--origin", origin.address]

            async def cli(
                *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
                return await trio.to_thread.run_sync(lambda: run_cli("edgekv", *args, env=env))

            keyed = ["--cluster-key-file", str(tmp_path / "key"), *tls_args]
            writer = [*keyed, "--token-file", str(tmp_path / "writer")]
            r = await cli("stores", *o, *writer, "--create", "flags")
            assert r.returncode == 0, r.stderr
            r = await cli("put", *o, *writer, *client_cert, "flags", "greeting", "hello")
            assert r.returncode == 0 and r.stdout.startswith("seq "), r.stderr
            # the key and a read token from the environment
            env = {security.CLUSTER_KEY_ENV: KEY.decode(), security.TOKEN_ENV: "r-token"}
            r = await cli("get", *o, *tls_args, "flags", "greeting", env=env)
            assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
            r = await cli("scan", *o, *tls_args, "flags", env=env)
            assert r.stdout.split() == ["greeting"]
            # a read token cannot write
            r = await cli("put", *o, *tls_args, "flags", "greeting", "x", env=env)
            assert r.returncode == 1 and "no write access" in r.stderr
            # no cluster key, no TLS, no token: each is refused with one line
            no_env = {security.CLUSTER_KEY_ENV: "", security.TOKEN_ENV: ""}
            for args in (
                ["--token-file", str(tmp_path / "writer"), *tls_args],  # no key
                [
                    "--token-file",
                    str(tmp_path / "writer"),
                    "--cluster-key-file",
                    str(tmp_path / "key"),
                ],
                keyed,  # no token
            ):
                r = await cli("get", *o, "--timeout", "2", *args, "flags", "greeting", env=no_env)
                assert r.returncode == 1, args
                assert r.stderr.startswith("edgekv: error:") and "Traceback" not in r.stderr
            assert await origin.get("flags", "greeting") == b"hello"


def test_certs_command_makes_a_usable_ca(tmp_path: Path) -> None:
    r = run_cli("edgekv", "certs", str(tmp_path), "origin", "edge-1", "--client", "app")
    assert r.returncode == 0, r.stderr
    for name in ("origin", "edge-1", "app"):
        TlsConfig(tmp_path / "ca.pem", tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem")
    ca = (tmp_path / "ca.pem").read_bytes()
    # a second run reuses the CA
    assert run_cli("edgekv", "certs", str(tmp_path), "edge-2").returncode == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca
