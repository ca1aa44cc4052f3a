"""The process-level commands behind ``bftd node run``, ``bftd cluster up`` and
``bftd client put|get``: load and check files (every problem is a one-line ``ConfigError``
before anything is written), then run the peer, the local cluster or one client call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bftdeliberate import kv
from bftdeliberate.committee import (
    MANIFEST_FILE_NAME,
    Committee,
    init_keystore,
    load_committee,
    parse_address,
)
from bftdeliberate.crypto import PrivateKey, load_private_key
from bftdeliberate.errors import ConfigError, DecodeError, LocalError, leaf_exceptions
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.wire import cbor

#: Data directory of member i beside the committee file, when ``--data`` is not given.
DEFAULT_DATA_DIR = "data-{member}"
#: Seconds ``cluster up`` waits for its nodes to stop after asking them to, before SIGKILL.
CLUSTER_STOP_TIMEOUT = 10.0
#: Environment variable: write a cProfile of ``node run`` to ``$BFTD_PROFILE.<member>``.
PROFILE_ENV = "BFTD_PROFILE"
#: Default client key file beside the committee file.
DEFAULT_CLIENT_KEY = "client-0.key"
#: Seconds ``bftd client`` waits for f+1 matching replies by default.
DEFAULT_CLIENT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Tunables:
    """Protocol settings a node takes from the command line (equal on every member)."""

    checkpoint_interval: int | None = None
    log_window: int | None = None
    batch_size: int | None = None
    view_change_timeout: float | None = None

    def replica_config(self) -> ReplicaConfig:
        defaults = ReplicaConfig()
        k = self.checkpoint_interval or defaults.checkpoint_interval
        window = self.log_window or max(defaults.log_window // defaults.checkpoint_interval, 2) * k
        try:
            return ReplicaConfig(
                checkpoint_interval=k, log_window=window,
                batch_size=self.batch_size or defaults.batch_size,
                view_change_timeout=self.view_change_timeout or defaults.view_change_timeout,
                max_view_change_timeout=max(defaults.max_view_change_timeout,
                                            self.view_change_timeout or 0))
        except LocalError as error:  # the config's own checks
            raise ConfigError(f"bad protocol settings: {error}") from None

    def argv(self) -> list[str]:
        args: list[str] = []
        for name in ("checkpoint_interval", "log_window", "batch_size", "view_change_timeout"):
            value = getattr(self, name)
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return args


def _member_key(committee: Committee, committee_path: Path, member: int, key_path: Path
                ) -> PrivateKey:
    if not 0 <= member < committee.n:
        raise ConfigError(f"--id {member}: committee {committee_path} has members "
                          f"0..{committee.n - 1}")
    key = load_private_key(key_path)
    if key.public_key != committee.member(member).public_key_bytes:
        raise ConfigError(f"{key_path}: not the key of member {member} in {committee_path}")
    return key


def run_trio(main: Any) -> Any:
    """``trio.run(main)``; a ``ConfigError`` from inside a nursery comes out bare (one line,
    exit 2) rather than wrapped in an exception group."""
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        leaves = leaf_exceptions(group)
        config_errors = [leaf for leaf in leaves if isinstance(leaf, ConfigError)]
        if config_errors and len(config_errors) == len(leaves):
            raise config_errors[0] from None
        raise


# ------------------------------------------------------------------- node run


def node_run(*, member: int, committee_path: Path, key_path: Path, data_dir: Path | None,
             metrics_port: int | None, listen: str | None, tunables: Tunables,
             lost_disk: bool, log_level: str) -> int:
    """``bftd node run``: serve until SIGINT/SIGTERM, then shut down gracefully."""
    from bftdeliberate.observability import configure_logging, log_event
    from bftdeliberate.peer import PeerConfig, open_peer

    committee = load_committee(committee_path)
    key = _member_key(committee, committee_path, member, key_path)
    config = tunables.replica_config()
    listen_address = None
    if listen is not None:
        try:
            listen_address = parse_address(listen)
        except ValueError:
            raise ConfigError(f"--listen {listen!r}: expected HOST:PORT") from None
    if data_dir is None:
        data_dir = committee_path.parent / DEFAULT_DATA_DIR.format(member=member)
    logger = configure_logging(member=member, level=log_level)

    async def main() -> None:
        peer_config = PeerConfig(committee, member, key, data_dir=data_dir,
                                 replica_config=config, listen=listen_address,
                                 metrics_port=metrics_port, lost_disk=lost_disk)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_peer(peer_config) as peer:
                print(json.dumps({"event": "listening", "member": member,
                                  "address": f"{peer.host}:{peer.port}",
                                  "metrics_port": peer.metrics_port,
                                  "data_dir": str(data_dir)}), flush=True)
                async for signum in signals:
                    log_event(logger, "info", "stopping", signal=signal.Signals(signum).name,
                              view=peer.replica.view, seq=peer.replica.last_executed)
                    break

    profile_path = os.environ.get(PROFILE_ENV)
    if profile_path:
        # Developer aid: a cProfile of this node, written when it stops.
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run_trio(main)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{member}")
        return 0
    run_trio(main)
    return 0


# ----------------------------------------------------------------- cluster up


def cluster_up(*, n: int, directory: Path, base_port: int, metrics_base_port: int | None,
               tunables: Tunables, clients: int, echo: Any = print) -> int:
    """``bftd cluster up``: n ``bftd node run`` processes on 127.0.0.1 until Ctrl-C."""
    manifest = directory / MANIFEST_FILE_NAME
    if manifest.exists():
        committee = load_committee(manifest)
        if committee.n != n:
            raise ConfigError(f"{manifest} has n={committee.n}, not --n {n}; use another "
                              "--dir or the same n")
        for member in range(n):
            _member_key(committee, manifest, member, directory / f"agent-{member}.key")
    else:
        committee = init_keystore(directory, n, clients=clients, base_port=base_port)
        echo(f"wrote a new keystore in {directory} (committee {committee.committee_id})")
    tunables.replica_config()  # refuse bad settings before starting anything
    logs = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for member in range(n):
            argv = [sys.executable, "-m", "bftdeliberate.cli", "node", "run", "--id", str(member),
                    "--committee", str(manifest), "--key",
                    str(directory / f"agent-{member}.key"),
                    "--data", str(directory / DEFAULT_DATA_DIR.format(member=member)),
                    *tunables.argv()]
            if metrics_base_port is not None:
                argv += ["--metrics-port", str(metrics_base_port + member)]
            log = open(directory / f"node-{member}.log", "ab")  # noqa: SIM115 (closed below)
            logs.append(log)
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            address = committee.member(member).address
            metrics = "" if metrics_base_port is None else \
                f", metrics http://127.0.0.1:{metrics_base_port + member}/metrics"
            echo(f"member {member}: {address} (pid {processes[-1].pid}, log "
                 f"{directory / f'node-{member}.log'}{metrics})")
        echo(f"cluster of {n} up (f={committee.f}); client: bftd client put KEY VALUE "
             f"--committee {manifest}. Ctrl-C stops all.")
        return _supervise(processes, echo)
    finally:
        _stop_all(processes)
        for log in logs:
            log.close()


def _supervise(processes: list[subprocess.Popen[bytes]], echo: Any) -> int:
    async def main() -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                exited: list[tuple[int, int]] = []

                async def watch(member: int, process: subprocess.Popen[bytes]) -> None:
                    code = await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
                    exited.append((member, code))
                    echo(f"member {member} exited with code {code}")
                    if len(exited) == len(processes):
                        nursery.cancel_scope.cancel()

                for member, process in enumerate(processes):
                    nursery.start_soon(watch, member, process)
                async for _ in signals:
                    echo("stopping the cluster")
                    nursery.cancel_scope.cancel()
                    return 0
        return 1  # every node exited by itself

    return trio.run(main)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(CLUSTER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------- client


def _client_identity(committee: Committee, committee_path: Path, key_path: Path | None
                     ) -> tuple[str, PrivateKey, Path]:
    path = key_path or committee_path.parent / DEFAULT_CLIENT_KEY
    key = load_private_key(path)
    client_id = next((c.id for c in committee.clients
                      if c.public_key_bytes == key.public_key), None)
    if client_id is None:
        raise ConfigError(f"{path}: not the key of an authorised client of {committee_path}")
    return client_id, key, path


def client_call(*, operation: str, key: str, value: bytes | None, committee_path: Path,
                key_path: Path | None, timeout: float) -> dict[str, Any]:
    """``bftd client put|get``: one operation; the decoded result, or ``timeout: True``."""
    from bftdeliberate.peer import ClientTimeout, open_client

    committee = load_committee(committee_path)
    client_id, private_key, _ = _client_identity(committee, committee_path, key_path)
    if not 0 < len(key) <= kv.MAX_KEY_LENGTH:
        raise ConfigError(f"KEY must be 1..{kv.MAX_KEY_LENGTH} characters")
    if value is not None and len(value) > kv.MAX_VALUE_SIZE:
        raise ConfigError(f"VALUE is larger than {kv.MAX_VALUE_SIZE} bytes")
    request = kv.put(key, value) if operation == "put" else kv.get(key)

    async def main() -> dict[str, Any]:
        async with open_client(committee, client_id, private_key) as client:
            try:
                raw = await client.call(request, timeout=timeout)
            except ClientTimeout as error:
                return {"ok": False, "timeout": True, "error": str(error)}
            return {"ok": True, "result": _render_result(raw), "view": client.core.view}

    return run_trio(main)


def _render_result(raw: bytes) -> Any:
    try:
        result = cbor.decode(raw)
    except DecodeError:
        return {"raw": raw.hex()}

    def text(value: Any) -> Any:
        if type(value) is bytes:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"hex": value.hex()}
        if type(value) is dict:
            return {k: text(v) for k, v in value.items()}
        return value

    return text(result)


__all__ = ["Tunables", "client_call", "cluster_up", "node_run"]
