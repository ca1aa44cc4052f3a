"""The process-level commands behind ``bftd node run``, ``bftd cluster up`` and
``bftd client put|get``: load and check files (every problem is a one-line ``ConfigError``
before anything is written), then run the peer, the local cluster or one client call.

A node runs one application: ``kv`` (the built-in key-value store of ``bftd client``) or
``ledger`` (the deliberation ledger of ``bftd task``). With the ledger a node also runs its
member's agent loop (``agents/loop.py``): with a debater (``scripted`` or ``llm``) it
debates and votes; without one (``none``) it only ticks, so that agreed-time exits still
happen. ``--app`` defaults to ``ledger`` when a debater is chosen, else to ``kv``: existing
``node run`` command lines keep their meaning.
"""

from __future__ import annotations

import contextlib
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
from bftdeliberate.files import read_bytes
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


#: The patch store (``--patches DIR``): files at most, and bytes per file.
MAX_PATCHES = 1024
MAX_PATCH_SIZE = 16 * 1024 * 1024

APPS = ("kv", "ledger")
DEBATERS = ("none", "scripted", "llm")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """The application and the agent a node runs (``--app``, ``--debater`` and theirs)."""

    app: str | None = None
    debater: str = "none"
    #: Scripted debater: the position it holds, its behaviour, the plan it proposes.
    position: str | None = None
    behaviour: str = "honest"
    plan: Path | None = None
    #: LLM debater.
    llm_base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    #: Commit layer: the shared resources this member may change as the single submitter.
    sandbox: Path | None = None
    patches: Path | None = None
    kv_db: Path | None = None
    kv_tables: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    @property
    def commits(self) -> bool:
        """Run a commit submitter (some effect handler is configured)."""
        return self.sandbox is not None or self.kv_db is not None

    @property
    def resolved_app(self) -> str:
        if self.app is not None:
            return self.app
        return "kv" if self.debater == "none" else "ledger"

    def check(self) -> None:
        """Refuse inconsistent options (one ConfigError line) before anything starts."""
        from bftdeliberate.deliberation.scripts import BEHAVIOURS

        if self.app is not None and self.app not in APPS:
            raise ConfigError(f"--app {self.app!r}: expected one of {', '.join(APPS)}")
        if self.debater not in DEBATERS:
            raise ConfigError(f"--debater {self.debater!r}: expected one of "
                              f"{', '.join(DEBATERS)}")
        if self.resolved_app == "kv" and self.debater != "none":
            raise ConfigError(f"--debater {self.debater} needs --app ledger (the kv "
                              "application has no debates)")
        scripted = (self.position, self.plan, None if self.behaviour == "honest" else 1)
        if self.debater != "scripted" and any(value is not None for value in scripted):
            raise ConfigError("--position, --behaviour and --plan are options of "
                              "--debater scripted")
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError(f"--behaviour {self.behaviour!r}: expected one of "
                              f"{', '.join(BEHAVIOURS)}")
        llm = (self.llm_base_url, self.model, self.api_key_env)
        if self.debater == "llm":
            if self.llm_base_url is None or self.model is None:
                raise ConfigError("--debater llm needs --llm-base-url and --model")
            self.llm_config()
        elif any(value is not None for value in llm):
            raise ConfigError("--llm-base-url, --model and --api-key-env are options of "
                              "--debater llm")
        if self.plan is not None:
            self.script_plan()
        self._check_commit_options()

    def _check_commit_options(self) -> None:
        commit_flags = (self.patches, self.kv_tables or None, self.allow_commands or None)
        if not self.commits:
            if any(value is not None for value in commit_flags):
                raise ConfigError("--patches, --kv-table and --allow-command need --sandbox "
                                  "or --kv-db")
            return
        if self.resolved_app != "ledger":
            raise ConfigError("--sandbox/--kv-db (the commit layer) need --app ledger")
        if self.kv_db is not None and not self.kv_tables:
            raise ConfigError("--kv-db needs at least one --kv-table (the allow-listed tables)")
        if self.kv_db is None and self.kv_tables:
            raise ConfigError("--kv-table needs --kv-db")
        if self.allow_commands and self.sandbox is None:
            raise ConfigError("--allow-command needs --sandbox (commands run in it)")
        if self.sandbox is not None and not self.sandbox.is_dir():
            raise ConfigError(f"--sandbox {self.sandbox}: not a directory")
        self.load_patches()

    def load_patches(self) -> dict[str, bytes]:
        """The patch store: every regular file of ``--patches DIR``, by file name."""
        if self.patches is None:
            return {}
        try:
            entries = sorted(self.patches.iterdir())
        except OSError as error:
            raise ConfigError(f"--patches {self.patches}: {error.strerror or error}") from None
        store: dict[str, bytes] = {}
        for entry in entries:
            if not entry.is_file() or entry.name.startswith("."):
                continue
            if len(store) >= MAX_PATCHES:
                raise ConfigError(f"--patches {self.patches}: more than {MAX_PATCHES} files")
            store[entry.name] = read_bytes(entry, max_size=MAX_PATCH_SIZE, kind="a patch")
        return store

    def build_handlers(self) -> Any:
        """The member's effect handlers (call :meth:`check` first)."""
        from bftdeliberate.commit.handlers import (
            CommandHandler,
            FileHandler,
            HandlerRegistry,
            SqliteKvHandler,
        )

        patches = self.load_patches()
        handlers: list[Any] = []
        if self.sandbox is not None:
            handlers.append(FileHandler(self.sandbox, patches))
            handlers.append(CommandHandler(self.sandbox, self.allow_commands))
        if self.kv_db is not None:
            handlers.append(SqliteKvHandler(self.kv_db, self.kv_tables, patches))
        return HandlerRegistry(handlers)

    def llm_config(self) -> Any:
        from bftdeliberate.agents.llm import LLMConfig

        assert self.llm_base_url is not None and self.model is not None
        try:
            return LLMConfig(base_url=self.llm_base_url, model=self.model,
                             api_key_env=self.api_key_env)
        except ConfigError as error:
            raise ConfigError(f"--debater llm: {error}") from None

    def script_plan(self) -> dict[str, Any]:
        """The plan, risks and stop conditions of ``--plan`` (a proposal.json)."""
        from bftdeliberate.files import load_proposal

        assert self.plan is not None
        proposal = load_proposal(self.plan)
        return {"plan": tuple(step.model_dump(exclude_none=True) for step in proposal.plan),
                "risks": tuple(proposal.risks),
                "stop_conditions": tuple(proposal.stop_conditions)}

    def build_debater(self, name: str) -> Any:
        """The member's debater (None for ``none``); call :meth:`check` first."""
        if self.debater == "none":
            return None
        if self.debater == "llm":
            from bftdeliberate.agents.llm import OpenAICompatibleDebater

            return OpenAICompatibleDebater(self.llm_config())
        from bftdeliberate.deliberation.scripts import Script, ScriptedDebater

        fields: dict[str, Any] = {"behaviour": self.behaviour}
        if self.position is not None:
            fields["position"] = self.position
        if self.plan is not None:
            fields.update(self.script_plan())
        return ScriptedDebater(name, Script(**fields))

    def debater_timeout(self) -> float:
        """Seconds the agent loop grants one debater call: an LLM debater's own timeouts
        and retries fit inside."""
        if self.debater != "llm":
            return 30.0
        config = self.llm_config()
        return config.timeout_s * (config.max_retries + 2) + 60.0

    def argv(self, *, member: int) -> list[str]:
        """The ``node run`` options that reproduce these (``cluster up``); the plan goes to
        member 0 only (one proposer)."""
        args = ["--app", self.resolved_app, "--debater", self.debater]
        if self.debater == "scripted":
            if self.position is not None:
                args += ["--position", self.position]
            if self.behaviour != "honest":
                args += ["--behaviour", self.behaviour]
            if self.plan is not None and member == 0:
                args += ["--plan", os.path.abspath(self.plan)]
        if self.debater == "llm":
            args += ["--llm-base-url", str(self.llm_base_url), "--model", str(self.model)]
            if self.api_key_env is not None:
                args += ["--api-key-env", self.api_key_env]
        # Every member gets the same (shared) resources: whoever is primary submits.
        for flag, path in (("--sandbox", self.sandbox), ("--patches", self.patches),
                           ("--kv-db", self.kv_db)):
            if path is not None:
                args += [flag, os.path.abspath(path)]
        for table in self.kv_tables:
            args += ["--kv-table", table]
        for program in self.allow_commands:
            args += ["--allow-command", program]
        return args


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
             lost_disk: bool, log_level: str, agent: AgentOptions | None = None) -> int:
    """``bftd node run``: serve until SIGINT/SIGTERM, then shut down gracefully."""
    from bftdeliberate.observability import configure_logging, log_event
    from bftdeliberate.peer import PeerConfig, on_execute_all, open_peer

    agent = agent or AgentOptions()
    agent.check()
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
    name = committee.member(member).name
    app: Any = None
    loop: Any = None
    if agent.resolved_app == "ledger":
        from bftdeliberate.agents.loop import AgentConfig, AgentLoop
        from bftdeliberate.deliberation.ledger import Ledger

        app = Ledger(committee)
        loop = AgentLoop(app, name, agent.build_debater(name), rank=member, key=key,
                         config=AgentConfig(debater_timeout=agent.debater_timeout()))
    registry = agent.build_handlers() if agent.commits else None

    async def main() -> None:
        with contextlib.ExitStack() as stack:
            submitter = None
            if registry is not None:
                from bftdeliberate.agents.submitter import open_submitter

                submitter = stack.enter_context(open_submitter(
                    committee, member, key, app, registry, data_dir))
            peer_config = PeerConfig(
                committee, member, key, data_dir=data_dir, replica_config=config,
                listen=listen_address, metrics_port=metrics_port, lost_disk=lost_disk,
                app=app, on_execute=on_execute_all(getattr(loop, "on_execute", None),
                                                   getattr(submitter, "on_execute", None)),
                on_view_change=None if submitter is None else submitter.on_view_change,
                snapshot_extra=None if submitter is None else submitter.metrics)
            await _serve(peer_config, loop, submitter)

    async def _serve(peer_config: Any, loop: Any, submitter: Any) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_peer(peer_config) as peer, trio.open_nursery() as nursery:
                if submitter is not None:
                    submitter.bind_view(lambda: peer.replica.view)
                if loop is not None:
                    nursery.start_soon(_serve_agent, committee, name, key, loop, submitter)
                print(json.dumps({"event": "listening", "member": member,
                                  "address": f"{peer.host}:{peer.port}",
                                  "metrics_port": peer.metrics_port,
                                  "data_dir": str(data_dir), "app": agent.resolved_app,
                                  "debater": agent.debater,
                                  "commits": submitter is not None}), flush=True)
                async for signum in signals:
                    log_event(logger, "info", "stopping", signal=signal.Signals(signum).name,
                              view=peer.replica.view, seq=peer.replica.last_executed)
                    break
                nursery.cancel_scope.cancel()

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


async def _serve_agent(committee: Committee, name: str, key: PrivateKey, loop: Any,
                       submitter: Any = None) -> None:
    """The member's agent: a client signing under the member's name, and the loop; the
    submitter (if any) orders through the loop."""
    from bftdeliberate.peer import open_client

    debater = loop.debater
    try:
        async with open_client(committee, name, key) as client, \
                trio.open_nursery() as nursery:
            await nursery.start(loop.run, client)
            if submitter is not None:
                nursery.start_soon(submitter.run, loop.request)
    finally:
        if hasattr(debater, "aclose"):  # the LLM debater's HTTP client
            with trio.CancelScope(shield=True):
                await debater.aclose()


# ----------------------------------------------------------------- cluster up


def cluster_up(*, n: int, directory: Path, base_port: int, metrics_base_port: int | None,
               tunables: Tunables, clients: int, echo: Any = print,
               agent: AgentOptions | None = None) -> int:
    """``bftd cluster up``: n ``bftd node run`` processes on 127.0.0.1 until Ctrl-C."""
    agent = agent or AgentOptions()
    agent.check()  # refuse bad options before writing a keystore
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
                    *tunables.argv(), *agent.argv(member=member)]
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
        if agent.resolved_app == "ledger":
            usage = (f"debate: bftd task open --question TEXT --committee {manifest} --key "
                     f"{directory / 'agent-0.key'}")
        else:
            usage = f"client: bftd client put KEY VALUE --committee {manifest}"
        echo(f"cluster of {n} up (f={committee.f}, app {agent.resolved_app}, debater "
             f"{agent.debater}); {usage}. Ctrl-C stops all.")
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


# ----------------------------------------------------------------------- task

#: ``bftd task`` options by OpenTask field, for errors that name what the user typed.
TASK_OPEN_FLAGS = {
    "question": "--question", "context": "--context", "evidence": "--evidence",
    "max_rounds": "--max-rounds", "round_ms": "--round-ms", "vote_ms": "--vote-ms",
    "deadline_ms": "--deadline-ms", "token_budget": "--budget",
    "agent_token_budget": "--agent-budget", "threshold": "--threshold", "judge": "--judge",
    "require_audit": "--no-audit",
}
#: Times a task command sends an operation again when the committee answers that a newer
#: request under the same member name (that member's running agent) overtook it.
TASK_RESENDS = 3


class TaskFailure(Exception):
    """A task command's operation was refused by the ledger or got no answer (exit 1)."""


def _member_signer(committee: Committee, committee_path: Path, key_path: Path, *,
                   clients_too: bool = False) -> tuple[str, PrivateKey]:
    """The request signer owning ``key_path``: a member (signing under its name), or for
    reads also an authorised client."""
    key = load_private_key(key_path)
    member = next((m for m in committee.members if m.public_key_bytes == key.public_key), None)
    if member is not None:
        return member.name, key
    if clients_too:
        client = next((c for c in committee.clients
                       if c.public_key_bytes == key.public_key), None)
        if client is not None:
            return client.id, key
    raise ConfigError(f"{key_path}: not the key of a member of {committee_path} (task "
                      "commands sign as the member owning the key)")


def _op_error(error: Any, flags: dict[str, str]) -> ConfigError:
    """A pydantic error of an operation model as one line naming the option."""
    from bftdeliberate.deliberation.proposal import describe

    text = describe(error)
    field, _, rest = text.partition(": ")
    head = field.split(".")[0]
    flag = flags.get(head)
    if flag is None:
        return ConfigError(text)
    where = flag if field == head else f"{flag} ({field})"
    return ConfigError(f"{where}: {rest}")


def build_open_task(committee: Committee, fields: dict[str, Any]) -> Any:
    """The OpenTask of ``bftd task open`` (given fields only), checked against the model and
    the committee (threshold range, judge) -- ConfigError naming the option otherwise."""
    from pydantic import ValidationError

    from bftdeliberate.deliberation.ops import OpenTask, encode_op

    given = {name: value for name, value in fields.items() if value is not None}
    if "evidence" in given:
        given["evidence"] = tuple(given["evidence"])
    try:
        op = OpenTask(**given)
    except ValidationError as error:
        raise _op_error(error, TASK_OPEN_FLAGS) from None
    voters = sum("vote" in m.roles for m in committee.members)
    if op.threshold is not None and not committee.quorum <= op.threshold <= voters:
        raise ConfigError(f"--threshold {op.threshold}: must be in {committee.quorum}..{voters} "
                          f"(2f+1 .. the committee's voters)")
    if op.judge is not None and committee.member_named(op.judge) is None:
        raise ConfigError(f"--judge {op.judge!r}: not a member of the committee (known: "
                          f"{', '.join(m.name for m in committee.members)})")
    encode_op(op)  # ConfigError if over the operation size limit
    return op


def build_resolve(task_id: str, decision: str, proposal_id: str | None, notes: str | None
                  ) -> Any:
    from pydantic import ValidationError

    from bftdeliberate.deliberation.ops import Resolve

    if decision == "approve" and proposal_id is None:
        raise ConfigError("--proposal: --decision approve names the proposal it approves")
    fields: dict[str, Any] = {"task_id": task_id, "decision": decision}
    if proposal_id is not None:
        fields["proposal_id"] = proposal_id
    if notes is not None:
        fields["notes"] = notes
    try:
        return Resolve(**fields)
    except ValidationError as error:
        raise _op_error(error, {"task_id": "ID", "decision": "--decision",
                                "proposal_id": "--proposal", "notes": "--notes"}) from None


def build_status(task_id: str, round_: int | None = None, agent: str | None = None) -> Any:
    from pydantic import ValidationError

    from bftdeliberate.deliberation.ops import Status

    try:
        return Status(task_id=task_id, round=round_, agent=agent)
    except ValidationError as error:
        raise _op_error(error, {"task_id": "ID"}) from None


async def _order(client: Any, op: Any, timeout: float) -> dict[str, Any]:
    """Order one ledger operation; its result map. TaskFailure on a rejection-free failure
    (timeout, a committee that does not run the ledger)."""
    from bftdeliberate.deliberation.ops import REJECTION_REASONS, encode_op
    from bftdeliberate.peer import ClientTimeout

    operation = encode_op(op)
    for _ in range(TASK_RESENDS + 1):
        try:
            raw = await client.call(operation, timeout=timeout)
        except ClientTimeout as error:
            raise TaskFailure(f"timeout: {error}") from None
        if raw != b"":
            break
    else:
        raise TaskFailure(f"{op.op} was overtaken {TASK_RESENDS + 1} times by newer requests "
                          f"under the name {client.id!r}")
    try:
        result = cbor.decode(raw)
    except DecodeError:
        result = None
    if type(result) is not dict or (not result.get("ok")
                                    and result.get("error") not in REJECTION_REASONS):
        raise TaskFailure("the committee does not run the deliberation ledger (its answer: "
                          f"{_render_result(raw)}); start its nodes with --app ledger")
    return result


async def _round_contributions(client: Any, task_id: str, round_: dict[str, Any],
                               timeout: float) -> list[dict[str, Any]]:
    """One closed round's contributions: in one read, or agent by agent when the ledger says
    the round is too large for one reply."""
    one = await _order(client, build_status(task_id, round_["round"]), timeout)
    if one.get("ok"):
        return list(one["round"]["contributions"] or [])
    if one.get("error") != "result_too_large":
        raise TaskFailure(f"round {round_['round']}: {one.get('error')}: {one.get('detail')}")
    contributions: list[dict[str, Any]] = []
    for agent in round_["participants"]:
        part = await _order(client, build_status(task_id, round_["round"], agent), timeout)
        if not part.get("ok"):
            raise TaskFailure(f"round {round_['round']}, {agent}: {part.get('error')}: "
                              f"{part.get('detail')}")
        contributions += part["round"]["contributions"] or []
    return contributions


def task_command(*, action: str, committee_path: Path, key_path: Path, timeout: float,
                 task_id: str | None = None, open_fields: dict[str, Any] | None = None,
                 decision: str | None = None, proposal_id: str | None = None,
                 notes: str | None = None) -> dict[str, Any]:
    """``bftd task open|status|resolve``. Every input is checked before connecting
    (ConfigError: exit 2). Returns ``{"ok": True, ...}``, or ``{"ok": False, "error",
    "detail"}`` for a ledger rejection or a timeout (exit 1)."""
    from bftdeliberate.peer import open_client

    committee = load_committee(committee_path)
    signer, key = _member_signer(committee, committee_path, key_path,
                                 clients_too=action == "status")
    if action == "open":
        op = build_open_task(committee, open_fields or {})
    elif action == "resolve":
        assert task_id is not None and decision is not None
        op = build_resolve(task_id, decision, proposal_id, notes)
    else:
        assert task_id is not None
        op = build_status(task_id)

    async def main() -> dict[str, Any]:
        async with open_client(committee, signer, key) as client:
            try:
                result = await _order(client, op, timeout)
                if action == "status" and result.get("ok"):
                    task = result["task"]
                    for round_ in task["rounds"]:
                        if round_["closed_ms"] is not None:  # the open round stays hidden
                            round_["contributions"] = await _round_contributions(
                                client, task["task_id"], round_, timeout)
                    result = {"ok": True, "task": task}
            except TaskFailure as failure:
                return {"ok": False, "error": "failed", "detail": str(failure),
                        "signer": signer}
        return {**result, "signer": signer}

    return run_trio(main)
