"""``bftd``: the command line. Thin: parse, call the library, render with rich.

Exit codes: 0 success, 1 a failed run or found violation, 2 bad usage or bad input (one
line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich import box
from rich.console import Console
from rich.table import Table

from bftdeliberate import __version__
from bftdeliberate.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Raised instead of argparse's two-line usage dump: we print one line and exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a seed >= 0")


_non_negative = _int_at_least(0, "an integer >= 0")


def _port(text: str) -> int:
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {value}")
    return value


def _member_id(text: str) -> int:
    return _non_negative(text)


def _tunable_arguments(parser: argparse.ArgumentParser) -> None:
    """Protocol settings; every member of a committee must run with the same values."""
    parser.add_argument("--checkpoint-interval", type=_positive, default=None, metavar="K",
                        help="a checkpoint every K sequence numbers (default 64)")
    parser.add_argument("--log-window", type=_positive, default=None, metavar="L",
                        help="sequence numbers above the stable checkpoint (default 4K)")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="requests per PRE-PREPARE (default 100)")
    parser.add_argument("--view-change-timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="base view-change timeout T (default 1)")


def _tunables(args: argparse.Namespace):
    from bftdeliberate.node import Tunables

    return Tunables(checkpoint_interval=args.checkpoint_interval, log_window=args.log_window,
                    batch_size=args.batch_size, view_change_timeout=args.view_change_timeout)


def _llm_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--llm-base-url", default=None, metavar="URL",
                        help=f"{what}: an OpenAI-compatible base URL, e.g. "
                             "http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default=None, help="the model name (with --llm-base-url)")
    parser.add_argument("--api-key-env", default=None, metavar="VAR",
                        help="environment variable holding the API key (none for local "
                             "servers)")


def _agent_arguments(parser: argparse.ArgumentParser) -> None:
    """The application and the member's agent (``node run``, passed on by ``cluster up``)."""
    parser.add_argument("--app", choices=["kv", "ledger"], default=None,
                        help="the replicated application: kv (bftd client) or ledger (bftd "
                             "task); default ledger with a --debater, else kv")
    parser.add_argument("--debater", choices=["none", "scripted", "llm"], default="none",
                        help="the member's agent: none (ordering and ticks only), scripted, "
                             "or llm (default none)")
    parser.add_argument("--position", default=None,
                        help="scripted: the position the agent holds (default 'approve the "
                             "plan')")
    parser.add_argument("--behaviour", default="honest",
                        help="scripted: a behaviour of deliberation/scripts.py, e.g. honest, "
                             "conformist, vote-flip (default honest)")
    parser.add_argument("--plan", type=Path, default=None, metavar="FILE",
                        help="scripted: propose the plan of this proposal.json in round 0 "
                             "(cluster up: member 0 proposes it)")
    _llm_arguments(parser, "--debater llm")
    commit = parser.add_argument_group(
        "commit layer", "the shared resources the single submitter (the primary, with the "
        "submit role) changes when a plan is approved; give every member the same ones")
    commit.add_argument("--sandbox", type=Path, default=None, metavar="DIR",
                        help="file steps (file:PATH targets) write inside DIR only; commands "
                             "run in DIR")
    commit.add_argument("--patches", type=Path, default=None, metavar="DIR",
                        help="the patch store: a patch step's patch_id names a file in DIR "
                             "(its full new content)")
    commit.add_argument("--kv-db", type=Path, default=None, metavar="FILE",
                        help="kv steps (kv:TABLE/KEY targets) write this SQLite database")
    commit.add_argument("--kv-table", action="append", default=[], metavar="NAME",
                        help="a table kv steps may write (repeat; the allow-list)")
    commit.add_argument("--allow-command", action="append", default=[], metavar="PROGRAM",
                        help="a program test/command steps may run (repeat; the allow-list)")


def _agent_options(args: argparse.Namespace):
    from bftdeliberate.node import AgentOptions

    return AgentOptions(app=args.app, debater=args.debater, position=args.position,
                        behaviour=args.behaviour, plan=args.plan,
                        llm_base_url=args.llm_base_url, model=args.model,
                        api_key_env=args.api_key_env, sandbox=args.sandbox,
                        patches=args.patches, kv_db=args.kv_db,
                        kv_tables=tuple(args.kv_table),
                        allow_commands=tuple(args.allow_command))


def _members(text: str) -> int:
    value = _positive(text)
    if value < 4:
        raise argparse.ArgumentTypeError(f"a committee needs n >= 4 (n = 3f+1, f >= 1); got {value}")
    return value


def _member_list(text: str) -> list[int]:
    values = _int_list(text)
    if min(values) < 4:
        raise argparse.ArgumentTypeError(
            f"a committee needs n >= 4 (n = 3f+1, f >= 1); got {text!r}")
    return values


def _seed_range(text: str) -> range:
    start, sep, stop = text.partition(":")
    try:
        seeds = range(int(start), int(stop))
    except ValueError:
        seeds = None
    if not sep or seeds is None or seeds.start < 0 or not seeds:
        raise argparse.ArgumentTypeError(
            f"expected A:B with 0 <= A < B (seeds A..B-1), got {text!r}")
    return seeds


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


EXAMPLES = {
    "demo": "examples:\n  bftd demo\n  bftd demo --json\n"
            "  bftd demo --llm-base-url http://127.0.0.1:8080/v1 --model qwen2.5-7b-instruct\n"
            "  bftd demo --llm-base-url https://api.openai.com/v1 --model gpt-4o-mini "
            "--api-key-env OPENAI_API_KEY",
    "keys init": "examples:\n  bftd keys init --n 4 --dir keys\n"
                 "  bftd keys init --n 7 --clients 3 --dir /tmp/ks --base-port 9000",
    "keys check": "examples:\n  bftd keys check --committee keys/committee.json\n"
                  "  bftd keys check --committee keys/committee.json --key keys/agent-0.key",
    "bench core": "examples:\n  bftd bench core --n 4 --batch 100 --json\n"
                  "  bftd bench core --n 4,7,10,13,16 --batch 1,10,100 --requests 2000",
    "node run": "examples:\n  bftd node run --id 0 --committee keys/committee.json "
                "--key keys/agent-0.key\n"
                "  bftd node run --id 1 --committee keys/committee.json --key keys/agent-1.key "
                "--data /var/lib/bftd-1 --metrics-port 9101\n"
                "  bftd node run --id 0 --committee keys/committee.json --key keys/agent-0.key "
                "--debater scripted --position 'roll back' --plan proposal.json\n"
                "  bftd node run --id 2 --committee keys/committee.json --key keys/agent-2.key "
                "--debater llm --llm-base-url http://127.0.0.1:8080/v1 --model qwen2.5-7b",
    "cluster up": "examples:\n  bftd cluster up --n 4\n"
                  "  bftd cluster up --n 7 --dir /tmp/c7 --base-port 7100 --metrics-base-port 9100\n"
                  "  bftd cluster up --n 4 --dir debate --debater scripted --plan proposal.json\n"
                  "  bftd cluster up --n 4 --app ledger   # ordering only: tasks escalate to "
                  "humans",
    "client put": "examples:\n  bftd client put color blue --committee cluster/committee.json\n"
                  "  bftd client put k v --committee keys/committee.json --key keys/client-1.key",
    "client get": "examples:\n  bftd client get color --committee cluster/committee.json --json",
    "sim list": "examples:\n  bftd sim list\n  bftd sim list --json",
    "sim run": "examples:\n  bftd sim run --scenario baseline\n"
               "  bftd sim run --scenario chaos --n 7 --seed 42 --json\n"
               "  bftd sim run --spec my-scenario.json --trace run.jsonl --check-determinism",
    "sim sweep": "examples:\n  bftd sim sweep --scenarios baseline,twins --seeds 20\n"
                 "  bftd sim sweep --scenarios all --n 4,7 --seeds 500 --jobs 2\n"
                 "  bftd sim sweep --scenarios 'debate-*' --n 4,7 --seeds 20\n"
                 "  bftd sim sweep --scenarios chaos --seed-range 1000:2000 --json",
    "sim schema": "examples:\n  bftd sim schema > scenario-v1.schema.json",
    "audit verify": "examples:\n  bftd audit verify data-0/commit.wal --committee keys/committee.json\n"
                    "  bftd audit verify commit.wal --committee keys/committee.json --json",
    "audit report": "examples:\n  bftd audit report data-0/audit.jsonl\n"
                    "  bftd audit report data-*/audit.jsonl --json",
    "commit show": "examples:\n  bftd commit show 3f9a...c2 --wal data-0/commit.wal\n"
                   "  bftd commit show 3f9a...c2 --wal commit.wal --committee "
                   "keys/committee.json --json",
    "proposal validate": "examples:\n  bftd proposal validate proposal.json\n"
                         "  bftd proposal validate tests/fixtures/proposal-seed.json --json",
    "schema": "examples:\n  bftd schema --out schemas\n  bftd schema --out /tmp/bftd-schemas",
    "task open": "examples:\n"
                 "  bftd task open --question 'Roll back release 2.3?' --committee "
                 "cluster/committee.json --key cluster/agent-0.key\n"
                 "  bftd task open --question 'Adopt the new retry policy?' --context "
                 "'see RFC-12' --evidence doc:rfc-12 --evidence incident:INC-7 --max-rounds 2 "
                 "--round-ms 60000 --judge agent-1 --committee keys/committee.json --key "
                 "keys/agent-0.key --json",
    "task status": "examples:\n  bftd task status t-5-0 --committee cluster/committee.json "
                   "--key cluster/agent-0.key\n"
                   "  bftd task status t-5-0 --committee cluster/committee.json --key "
                   "cluster/client-0.key --json",
    "task resolve": "examples:\n  bftd task resolve t-5-0 --decision reject --notes 'not now' "
                    "--committee cluster/committee.json --key cluster/agent-1.key\n"
                    "  bftd task resolve t-5-0 --decision approve --proposal t-5-0.agent-0.r0 "
                    "--committee cluster/committee.json --key cluster/agent-1.key",
    "bench debate": "examples:\n  bftd bench debate\n  bftd bench debate --rounds 60 --json\n"
                    "  bftd bench debate --n 4,7 --seeds 1",
    "bench sim": "examples:\n  bftd bench sim\n"
                 "  bftd bench sim --scenario chaos --n 4 --requests 50 --seconds 20 --jobs 2 "
                 "--json",
    "bench viewchange": "examples:\n  bftd bench viewchange\n"
                        "  bftd bench viewchange --n 4,7 --seeds 3 --json\n"
                        "  bftd bench viewchange --n 10 --fail-at-s 2.5",
    "bench throughput": "examples:\n  bftd bench throughput --n 4\n"
                        "  bftd bench throughput --n 4 --clients 8,32,100 --duration 10 --json\n"
                        "  bftd bench throughput --clients 100 --batch-size 200 --keep",
}


def _command(group, name: str, help_text: str, examples: str | None = None):
    """One sub-command with its examples shown under ``--help``."""
    return group.add_parser(name, help=help_text, epilog=examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def _group(parser: argparse.ArgumentParser, dest: str, metavar: str):
    group = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
    group.required = True
    return group


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bftd", description="Governable multi-agent deliberation over signed PBFT.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n  bftd demo\n  bftd keys init --n 4 --dir keys\n"
                            "  bftd bench core --n 4 --batch 100 --json")
    parser.add_argument("--version", action="version", version=f"bftd {__version__}")
    commands = _group(parser, "command", "COMMAND")

    demo = _command(commands, "demo", "run a small committee in-process and show it",
                    EXAMPLES["demo"])
    demo.add_argument("--n", type=_members, default=4, help="committee size (default 4)")
    demo.add_argument("--json", action="store_true", help="print the report as one JSON object")
    demo.add_argument("--dir", type=Path, default=None,
                      help="keep the keystore, data directories (WALs, audit logs) and the "
                           "sandbox in this new or empty directory (default: a temporary "
                           "one, removed)")
    _llm_arguments(demo, "the honest members' debaters ask this OpenAI-compatible server "
                         "(default: scripted debaters)")
    demo.set_defaults(handler=cmd_demo)

    keys = _group(_command(commands, "keys", "genesis: key files and the committee manifest"),
                  "keys_command", "ACTION")
    init = _command(keys, "init", "write member/client keys and committee.json",
                    EXAMPLES["keys init"])
    init.add_argument("--n", type=_members, required=True, help="number of members (>= 4)")
    init.add_argument("--dir", type=Path, default=Path("keys"), help="keystore folder (default keys)")
    init.add_argument("--clients", type=int, default=1, help="authorised clients (default 1)")
    init.add_argument("--committee-id", default=None, help="committee id (default random)")
    where = init.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1", help="members' host (default 127.0.0.1)")
    where.add_argument("--hosts", type=lambda text: [h.strip() for h in text.split(",")],
                       default=None, metavar="H0,H1,...",
                       help="one host per member (separate machines): member i listens on "
                            "--base-port of the i-th host")
    init.add_argument("--base-port", type=_port, default=7000,
                      help="member i listens on base+i (with --hosts: on base)")
    init.add_argument("--force", action="store_true",
                      help="replace existing key files and committee.json in --dir")
    init.set_defaults(handler=cmd_keys_init)
    check = _command(keys, "check", "validate a committee manifest (and key files)",
                     EXAMPLES["keys check"])
    check.add_argument("--committee", type=Path, required=True, help="committee.json")
    check.add_argument("--key", type=Path, action="append", default=[],
                       help="a private key file that must belong to the committee (repeatable)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(handler=cmd_keys_check)

    node = _group(_command(commands, "node", "run one committee member"), "node_command",
                  "ACTION")
    node_run = _command(node, "run", "run member --id until Ctrl-C / SIGTERM",
                        EXAMPLES["node run"])
    node_run.add_argument("--id", type=_member_id, required=True, help="member id")
    node_run.add_argument("--committee", type=Path, required=True, help="committee.json")
    node_run.add_argument("--key", type=Path, required=True, help="this member's key file")
    node_run.add_argument("--data", type=Path, default=None,
                          help="data directory (default data-ID beside the committee file)")
    node_run.add_argument("--metrics-port", type=_port, default=None,
                          help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)")
    node_run.add_argument("--listen", default=None, metavar="HOST:PORT",
                          help="bind here instead of the member's committee address")
    node_run.add_argument("--lost-disk", action="store_true",
                          help="this member lost its data: sign nothing until caught up")
    node_run.add_argument("--log-level", default="info",
                          choices=["debug", "info", "warning", "error"])
    _tunable_arguments(node_run)
    _agent_arguments(node_run)
    node_run.set_defaults(handler=cmd_node_run)

    cluster = _group(_command(commands, "cluster", "a local committee of node processes"),
                     "cluster_command", "ACTION")
    up = _command(cluster, "up", "start n local nodes on 127.0.0.1 until Ctrl-C",
                  EXAMPLES["cluster up"])
    up.add_argument("--n", type=_members, default=4, help="committee size (default 4)")
    up.add_argument("--dir", type=Path, default=Path("cluster"),
                    help="keystore and data (created with keys init if empty; default cluster)")
    up.add_argument("--base-port", type=_port, default=7000,
                    help="member i listens on base+i (new keystores only; default 7000)")
    up.add_argument("--clients", type=_non_negative, default=1,
                    help="client keys in a new keystore (default 1)")
    up.add_argument("--metrics-base-port", type=_port, default=None,
                    help="member i serves metrics on 127.0.0.1:base+i")
    _tunable_arguments(up)
    _agent_arguments(up)
    up.set_defaults(handler=cmd_cluster_up)

    client = _group(_command(commands, "client", "the key-value application, as a client"),
                    "client_command", "ACTION")
    put = _command(client, "put", "store VALUE under KEY", EXAMPLES["client put"])
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    get = _command(client, "get", "read KEY (an ordered read)", EXAMPLES["client get"])
    get.add_argument("key", metavar="KEY")
    for sub in (put, get):
        sub.add_argument("--committee", type=Path, required=True, help="committee.json")
        sub.add_argument("--key", dest="key_file", type=Path, default=None,
                         help="client key file (default client-0.key beside the committee)")
        sub.add_argument("--timeout", type=_seconds, default=10.0,
                         help="seconds to wait for f+1 matching replies (default 10)")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(handler=cmd_client)

    task = _group(_command(commands, "task", "debates on a running committee (--app ledger)"),
                  "task_command", "ACTION")
    task_open = _command(task, "open", "open a debate, signed as the member owning --key",
                         EXAMPLES["task open"])
    task_open.add_argument("--question", required=True, help="what the agents decide")
    task_open.add_argument("--context", default=None, help="background for the debaters")
    task_open.add_argument("--evidence", action="extend", nargs="+", default=None,
                           metavar="REF", help="evidence references (repeatable)")
    task_open.add_argument("--max-rounds", type=int, default=None,
                           help="debate rounds at most (default 3)")
    task_open.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                           help="token budget of the task (default 20000)")
    task_open.add_argument("--agent-budget", type=int, default=None, metavar="TOKENS",
                           help="token budget per agent (default: the task budget split evenly)")
    task_open.add_argument("--deadline-ms", type=int, default=None,
                           help="task lifetime; past it an undecided task escalates "
                                "(default 600000)")
    task_open.add_argument("--round-ms", type=int, default=None,
                           help="a round closes after this long without every contribution "
                                "(default 30000)")
    task_open.add_argument("--vote-ms", type=int, default=None,
                           help="vote window after the debate (default 30000)")
    task_open.add_argument("--threshold", type=int, default=None,
                           help="approvals needed (default and minimum 2f+1)")
    task_open.add_argument("--judge", default=None, metavar="NAME",
                           help="member who resolves an escalated task (default: a human)")
    task_open.add_argument("--no-audit", action="store_true",
                           help="a groupthink-flagged approval needs no auditor's approval")
    task_status = _command(task, "status", "transcript, votes and decision of a task "
                                           "(ordered reads)", EXAMPLES["task status"])
    task_status.add_argument("task_id", metavar="ID", help="the task id (t-SEQ-INDEX)")
    task_resolve = _command(task, "resolve", "decide an escalated task (its judge or a human)",
                            EXAMPLES["task resolve"])
    task_resolve.add_argument("task_id", metavar="ID", help="the task id")
    task_resolve.add_argument("--decision", choices=["approve", "reject"], required=True)
    task_resolve.add_argument("--proposal", default=None, metavar="ID",
                              help="the proposal approved (required with approve)")
    task_resolve.add_argument("--notes", default=None, help="why")
    for sub in (task_open, task_status, task_resolve):
        sub.add_argument("--committee", type=Path, required=True, help="committee.json")
        sub.add_argument("--key", type=Path, required=True,
                         help="a member's key file (status: a client's key also works)")
        sub.add_argument("--timeout", type=_seconds, default=10.0,
                         help="seconds to wait for each ordered call (default 10)")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(handler=cmd_task)

    bench = _group(_command(commands, "bench", "benchmarks (JSON with --json)"),
                   "bench_command", "KIND")
    bench_debate = _command(bench, "debate", "consensus overhead per debate round on a local "
                                             "4-peer TCP committee (+ messages per round vs n "
                                             "in the simulator)", EXAMPLES["bench debate"])
    bench_debate.add_argument("--rounds", type=_positive, default=30,
                              help="debate rounds measured (default 30)")
    bench_debate.add_argument("--n", type=_member_list, default=None, dest="sim_n",
                              help="committee sizes of the simulated part (default 4,7,10,13)")
    bench_debate.add_argument("--seeds", type=_positive, default=None,
                              help="simulated seeds per n, figures are medians (default 3)")
    bench_debate.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_debate.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                              help="also draw round close latency and messages per round vs "
                                   "n (needs the plot extra: pip install -e '.[plot]')")
    bench_debate.set_defaults(handler=cmd_bench_debate)
    core = _command(bench, "core", "replicas in one process, no network", EXAMPLES["bench core"])
    core.add_argument("--n", type=_int_list, default=[4, 7, 10, 13, 16], help="committee sizes")
    core.add_argument("--batch", type=_int_list, default=[1, 10, 100], help="batch sizes")
    core.add_argument("--requests", type=_positive, default=2000, help="requests per point")
    core.add_argument("--backend", choices=["pynacl", "cryptography"], default=None,
                      help="signature backend (default: pynacl if installed)")
    core.add_argument("--seed", type=int, default=1)
    core.add_argument("--json", action="store_true", help="print the report as JSON")
    core.set_defaults(handler=cmd_bench_core)
    complexity = _command(
        bench, "complexity", "messages and bytes per operation and per view change vs PBFT's "
                             "analytic counts (simulator)",
        "examples:\n  bftd bench complexity\n"
        "  bftd bench complexity --n 4,7,10,13,16,22,31 --batch 1,10,100 --json > c.json\n"
        "  bftd bench complexity --n 4,7 --batch 1,10 --requests 100 --plot complexity.png\n"
        "the default sweep (7 sizes x 3 batches, 64 x batch requests each) takes about a "
        "minute on one core")
    complexity.add_argument("--n", type=_member_list, default=[4, 7, 10, 13, 16, 22, 31],
                            help="committee sizes (default 4,7,10,13,16,22,31)")
    complexity.add_argument("--batch", type=_int_list, default=[1, 10, 100],
                            help="batch sizes (default 1,10,100)")
    complexity.add_argument("--requests", type=_positive, default=None, metavar="N",
                            help="requests per (n, batch), rounded up to whole batches "
                                 "(default K x batch: one checkpoint interval of full "
                                 "batches, i.e. 64, 640 and 6400 requests with K = 64; the "
                                 "default sweep then takes about a minute on one core)")
    complexity.add_argument("--seeds", type=_positive, default=1,
                            help="seeds per (n, batch); counts are means (default 1: the "
                                 "fixed-delay run is the same for every seed)")
    complexity.add_argument("--checkpoint-interval", type=_positive, default=64, metavar="K",
                            help="a checkpoint every K sequence numbers (default 64)")
    complexity.add_argument("--jobs", type=_positive, default=1,
                            help="worker processes (default 1)")
    complexity.add_argument("--json", action="store_true",
                            help="print one record per (n, batch, type, phase) as JSON")
    complexity.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                            help="also draw a log-log PNG: messages per operation and per "
                                 "view change vs n over PBFT's curves (needs the plot extra: "
                                 "pip install -e '.[plot]')")
    complexity.set_defaults(handler=cmd_bench_complexity)
    bench_sim = _command(bench, "sim", "simulator seed-runs per minute (pool of processes)",
                         EXAMPLES["bench sim"])
    bench_sim.add_argument("--scenario", default="chaos", help="built-in scenario (default chaos)")
    bench_sim.add_argument("--n", type=_members, default=4, help="committee size (default 4)")
    bench_sim.add_argument("--requests", type=_positive, default=50,
                           help="requests per run (default 50)")
    bench_sim.add_argument("--seconds", type=_seconds, default=20.0,
                           help="wall seconds to measure (default 20)")
    bench_sim.add_argument("--jobs", type=_positive, default=2, help="processes (default 2)")
    bench_sim.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_sim.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                           help="also draw seed-runs per minute and wall ms per run (needs "
                                "the plot extra: pip install -e '.[plot]')")
    bench_sim.set_defaults(handler=cmd_bench_sim)
    bench_vc = _command(bench, "viewchange", "primary crash: time to the first commit in the new "
                                             "view, view-change messages and bytes vs n",
                        EXAMPLES["bench viewchange"])
    bench_vc.add_argument("--n", type=_member_list, default=[4, 7, 10, 13, 16],
                          help="committee sizes (default 4,7,10,13,16)")
    bench_vc.add_argument("--seeds", type=_positive, default=5,
                          help="seeds per n, figures are medians (default 5)")
    bench_vc.add_argument("--fail-at-s", type=_seconds, default=None, metavar="SECONDS",
                          help="crash the primary at this simulated time (default: right "
                               "after it executes seq 72)")
    bench_vc.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_vc.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                          help="also draw view-change latency, messages and bytes vs n "
                               "(needs the plot extra: pip install -e '.[plot]')")
    bench_vc.set_defaults(handler=cmd_bench_viewchange)
    bench_tp = _command(bench, "throughput", "node processes on 127.0.0.1 driven by load-"
                                             "generator processes: ops/s, latency, CPU",
                        EXAMPLES["bench throughput"])
    bench_tp.add_argument("--n", type=_members, default=4, help="committee size (default 4)")
    bench_tp.add_argument("--clients", type=_int_list, default=[8, 32, 100],
                          help="closed-loop client counts, one cluster each (default 8,32,100)")
    bench_tp.add_argument("--duration", type=_seconds, default=10.0, metavar="SECONDS",
                          help="measurement window per point (default 10)")
    bench_tp.add_argument("--warmup", type=_seconds, default=2.0, metavar="SECONDS",
                          help="load before the window, not measured (default 2)")
    bench_tp.add_argument("--loadgens", type=_positive, default=2,
                          help="load-generator processes sharing the clients (default 2)")
    bench_tp.add_argument("--batch-size", type=_positive, default=None,
                          help="the nodes' requests per PRE-PREPARE (default 100)")
    bench_tp.add_argument("--profile", action="store_true",
                          help="cProfile every node; the JSON says where each one's time went")
    bench_tp.add_argument("--keep", action="store_true",
                          help="keep the keystores, data and logs (kept anyway on failure)")
    bench_tp.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_tp.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                          help="also draw throughput vs clients and the latency CDF (needs "
                               "the plot extra: pip install -e '.[plot]')")
    bench_tp.set_defaults(handler=cmd_bench_throughput)

    sim = _group(_command(commands, "sim", "deterministic simulation: scenarios, runs, sweeps"),
                 "sim_command", "ACTION")
    sim_list = _command(sim, "list", "built-in scenarios with one-line descriptions",
                        EXAMPLES["sim list"])
    sim_list.add_argument("--json", action="store_true", help="print the list as JSON")
    sim_list.set_defaults(handler=cmd_sim_list)
    sim_run = _command(sim, "run", "run one scenario; exit 1 if the outcome misses its expect",
                       EXAMPLES["sim run"])
    source = sim_run.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", metavar="NAME", help="a built-in scenario (bftd sim list)")
    source.add_argument("--spec", metavar="FILE", type=Path, help="a scenario spec v1 JSON file")
    sim_run.add_argument("--n", type=_members, default=None, help="override the committee size")
    sim_run.add_argument("--seed", type=_seed, default=None, help="override the seed")
    sim_run.add_argument("--requests", type=_positive, default=None,
                         help="override the number of requests")
    sim_run.add_argument("--json", action="store_true", help="print the result as JSON")
    sim_run.add_argument("--trace", metavar="FILE", type=Path, default=None,
                         help="write the event log as JSON lines")
    sim_run.add_argument("--check-determinism", action="store_true",
                         help="run twice; exit 1 if the trace hashes differ")
    sim_run.set_defaults(handler=cmd_sim_run)
    sim_sweep = _command(sim, "sweep", "many seeds of many scenarios; exit 1 if any run misses "
                                       "its expect", EXAMPLES["sim sweep"])
    sim_sweep.add_argument("--scenarios", default="all",
                           help="'all', or comma-separated built-in names, patterns "
                                "('debate-*') and spec files (default all)")
    sim_sweep.add_argument("--n", type=_member_list, default=None,
                           help="committee sizes, e.g. 4,7 (default: each scenario's own)")
    seeds = sim_sweep.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_positive, default=None, help="seeds 0..K-1 (default 10)")
    seeds.add_argument("--seed-range", type=_seed_range, default=None, metavar="A:B",
                       help="seeds A..B-1")
    sim_sweep.add_argument("--jobs", type=_positive, default=None,
                           help="worker processes (default: CPU count)")
    sim_sweep.add_argument("--executor", choices=["local", "dask"], default="local",
                           help="local: a process pool (default); dask: Dask distributed, "
                                "a local cluster of --jobs workers or --scheduler's (extra "
                                "'distributed'); the results are the same on either")
    sim_sweep.add_argument("--scheduler", default=None, metavar="ADDRESS",
                           help="with --executor dask: a running scheduler, e.g. "
                                "tcp://10.0.0.5:8786 (its workers need bftdeliberate)")
    sim_sweep.add_argument("--json", action="store_true", help="print the report as JSON")
    sim_sweep.set_defaults(handler=cmd_sim_sweep)
    sim_schema = _command(sim, "schema", "print the JSON Schema of scenario spec v1",
                          EXAMPLES["sim schema"])
    sim_schema.set_defaults(handler=cmd_sim_schema)

    proposal = _group(_command(commands, "proposal", "proposal.json: the deliberation output"),
                      "proposal_command", "ACTION")
    validate = _command(proposal, "validate", "check a proposal.json against its schema",
                        EXAMPLES["proposal validate"])
    validate.add_argument("file", metavar="FILE", type=Path, help="a proposal.json file")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON")
    validate.set_defaults(handler=cmd_proposal_validate)
    audit = _group(_command(commands, "audit", "the commit layer's write-ahead log and audit"),
                   "audit_command", "ACTION")
    verify = _command(audit, "verify", "check a commit WAL's hash chain and every record's "
                      "signature (read-only)", EXAMPLES["audit verify"])
    verify.add_argument("wal", metavar="WAL", type=Path, help="a commit WAL file")
    verify.add_argument("--committee", type=Path, required=True, help="committee.json")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_audit_verify)
    report = _command(audit, "report", "figures from an audit log (JSON lines): failure "
                      "reasons, rollbacks, conflicts, duplicate commits, attribution",
                      EXAMPLES["audit report"])
    report.add_argument("log", metavar="LOG", type=Path, nargs="+",
                        help="audit logs (JSON lines), e.g. every member's: one report over "
                             "all their events")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(handler=cmd_audit_report)
    commit = _group(_command(commands, "commit", "the commit layer's records"),
                    "commit_command", "ACTION")
    show = _command(commit, "show", "print one commit's commit_record.json from a WAL "
                    "(read-only)", EXAMPLES["commit show"])
    show.add_argument("commit_id", metavar="ID", help="the commit id (64 hex digits)")
    show.add_argument("--wal", type=Path, required=True, action="append",
                      help="a commit WAL file (repeat for every member's: a commit taken "
                           "over lists each submitter's attempts)")
    show.add_argument("--committee", type=Path, help="committee.json: also verify every "
                      "record's signature and name signers (default: chain only)")
    show.add_argument("--json", action="store_true", help="print only commit_record.json")
    show.set_defaults(handler=cmd_commit_show)
    schema = _command(commands, "schema", "write the published JSON Schemas into a folder",
                      EXAMPLES["schema"])
    schema.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for proposal.schema.json, ledger-operation.schema.json, "
                             "scenario.schema.json and the commit-layer schemas "
                             "(execution-intent, step-attempt, commit-result, commit-record, "
                             "audit-event) (created if missing; existing schema files are "
                             "replaced)")
    schema.set_defaults(handler=cmd_schema)
    return parser


# ------------------------------------------------------------------ commands


def _llm_option(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [args.llm_base_url, args.model, args.api_key_env]
    if all(value is None for value in given):
        return None
    if args.llm_base_url is None or args.model is None:
        raise ConfigError("--llm-base-url and --model go together (and --api-key-env with "
                          "them)")
    return {"base_url": args.llm_base_url, "model": args.model,
            "api_key_env": args.api_key_env}


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.demo import run_demo

    llm = _llm_option(args)
    progress = None if args.json else (
        lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True))
    result = run_demo(n=args.n, llm=llm, progress=progress, directory=args.dir)
    report = result.report
    code = EXIT_OK if result.ok else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    if report.get("error"):
        Console(stderr=True).print(f"bftd: demo failed: {report['error']}", markup=False,
                                   highlight=False)
        return code
    # Wider than the 80 columns rich assumes for a pipe: the tables are read in logs and files.
    _render_demo(report, console if console.is_terminal else Console(width=120))
    return code


def _render_demo(report: dict[str, Any], console: Console) -> None:
    from rich.panel import Panel

    byzantine = report["byzantine"]
    task = report["task"]
    console.print(f"[bold]bftd demo[/]: {report['n']} members (f={report['f']}) over "
                  f"{report['transport']}, committee {report['committee_digest'][:16]}…; "
                  f"{byzantine['name']} is Byzantine ({byzantine['behaviour']})")
    console.print(Panel(f"[bold]{task['question']}[/]\n\n{task['context']}\n\nevidence: "
                        + ", ".join(task["evidence"]),
                        title=f"task {task['task_id']} opened by {task['opener']}",
                        title_align="left"))
    for round_ in report["rounds"]:
        closed = (f"closed after {round_['duration_ms']} ms" if round_["closed"] else "open")
        table = Table(title=f"round {round_['round']} ({'blind, ' if round_['round'] == 0 else ''}"
                            f"{closed})", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("agent", "position", "conf", "evidence", "tokens", "proposal"):
            table.add_column(column, justify="right" if column in ("conf", "tokens") else "left")
        for c in round_["contributions"]:
            name = c["agent"] + (" (Byzantine)" if c["agent"] == byzantine["name"] else "")
            table.add_row(name, c["position"] or "(abstained)", f"{c['confidence']}%",
                          ", ".join(c["evidence"]) or "-", str(c["tokens"]),
                          c["proposal_id"] or "")
        console.print(table)
    proposal = report["proposal"]
    if proposal is not None:
        plan = Table(title=f"proposal {proposal['proposal_id']}: plan", title_justify="left",
                     box=box.SIMPLE_HEAD)
        for column in ("#", "step", "target", "cmd", "timeout ms"):
            plan.add_column(column)
        for number, step in enumerate(proposal["plan"], 1):
            plan.add_row(str(number), step["step"], step.get("target", ""), step.get("cmd", ""),
                         str(step.get("timeout_ms", "")))
        console.print(plan)
    votes = Table(title="signed votes (each a request signed by its agent, verified by every "
                        "replica, ordered by PBFT)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("agent", "vote", "notes"):
        votes.add_column(column)
    for vote in report["votes"]:
        style = "green" if vote["decision"] == "approve" else "red"
        votes.add_row(vote["agent"], f"[{style}]{vote['decision']}[/]", vote["notes"])
    console.print(votes)
    for evidence in byzantine["evidence"]:
        console.print(f"[yellow]contained[/]: {evidence['agent']}'s extra vote (seq "
                      f"{evidence['seq']}) refused by every honest replica: "
                      f"{evidence['reason']} ({evidence['detail']})", highlight=False)
    decision = report["decision"]
    colour = {"approved": "green", "rejected": "red"}.get(decision, "yellow")
    tokens = report["tokens"]
    flags = report["groupthink"]["signals"]
    console.print(f"decision: [bold {colour}]{str(decision).upper()}[/] "
                  f"(threshold {task['threshold']}/{task['voters']}), exit reason "
                  f"{report['exit_reason']}, {report['rounds_used']} rounds; tokens "
                  f"{tokens['used']}/{tokens['budget']} ("
                  + ", ".join(f"{a} {t}" for a, t in tokens["by_agent"].items()) + ")",
                  highlight=False)
    console.print("groupthink flags: " + (", ".join(
        f"{f['kind']} (round {f['round']})" for f in flags) or "none")
        + f"; commit ready: {report['commit_ready']}; honest members agree: "
        f"{report['honest_members_agree']}; {report['seconds']:.2f} s", highlight=False)
    if proposal is not None:
        console.print("proposal.json:")
        console.print_json(json.dumps(proposal))
    _render_demo_commit(report, console)
    if not report["ok"] and report["debaters"] == "llm":
        console.print("[red]no honest debater answered[/]: is the model server up? "
                      "(per-member model calls and errors: bftd demo --json, members[].llm)")


def _render_demo_commit(report: dict[str, Any], console: Console) -> None:
    commit = report.get("commit")
    if commit is None:
        return
    colour = "green" if commit["result"] == "committed" else "red"
    submitters = " -> ".join(f"{s['submitter']} (view {s['view']})"
                             for s in commit["submitters"])
    console.print(f"commit {commit['commit_id'][:16]}: [bold {colour}]{commit['result']}[/] "
                  f"by {submitters}; members agree: {commit['members_agree']}",
                  highlight=False)
    for fault in commit["injected"]:
        what = ("transient failure, retried after a backoff" if fault["fault"] == "transient"
                else "the submitter crashed after the effect, before any record of it; the "
                     "next primary asked the handler and did not apply it again")
        console.print(f"  injected at step {fault['step']}: {what}", highlight=False)
    steps = Table(box=box.SIMPLE_HEAD, title=f"plan applied in {commit['sandbox']}")
    for column in ("step", "kind", "target / command", "status", "attempts"):
        steps.add_column(column)
    for step in commit["steps"]:
        steps.add_row(str(step["index"]), step["step"],
                      step.get("target") or step.get("cmd") or "", step["status"],
                      str(step["attempts"]))
    console.print(steps)
    after = commit["after"]
    for name, content in after["files"].items():
        if content != commit["before"]["files"].get(name):
            console.print(f"  {name}: {commit['before']['files'].get(name)!r} -> {content!r}",
                          markup=False, highlight=False)
    for name, value in after["kv"].items():
        console.print(f"  kv {name}: {commit['before']['kv'].get(name)!r} -> {value!r}",
                      markup=False, highlight=False)
    audit = report["audit"]
    chain = audit.get("attribution") or {}
    console.print(f"audit: {audit['events']} events; duplicate commits: "
                  f"[bold]{report['duplicate_commits']}[/]; effects applied: "
                  f"{report['effects_applied']} of {len(commit['steps'])} steps; proposer "
                  f"{chain.get('proposer')}, approvers {', '.join(chain.get('approvers') or [])}"
                  f", submitters {', '.join(chain.get('submitters') or [])}", highlight=False)
    if commit["record"] is not None:
        console.print(f"commit_record.json: {len(commit['record']['attempts'])} attempts, "
                      f"{len(commit['record']['signatures'])} signed WAL records (bftd demo "
                      "--json: commit.record)", highlight=False)


def cmd_keys_init(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.committee import init_keystore

    if args.clients < 0:
        raise ConfigError(f"--clients must be >= 0, got {args.clients}")
    if args.hosts is None and args.base_port + args.n - 1 > 65535:
        raise ConfigError(f"--base-port {args.base_port}: members would listen above port 65535")
    committee = init_keystore(args.dir, args.n, clients=args.clients,
                              committee_id=args.committee_id, host=args.host,
                              base_port=args.base_port, overwrite=args.force, hosts=args.hosts)
    console.print(f"wrote {committee.n} member keys, {len(committee.clients)} client keys and "
                  f"{args.dir / 'committee.json'} (committee {committee.committee_id}, "
                  f"digest {committee.digest.hex()[:16]}…)")
    return EXIT_OK


def cmd_node_run(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.node import node_run

    return node_run(member=args.id, committee_path=args.committee, key_path=args.key,
                    data_dir=args.data, metrics_port=args.metrics_port, listen=args.listen,
                    tunables=_tunables(args), lost_disk=args.lost_disk,
                    log_level=args.log_level, agent=_agent_options(args))


def cmd_cluster_up(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.node import cluster_up

    return cluster_up(n=args.n, directory=args.dir, base_port=args.base_port,
                      metrics_base_port=args.metrics_base_port, tunables=_tunables(args),
                      clients=args.clients, agent=_agent_options(args),
                      echo=lambda text: console.print(text, highlight=False, markup=False))


def cmd_client(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.node import client_call

    operation = args.client_command
    value = args.value.encode("utf-8") if operation == "put" else None
    outcome = client_call(operation=operation, key=args.key, value=value,
                          committee_path=args.committee, key_path=args.key_file,
                          timeout=args.timeout)
    if args.json:
        print(json.dumps(outcome))
    elif not outcome["ok"]:
        Console(stderr=True).print(f"bftd: {outcome['error']}", markup=False, highlight=False)
    else:
        result = outcome["result"]
        if operation == "get" and isinstance(result, dict) and result.get("ok"):
            found = result.get("value")
            console.print("(not found)" if found is None else found, markup=False,
                          highlight=False)
        else:
            console.print(json.dumps(result), markup=False, highlight=False)
    return EXIT_OK if outcome["ok"] else EXIT_FAILED


def cmd_keys_check(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.committee import load_committee
    from bftdeliberate.crypto import load_private_key

    committee = load_committee(args.committee)
    owners: list[dict[str, Any]] = []
    for path in args.key:
        key = load_private_key(path)
        owner = next((f"member {m.id}" for m in committee.members
                      if m.public_key_bytes == key.public_key), None)
        owner = owner or next((f"client {c.id}" for c in committee.clients
                               if c.public_key_bytes == key.public_key), None)
        if owner is None:
            raise ConfigError(f"{path}: key belongs to no member or client of {args.committee}")
        owners.append({"file": str(path), "owner": owner})
    summary = {
        "committee": str(args.committee), "committee_id": committee.committee_id,
        "digest": committee.digest.hex(), "n": committee.n, "f": committee.f,
        "quorum": committee.quorum, "reply_quorum": committee.reply_quorum,
        "members": [{"id": m.id, "name": m.name, "address": m.address, "roles": list(m.roles)}
                    for m in committee.members],
        "clients": [c.id for c in committee.clients], "keys": owners,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    console.print(f"{args.committee}: committee {committee.committee_id} n={committee.n} "
                  f"f={committee.f} quorum={committee.quorum} reply quorum={committee.reply_quorum}"
                  f" digest {committee.digest.hex()[:16]}…")
    for owner in owners:
        console.print(f"{owner['file']}: {owner['owner']}")
    return EXIT_OK


def cmd_bench_core(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.core import run

    command = "bftd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "bftd bench core"
    report = run(args.n, args.batch, args.requests, args.backend, args.seed, command=command)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    table = Table(title=f"bench core ({report['backend']}, verify {report['verify_rate_per_s']:.0f}/s)")
    for column in ("n", "batch", "ops/s", "verify bound", "ratio", "p50 ms", "p99 ms",
                   "signs/op", "verifies/op", "bytes/op", "pp", "prep", "commit", "reply",
                   "matches PBFT"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        m = r["messages_per_batch"]
        table.add_row(str(r["n"]), str(r["batch"]), f"{r['ops_per_s']:.0f}",
                      f"{r['verify_bound_ops_per_s']:.0f}", f"{r['ops_over_verify_bound']:.2f}",
                      f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}",
                      f"{r['signs_per_op']:.2f}", f"{r['verifies_per_op']:.2f}",
                      f"{r['bytes_per_op']:.0f}", f"{m['pre_prepare']:g}", f"{m['prepare']:g}",
                      f"{m['commit']:g}", f"{m['reply']:g}",
                      "yes" if r["messages_match_analytic"] else "NO")
    console.print(table)
    return EXIT_OK if all(r["state_digests_equal"] for r in report["results"]) else EXIT_FAILED


#: Default number of seeds of a sweep (seeds 0..K-1).
DEFAULT_SWEEP_SEEDS = 10
#: Failed runs whose repro line a sweep prints (all are in --json).
MAX_FAILURES_SHOWN = 50
SWEEP_TABLE_WIDTH = 100
BENCH_VC_TABLE_WIDTH = 130


def cmd_sim_list(args: argparse.Namespace, console: Console) -> int:
    from simulator.spec import builtin_names, load_builtin

    scenarios = [load_builtin(name) for name in builtin_names()]
    if args.json:
        # chaos draws n from the seed unless --n fixes it: no n of its own.
        print(json.dumps([{"name": s.name, "description": s.description,
                           "n": None if s.generator == "chaos" else s.n,
                           "generator": s.generator, "expect": s.expect.model_dump()}
                          for s in scenarios], indent=2))
        return EXIT_OK
    table = Table(title="Built-in scenarios (bftd sim run --scenario NAME)")
    for column in ("name", "expect", "description"):
        table.add_column(column, no_wrap=column != "description")
    for s in scenarios:
        live = {True: "live", False: "stalls", None: "-"}[s.expect.liveness]
        table.add_row(s.name, f"{'safe' if s.expect.safety else 'UNSAFE'}, {live}",
                      s.description)
    console.print(table)
    return EXIT_OK


def _sim_scenario(args: argparse.Namespace):
    from simulator.spec import load_scenario

    return load_scenario(args.scenario, args.spec)


def cmd_sim_run(args: argparse.Namespace, console: Console) -> int:
    from simulator.runner import run_scenario

    scenario = _sim_scenario(args)
    overrides = {"n": args.n, "seed": args.seed, "requests": args.requests}
    result = run_scenario(scenario, record_trace=args.trace is not None, **overrides)
    report = result.as_dict()
    same_trace = True
    if args.check_determinism:
        again = run_scenario(scenario, **overrides)
        same_trace = again.trace_hash == result.trace_hash
        report["determinism"] = {"same_trace": same_trace, "trace_hashes":
                                 [result.trace_hash, again.trace_hash]}
    if args.trace is not None:
        try:
            with args.trace.open("w", encoding="utf-8") as out:
                for event in result.trace or []:
                    out.write(json.dumps(event, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise ConfigError(f"{args.trace}: cannot write the trace: {exc.strerror}") from None
    code = EXIT_OK if result.ok and same_trace else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    verdict = "[green]as expected[/]" if result.ok else "[red]NOT as expected[/]"
    console.print(f"[bold]{result.scenario}[/] n={result.n} f={result.f} seed={result.seed}: "
                  f"safety {result.safety}, liveness {result.liveness} "
                  f"({result.committed}/{result.requests} committed) -- {verdict} "
                  f"(expect {json.dumps(result.expect)})")
    console.print(f"simulated {result.sim_time_ms / 1000:.3f} s, {result.events} events, "
                  f"{result.messages['total']} messages, {result.bytes} bytes, in "
                  f"{result.wall_seconds * 1000:.0f} ms; views {result.views}; executed "
                  f"{result.executed}; Byzantine {result.byzantine_members or 'none'}")
    if result.debate is not None:
        debate = result.debate
        tokens = debate.get("tokens") or {}
        console.print(
            f"debate {debate.get('task_id')}: decision {debate.get('decision')} (exit "
            f"{debate.get('exit_reason')}), rounds {debate.get('rounds')}/"
            f"{debate.get('max_rounds')}, approvals {debate.get('approvals')}, tokens "
            f"{tokens.get('used')}/{tokens.get('budget')}, flags {debate.get('signals')}, "
            f"commit ready {debate.get('commit_ready')}, rejected "
            f"{debate.get('rejection_counts')}", markup=False, highlight=False)
    commit = getattr(result, "commit", None)
    if commit is not None:
        for entry in commit.get("commits", []):
            submitters = " -> ".join(f"{who} (view {view})" for who, view in entry["intents"])
            console.print(f"commit {entry['commit_id'][:16]} of {entry['task_id']}: "
                          f"{entry['result'] or 'pending'} by {submitters}; rollback "
                          f"{entry['rollback']}", markup=False, highlight=False)
        console.print(
            f"effects applied {commit.get('effects_applied')}, in place "
            f"{commit.get('effects_in_place')}, duplicate effects "
            f"{commit.get('duplicate_effects')}; retries {commit.get('retries')}, "
            f"compensations {commit.get('compensations')}, conflicts "
            f"{commit.get('conflicts')}, takeovers {commit.get('takeovers')}, refused calls "
            f"{commit.get('refusals')}; expectation met: {commit.get('expect_met')}",
            markup=False, highlight=False)
    console.print(f"trace {result.trace_hash}", highlight=False)
    if args.check_determinism:
        console.print("determinism: " + ("[green]same trace hash twice[/]" if same_trace
                                         else "[red]trace hashes DIFFER[/]"))
    if result.violations:
        table = Table(title="Violations")
        for column in ("oracle", "members", "seq", "event", "t ms", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        for v in result.violations:
            table.add_row(v["oracle"], ",".join(map(str, v["members"])), str(v["seq"]),
                          str(v["event"]), f"{v['time_ms']:.1f}", v["detail"])
        console.print(table)
    console.print(f"repro: {result.repro}", markup=False, highlight=False, soft_wrap=True)
    return code


def cmd_sim_sweep(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.spec import builtin_names, load_builtin, load_file
    from simulator.sweep import default_jobs, sweep

    if args.scheduler is not None and args.executor != "dask":
        raise ConfigError("--scheduler is an option of --executor dask")
    if args.executor == "dask" and importlib.util.find_spec("distributed") is None:
        raise ConfigError("--executor dask needs Dask distributed: pip install -e "
                          "'.[distributed]'")

    known = builtin_names()
    names = []
    for entry in ["*"] if args.scenarios.strip() == "all" else args.scenarios.split(","):
        entry = entry.strip()
        if any(char in entry for char in "*?[") and not entry.endswith(".json"):
            # A shell-style pattern over the built-in names ('debate-*', 'commit-*').
            matched = [name for name in known if fnmatch.fnmatchcase(name, entry)]
            if not matched:
                raise ConfigError(f"--scenarios: {entry!r} matches no built-in scenario "
                                  f"(known: {', '.join(known)})")
            names += [name for name in matched if name not in names]
        elif entry:
            names.append(entry)
    # An entry that looks like a path is a user's spec file.
    is_file = [name.endswith(".json") or "/" in name for name in names]
    unknown = [name for name, file in zip(names, is_file) if not file and name not in known]
    if not names or unknown:
        raise ConfigError(f"--scenarios: unknown scenario {unknown[0] if unknown else '(none)'!r} "
                          f"(known: all, {', '.join(known)}, or a spec file)")
    scenarios = [load_file(name) if file else load_builtin(name)
                 for name, file in zip(names, is_file)]
    skipped: list[tuple[str, int, str]] = []
    skip: set[tuple[int, int]] = set()
    if args.n is not None:  # validate every override before spending minutes on runs
        for index, scenario in enumerate(scenarios):
            for n in args.n:
                try:
                    scenario.with_overrides(n=n)
                except ConfigError as exc:
                    # E.g. two faulty members need n >= 7: that size is not this scenario's.
                    skipped.append((scenario.name, n, str(exc)))
                    skip.add((index, n))
        if len(skip) == len(scenarios) * len(args.n):
            raise ConfigError(f"--n: no scenario is defined at these sizes: {skipped[0][2]}")
    seeds = args.seed_range if args.seed_range is not None else range(
        args.seeds if args.seeds is not None else DEFAULT_SWEEP_SEEDS)
    jobs = args.jobs or default_jobs()
    total = (len(scenarios) * len(args.n or [None]) - len(skip)) * len(seeds)
    show_progress = console.is_terminal and not args.json
    progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} missed"), TimeElapsedColumn(),
                        console=console, disable=not show_progress, transient=True)
    with progress:
        task = progress.add_task("sweep", total=total, failed=0)
        missed = [0]

        def advance(run: dict) -> None:
            missed[0] += not run["ok"]
            progress.update(task, advance=1, failed=missed[0])

        report = sweep(scenarios, args.n, seeds, jobs=jobs, on_result=advance,
                       skip=frozenset(skip), executor=args.executor,
                       scheduler=args.scheduler)
    code = EXIT_OK if report.ok else EXIT_FAILED
    if args.json:
        print(json.dumps({**report.as_dict(), "skipped": [
            {"scenario": name, "n": n, "reason": why} for name, n, why in skipped]}, indent=2))
        return code
    for name, n, why in skipped:
        console.print(f"skipped {name} at n={n}: {why.split(': ', 1)[-1]}", markup=False,
                      highlight=False, soft_wrap=True)
    table = Table(title=f"bftd sim sweep: {len(scenarios)} scenarios x "
                        f"{len(args.n or ['own n'])} sizes x {len(seeds)} seeds")
    # unsafe = safety violated, stalled = liveness failed, done = workload completed.
    table.box = box.SIMPLE_HEAD
    for column in ("scenario", "n", "expect", "runs", "ok", "unsafe", "stalled", "done",
                   "ev/run", "ms/run"):
        table.add_column(column, justify="left" if column in ("scenario", "expect") else "right",
                         no_wrap=True)
    for row in report.by_scenario:
        expect = row["expect"]
        live = {True: "live", False: "stall", None: "-"}[expect["liveness"]]
        style = None if row["ok"] == row["runs"] else "red"
        table.add_row(row["scenario"], str(row["n"]),
                      f"{'safe' if expect['safety'] else 'unsafe'}/{live}", str(row["runs"]),
                      str(row["ok"]), str(row["violations"]), str(row["liveness_failures"]),
                      str(row["completed"]), f"{row['mean_events']:.0f}",
                      f"{row['mean_wall_ms']:.1f}", style=style)
    # Wider than the 80 columns rich assumes for a pipe: the table is read in logs and files.
    wide = console if console.is_terminal else Console(width=SWEEP_TABLE_WIDTH)
    wide.print(table)
    summary = report.summary()
    console.print(f"runs {summary['runs']}, missed expectation {summary['missed_expectation']}, "
                  f"violations {summary['violations']} (unexpected "
                  f"{summary['unexpected_violations']}), liveness failures "
                  f"{summary['liveness_failures']}, errors {summary['errors']}; "
                  f"{summary['runs_per_s']} runs/s on {summary['jobs']} jobs, "
                  f"{summary['wall_seconds']} s")
    failures = report.failures
    for run in failures[:MAX_FAILURES_SHOWN]:
        why = run.get("error") or (run["violations"][0]["detail"] if run["violations"] else
                                   f"{run['committed']}/{run['requests']} committed")
        console.print(f"FAILED {run['repro']}  # safety {run['safety']}, liveness "
                      f"{run['liveness']}: {why}", markup=False, highlight=False,
                      soft_wrap=True)  # one line each: copy-pasteable
    if len(failures) > MAX_FAILURES_SHOWN:
        console.print(f"... and {len(failures) - MAX_FAILURES_SHOWN} more (all in --json)")
    return code


def cmd_sim_schema(args: argparse.Namespace, console: Console) -> int:
    from simulator.spec import scenario_json_schema

    print(json.dumps(scenario_json_schema(), indent=2))
    return EXIT_OK


def cmd_proposal_validate(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.files import load_proposal

    proposal = load_proposal(args.file)
    decision = proposal.decision
    summary = {
        "file": str(args.file), "valid": True, "version": proposal.version,
        "proposal_id": proposal.proposal_id, "task_id": proposal.task_id,
        "steps": len(proposal.plan), "votes": len(proposal.votes),
        "approvals": proposal.approvals, "rejections": proposal.rejections,
        "decision": {"threshold": decision.threshold, "result": decision.result},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    console.print(f"{args.file}: valid proposal {proposal.proposal_id} (task {proposal.task_id}): "
                  f"{len(proposal.plan)} steps, {len(proposal.votes)} votes ({proposal.approvals} "
                  f"approve, {proposal.rejections} reject), decision {decision.result} at "
                  f"threshold {decision.threshold}", markup=False, highlight=False,
                  soft_wrap=True)
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace, console: Console) -> int:
    """Exit 0 for a WAL whose chain and signatures verify, 1 with the first problem's byte
    offset otherwise (the file is only read), 2 when it cannot be read at all."""
    from bftdeliberate.commit.wal import verify_wal
    from bftdeliberate.committee import load_committee

    report = verify_wal(args.wal, load_committee(args.committee))
    if args.json:
        print(json.dumps({"file": report.path, "ok": report.ok, "records": report.records,
                          "counts": report.counts, "in_doubt": list(report.in_doubt),
                          "error": report.error, "offset": report.offset}, indent=2))
    else:
        console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_audit_report(args: argparse.Namespace, console: Console) -> int:
    """Exit 0 with the report, 1 when it finds duplicate commits (must be 0), 2 for an
    unreadable log or a malformed line (its line number). A torn last line is reported."""
    from bftdeliberate.audit.events import read_audit_log
    from bftdeliberate.audit.report import audit_report

    logs = [read_audit_log(path) for path in args.log]
    events = [event for log in logs for event in log.events]
    torn = [log.torn_tail for log in logs if log.torn_tail]
    report = {"file": ", ".join(map(str, args.log)), "torn_tail": "; ".join(torn) or None,
              **audit_report(events)}
    code = EXIT_OK if report["duplicate_commits"] == 0 else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    for tail in torn:
        Console(stderr=True, soft_wrap=True).print(f"bftd: warning: {tail}",
                                                   markup=False, highlight=False)
    _render_audit_report(report, console if console.is_terminal else Console(width=120))
    return code


def _render_audit_report(report: dict[str, Any], console: Console) -> None:
    figures = Table(title=f"audit report: {report['file']} ({report['events']} events)",
                    box=box.SIMPLE_HEAD)
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    rollback, conflicts = report["rollback"], report["conflicts"]
    layers = report["by_layer"]
    failures = report["failures_by_layer"]
    for figure, value in (
        ("commits", str(report["commits"])),
        ("failed commits (of outcomes)",
         f"{report['failed_commits']} of {report['commit_outcomes']}"),
        ("rollback frequency",
         f"{rollback['frequency']:.3f} ({rollback['commits']} of {report['commits']} commits)"),
        ("concurrency-conflict rate",
         f"{conflicts['rate']:.3f} ({conflicts['count']} of {conflicts['attempts']})"),
        ("duplicate commits (must be 0)", str(report["duplicate_commits"])),
        *((f"{layer} failures (of events)", f"{failures[layer]} of {layers[layer]}")
          for layer in layers),
    ):
        figures.add_row(figure, value, style="red" if figure.startswith("duplicate")
                        and report["duplicate_commits"] else None)
    console.print(figures)
    if report["failure_reasons"]:
        reasons = Table(title="failure reasons (error_code over failed outcomes)",
                        box=box.SIMPLE_HEAD)
        reasons.add_column("error_code")
        reasons.add_column("count", justify="right")
        for code, count in report["failure_reasons"].items():
            reasons.add_row(code, str(count))
        console.print(reasons)
    for duplicate in report["duplicate_keys"]:
        console.print(f"DUPLICATE key {duplicate['idempotency_key']} applied "
                      f"{duplicate['applies']} times", style="red", markup=False,
                      highlight=False)
    if report["attribution"]:
        chain = Table(title="attribution", box=box.SIMPLE_HEAD)
        for column in ("commit", "proposal", "proposer", "approvers", "submitter", "auditors",
                       "result"):
            chain.add_column(column)
        for row in report["attribution"]:
            chain.add_row(str(row["commit_id"])[:12], str(row["proposal_id"]),
                          str(row["proposer"] or "-"), ", ".join(row["approvers"]) or "-",
                          ", ".join(row["submitters"]) or "-",
                          ", ".join(f"{a['agent_id']} {a['decision']}"
                                    for a in row["auditors"]) or "-", row["result"])
        console.print(chain)


def cmd_commit_show(args: argparse.Namespace, console: Console) -> int:
    """Exit 0 with the commit's record, 1 when the WAL has no such commit, 2 when the WAL
    cannot be read or is damaged (one line with the byte offset; the file is only read)."""
    from bftdeliberate.audit.events import commit_record, load_wal, parse_wal_records
    from bftdeliberate.committee import load_committee

    committee = load_committee(args.committee) if args.committee is not None else None
    records = [record for path in args.wal for record in load_wal(path, committee)]
    wals = ", ".join(map(str, args.wal))

    def signer(member: int) -> str:
        return committee.member(member).name if committee is not None else f"member-{member}"

    record = commit_record(records, args.commit_id, member_name=signer, source=wals)
    if record is None:
        commits = len(parse_wal_records(records, source=wals))
        Console(stderr=True, soft_wrap=True).print(
            f"bftd: {wals}: no commit {args.commit_id!r} ({commits} commits in the "
            "WAL)", markup=False, highlight=False)
        return EXIT_FAILED
    if args.json:
        print(record.to_json())
        return EXIT_OK
    console.print(f"commit {record.commit_id} (proposal {record.proposal_id}, task "
                  f"{record.task_id}): {record.result}; submitter {record.submitter} in view "
                  f"{record.view}; {len(record.attempts)} attempts; signatures "
                  + ("verified" if committee is not None else "not verified (no --committee)"),
                  markup=False, highlight=False, soft_wrap=True)
    console.print(record.to_json(), markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.commit.model import commit_schemas
    from bftdeliberate.deliberation.ops import ops_schema
    from bftdeliberate.deliberation.proposal import proposal_schema
    from simulator.spec import scenario_json_schema

    # Generated files: written again (replaced) on every run.
    schemas = {"proposal.schema.json": proposal_schema,
               "ledger-operation.schema.json": ops_schema,
               "scenario.schema.json": scenario_json_schema}
    for name, commit_schema in commit_schemas().items():
        schemas[f"{name}.schema.json"] = lambda schema=commit_schema: schema
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            path = out / name
            path.write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")
            console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    except OSError as error:
        raise ConfigError(f"{error.filename or out}: cannot write ({error.strerror})") from None
    return EXIT_OK


def _bench_plot(args: argparse.Namespace, console: Console, report: dict[str, Any],
                draw: str) -> None:
    """``--plot FILE.png``: draw the report with ``benchmarks.plots.<draw>`` (checked by
    ``prepare_plot`` before the benchmark ran)."""
    if args.plot is None:
        return
    from benchmarks import plots

    try:
        getattr(plots, draw)(report, args.plot)
    except (KeyError, TypeError, ValueError, IndexError) as error:  # a partial report
        Console(stderr=True, soft_wrap=True).print(
            f"bftd: plot {args.plot} not drawn: the report lacks what it needs ({error!r})",
            markup=False, highlight=False)
        return
    if not args.json:
        console.print(f"plot: {args.plot}", markup=False, highlight=False, soft_wrap=True)


def _prepare_bench_plot(args: argparse.Namespace) -> None:
    """Fail at once (exit 2, one line) if ``--plot`` cannot be drawn: no matplotlib, no
    folder."""
    if args.plot is not None:
        from benchmarks.plots import prepare_plot

        prepare_plot(args.plot)


def cmd_bench_complexity(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.complexity import render, run

    _prepare_bench_plot(args)
    command = (f"bftd bench complexity --n {','.join(map(str, args.n))} --batch "
               f"{','.join(map(str, args.batch))}"
               + (f" --requests {args.requests}" if args.requests is not None else "")
               + f" --seeds {args.seeds}"
               + (f" --checkpoint-interval {args.checkpoint_interval}"
                  if args.checkpoint_interval != 64 else "")
               + (f" --jobs {args.jobs}" if args.jobs != 1 else "")
               + (" --json" if args.json else "")
               + (f" --plot {args.plot}" if args.plot is not None else ""))
    report = run(args.n, args.batch, args.requests, args.seeds,
                 checkpoint_interval=args.checkpoint_interval, jobs=args.jobs, command=command)
    code = EXIT_OK if report["ok"] else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, console)
    _bench_plot(args, console, report, "plot_complexity")
    return code


def cmd_bench_sim(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.sim import run
    from simulator.spec import load_builtin

    load_builtin(args.scenario).with_overrides(n=args.n, requests=args.requests)  # bad input: 2
    _prepare_bench_plot(args)
    command = "bftd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "bftd bench sim"
    report = run(args.scenario, args.n, args.requests, args.seconds, args.jobs, command=command)
    code = EXIT_OK if report["missed_expectation"] == 0 else EXIT_FAILED
    _bench_plot(args, console, report, "plot_sim")
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    table = Table(title=f"bench sim: {report['scenario']} n={report['n']} "
                        f"{report['requests']} requests, {report['jobs']} jobs, "
                        f"{report['wall_seconds']:.1f} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    walls = report["run_wall_ms"]
    for figure, value in (
        ("seed-runs per minute", (f"{report['seed_runs_per_min']:.0f} "
                                 f"(goal {report['goal_seed_runs_per_min']})")),
        ("... with a full core per job", f"{report['seed_runs_per_min_full_cores']:.0f}"),
        ("cpu utilisation", f"{100 * report['cpu_utilisation']:.0f}%"),
        ("simulated events per second", f"{report['sim_events_per_s']:.0f}"),
        ("... per cpu second", f"{report['sim_events_per_cpu_s']:.0f}"),
        ("events per run", f"{report['events_per_run']:.0f}"),
        ("ms per run p50 / p99 / max", (f"{walls['p50']:.1f} / {walls['p99']:.1f} / "
                                       f"{walls['max']:.1f}")),
        ("runs (completed workload)", (f"{report['seed_runs']} "
                                      f"({100 * report['completed_fraction']:.0f}%)")),
        ("missed expectation", str(report["missed_expectation"])),
    ):
        table.add_row(figure, value)
    console.print(table)
    return code


def cmd_bench_viewchange(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.viewchange import run

    # The canonical command of this report (every option spelled out: it reproduces it).
    command = (f"bftd bench viewchange --n {','.join(map(str, args.n))} --seeds {args.seeds}"
               + (f" --fail-at-s {args.fail_at_s:g}" if args.fail_at_s is not None else "")
               + (" --json" if args.json else ""))
    _prepare_bench_plot(args)
    report = run(args.n, args.seeds, fail_at_s=args.fail_at_s, command=command)
    code = EXIT_OK if report["ok"] else EXIT_FAILED
    _bench_plot(args, console, report, "plot_viewchange")
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    table = Table(title=f"bench viewchange: {report['failure']}; medians of {report['seeds']} "
                        f"seeds, T = {report['base_timeout_s']:g} s, {report['wall_seconds']:.1f} s")
    table.box = box.SIMPLE_HEAD
    # VC/NV: VIEW-CHANGE/NEW-VIEW messages; "all": every message of the episode (crash to
    # first commit); msgs/n², bytes/n³ and the slopes (from the previous n) are VC+NV's;
    # P: prepared certificates per VIEW-CHANGE.
    for column in ("n", "f", "to commit s", "×T", "VC", "NV", "all msgs", "VC+NV kB",
                   "all kB", "msgs/n²", "bytes/n³", "slope msgs", "slope bytes", "P"):
        table.add_column(column, justify="right", no_wrap=True)

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in report["results"]:
        m, b, g = r["messages"], r["bytes"], r["growth"]
        style = None if r["view_advanced"] and r["meets_goal"] else "red"
        table.add_row(str(r["n"]), str(r["f"]), number(r["failure_to_commit_s"], ".3f"),
                      number(r["timeout_multiple"], ".2f"), number(m["view_change"], ".0f"),
                      number(m["new_view"], ".0f"), number(m["all"], ".0f"),
                      number(b["view_change_and_new_view"] and b["view_change_and_new_view"] / 1000,
                             ",.0f"),
                      number(b["all"] and b["all"] / 1000, ",.0f"),
                      number(g["view_change_messages_per_n2"], ".2f"),
                      number(g["view_change_bytes_per_n3"], ",.0f"),
                      number(g["view_change_messages_slope"], ".2f"),
                      number(g["view_change_bytes_slope"], ".2f"),
                      number(r["prepared_certs_per_view_change"], "g"), style=style)
    wide = console if console.is_terminal else Console(width=BENCH_VC_TABLE_WIDTH)
    wide.print(table)
    e = report["growth_exponents"]
    console.print(f"growth exponents (least squares over n): VIEW-CHANGE+NEW-VIEW messages "
                  f"n^{number(e['view_change_messages'], '.2f')}, bytes "
                  f"n^{number(e['view_change_bytes'], '.2f')}; all episode traffic messages "
                  f"n^{number(e['all_messages'], '.2f')}, bytes n^{number(e['all_bytes'], '.2f')} "
                  f"(PBFT: n^2 messages, n^3 bytes)", highlight=False)
    goal = "[green]met[/]" if report["meets_goal"] else "[red]NOT met[/]"
    console.print(f"goal: first commit in the new view within "
                  f"{report['results'][0]['goal_timeout_multiple']:g} × T in every run: {goal}")
    return code


def cmd_bench_throughput(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.throughput import run

    command = (f"bftd bench throughput --n {args.n} --clients "
               f"{','.join(map(str, args.clients))} --duration {args.duration:g} --warmup "
               f"{args.warmup:g} --loadgens {args.loadgens}"
               + (f" --batch-size {args.batch_size}" if args.batch_size is not None else "")
               + (" --profile" if args.profile else "") + (" --json" if args.json else ""))
    _prepare_bench_plot(args)
    progress = Console(stderr=True)
    echo = None if args.json else (
        lambda text: progress.print(text, markup=False, highlight=False, soft_wrap=True))
    report = run(args.n, args.clients, duration=args.duration, warmup=args.warmup,
                 loadgens=args.loadgens, batch_size=args.batch_size, profile=args.profile,
                 keep=args.keep, command=command, echo=echo)
    code = EXIT_OK if report["ok"] else EXIT_FAILED
    _bench_plot(args, console, report, "plot_throughput")
    if report["failure"] is not None:
        failure = report["failure"]
        progress.print(f"bftd: bench throughput failed at {failure['clients']} clients: "
                       f"{failure['error']}\nlogs: {failure['directory']}", markup=False,
                       highlight=False, soft_wrap=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    table = Table(title=f"bench throughput: n={report['n']} batch {report['batch_size']}, "
                        f"{report['duration_s']:g} s windows, signed requests, verify bound "
                        f"{report['verify_bound_ops_per_s']:.0f} ops/s")
    table.box = box.SIMPLE_HEAD
    for column in ("clients", "ops/s", "p50 ms", "p90 ms", "p99 ms", "batch", "cpu s/replica",
                   "BFT-SMaRt signed", "ratio", "timeouts"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in report["results"]:
        lat, ref = r["latency_ms"], r["reference_bftsmart"]
        cpu = r["cpu_seconds_per_replica"]
        signed = ref["signed_ops_per_s"]
        table.add_row(str(r["clients"]), f"{r['ops_per_s']:.0f}", f"{lat['p50'] or 0:.1f}",
                      f"{lat['p90'] or 0:.1f}", f"{lat['p99'] or 0:.1f}",
                      f"{r['mean_batch_size'] or 0:.1f}",
                      " ".join(f"{c:.1f}" if c is not None else "-" for c in cpu),
                      "-" if signed is None else
                      f"{signed:.0f}{'*' if ref['signed_interpolated'] else ''}",
                      "-" if r["ratio_vs_bftsmart_signed"] is None else
                      f"{r['ratio_vs_bftsmart_signed']:.2f}", str(r["timeouts"]))
    # Wider than the 80 columns rich assumes for a pipe: the table is read in logs and files.
    (console if console.is_terminal else Console(width=120)).print(table)
    goal = report["goal"]
    console.print(f"reference: {report['reference']['system']}; * interpolated. Goal: >= "
                  f"{goal['signed_ops_per_s_at_100_clients']} signed ops/s at 100 clients, "
                  f"p50 <= {goal['p50_ms_at_8_clients']} ms at 8 clients", highlight=False)
    if report["logs"]:
        console.print(f"logs: {report['logs']}", markup=False, highlight=False)
    return code


def cmd_task(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.node import task_command

    action = args.task_command
    fields = None
    if action == "open":
        fields = {"question": args.question, "context": args.context,
                  "evidence": args.evidence, "max_rounds": args.max_rounds,
                  "round_ms": args.round_ms, "vote_ms": args.vote_ms,
                  "deadline_ms": args.deadline_ms, "token_budget": args.budget,
                  "agent_token_budget": args.agent_budget, "threshold": args.threshold,
                  "judge": args.judge, "require_audit": False if args.no_audit else None}
    outcome = task_command(
        action=action, committee_path=args.committee, key_path=args.key,
        timeout=args.timeout, task_id=getattr(args, "task_id", None), open_fields=fields,
        decision=getattr(args, "decision", None), proposal_id=getattr(args, "proposal", None),
        notes=getattr(args, "notes", None))
    ok = bool(outcome.get("ok"))
    if args.json:
        print(json.dumps(outcome["task"] if ok and action == "status" else outcome, indent=2))
    if not ok:
        what = "failed" if outcome.get("error") == "failed" else \
            f"refused by the ledger: {outcome.get('error')}"
        Console(stderr=True, soft_wrap=True).print(
            f"bftd: task {action} {what}: {outcome.get('detail', '')}", markup=False,
            highlight=False)
        return EXIT_FAILED
    if args.json:
        return EXIT_OK
    if action == "open":
        console.print(f"opened task {outcome['task_id']} as {outcome['signer']}; follow it: "
                      f"bftd task status {outcome['task_id']} --committee {args.committee} "
                      f"--key {args.key}", markup=False, highlight=False, soft_wrap=True)
    elif action == "resolve":
        console.print(f"task {outcome['task_id']} resolved by {outcome['signer']}: "
                      f"{outcome['state']}", markup=False, highlight=False)
    else:
        _render_task(outcome["task"], console)
    return EXIT_OK


def _render_task(task: dict[str, Any], console: Console) -> None:
    decision = task["decision"] or f"pending ({task['state']})"
    console.print(f"[bold]task {task['task_id']}[/] opened by {task['opener']}: "
                  f"{task['question']}", highlight=False)
    if task["context"]:
        console.print(f"context: {task['context']}", markup=False, highlight=False)
    if task["evidence"]:
        console.print("evidence: " + ", ".join(task["evidence"]), markup=False, highlight=False)
    for round_ in task["rounds"]:
        state = "open" if round_["closed_ms"] is None else \
            f"closed after {round_['closed_ms'] - round_['opened_ms']} ms"
        if round_["contributions"] is None:
            console.print(f"round {round_['round']} ({state}, hidden until it closes): "
                          f"{len(round_['participants'])} took part so far: "
                          + (", ".join(round_["participants"]) or "none"), highlight=False)
            continue
        table = Table(title=f"round {round_['round']} ({state})", title_justify="left",
                      box=box.SIMPLE_HEAD)
        for column in ("agent", "position", "conf", "evidence", "tokens", "proposal",
                       "argument"):
            table.add_column(column, overflow="fold")
        for c in round_["contributions"]:
            table.add_row(c["agent"], c["position"] or "(abstained)", f"{c['confidence']}%",
                          ", ".join(c["evidence"]) or "-", str(c["tokens"]),
                          c["proposal_id"] or "", c["argument"])
        console.print(table)
    for proposal in task["proposals"]:
        table = Table(title=f"proposal {proposal['proposal_id']} by {proposal['author']} "
                            f"({proposal['status']}): " + " -> ".join(
                                step["step"] for step in proposal["plan"]),
                      title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("signer", "vote", "notes"):
            table.add_column(column, overflow="fold")
        for vote in proposal["votes"]:
            table.add_row(vote["agent"], vote["decision"], vote["notes"])
        console.print(table)
    tokens = task["tokens"]
    console.print(f"decision: [bold]{decision}[/] (threshold {task['threshold']}/"
                  f"{task['voters']}); exit reason {task['exit_reason'] or '-'}; escalated to "
                  f"{task['escalated_to'] or '-'}; resolved by {task['resolved_by'] or '-'}; "
                  f"rounds {task['rounds_used']}/{task['max_rounds']}", highlight=False)
    console.print(f"tokens {tokens['used']}/{tokens['budget']} (per agent at most "
                  f"{tokens['agent_budget']}: " + (", ".join(
                      f"{a} {t}" for a, t in tokens["by_agent"].items()) or "none") + ")",
                  highlight=False)
    groupthink = task["groupthink"]
    audits = ", ".join(f"{a['agent']} {a['decision']}" for a in groupthink.get("audits", []))
    console.print("groupthink flags: " + (", ".join(
        f"{f['kind']} (round {f['round']}{', ' + f['agent'] if 'agent' in f else ''})"
        for f in groupthink["signals"]) or "none")
        + (f"; audits: {audits}" if audits else "")
        + f"; commit ready: {groupthink['commit_ready']}", highlight=False)
    commit = task.get("commit")
    if commit is not None:
        submitters = ", ".join(f"{s['submitter']} (view {s['view']})"
                               for s in commit["submitters"])
        steps = ", ".join(f"{s['index']} {s['status']}" for s in commit["steps"] or [])
        console.print(f"commit {commit['commit_id'][:16]}: {commit['result'] or 'pending'}"
                      + (f" ({commit['error_code']})" if commit["error_code"] else "")
                      + f"; submitted by {submitters}; resources "
                      + ", ".join(commit["resource_targets"])
                      + f" ({commit['grant']})" + (f"; steps {steps}" if steps else ""),
                      highlight=False)


def cmd_bench_debate(args: argparse.Namespace, console: Console) -> int:
    from benchmarks.debate_cluster import run

    command = (f"bftd bench debate --rounds {args.rounds}"
               + (f" --n {','.join(map(str, args.sim_n))}" if args.sim_n else "")
               + (f" --seeds {args.seeds}" if args.seeds else "") + (" --json" if args.json else ""))
    _prepare_bench_plot(args)
    report = run(rounds=args.rounds, command=command, sim_ns=args.sim_n, sim_seeds=args.seeds)
    code = EXIT_OK if report["ok"] else EXIT_FAILED
    _bench_plot(args, console, report, "plot_debate")
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    if "round_close_latency_ms" not in report:
        Console(stderr=True).print(f"bftd: bench debate failed: {report.get('error')}",
                                   markup=False, highlight=False)
        return code
    latency = report["round_close_latency_ms"]
    per_round = report["per_round"]
    table = Table(title=f"bench debate: n={report['n']} over {report['transport']}, "
                        f"{report['rounds']} rounds, scripted debaters", box=box.SIMPLE_HEAD)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for figure, value in (
        ("last contribution -> round closed at every member, p50 / p90 / max ms",
         f"{latency['p50']:.1f} / {latency['p90']:.1f} / {latency['max']:.1f}"),
        ("rounds per second (debate only)", f"{report['rounds_per_s']:.1f}"),
        ("messages per round (TCP, members and agents)", f"{per_round['messages']:.0f}"),
        ("bytes per round (TCP, members and agents)", f"{per_round['bytes']:,.0f}"),
        ("ordered operations per round", f"{per_round['operations']:.1f}"),
    ):
        table.add_row(figure, value)
    wide = console if console.is_terminal else Console(width=100)
    wide.print(table)
    simulated = report["simulated"]
    if simulated is not None:
        sim = Table(title=f"simulator: {simulated['scenario']}, medians of {simulated['seeds']} "
                          "seeds", box=box.SIMPLE_HEAD)
        for column in ("n", "rounds", "msgs/round", "bytes/round", "msgs/op", "msgs/round/n³",
                       "ok"):
            sim.add_column(column, justify="right")
        for r in simulated["results"]:
            sim.add_row(str(r["n"]), str(r["rounds"]), f"{r['messages_per_round']:,.0f}",
                        f"{r['bytes_per_round']:,.0f}", f"{r['messages_per_op']:,.1f}",
                        f"{r['messages_per_round_over_n_cubed']:.2f}",
                        "yes" if r["ok"] else "NO", style=None if r["ok"] else "red")
        wide.print(sim)
        exponents = simulated["growth_exponents"]
        console.print(f"growth: messages per round n^{exponents['messages_per_round']}, per "
                      f"operation n^{exponents['messages_per_op']} (PBFT: n^3 per round of n "
                      "contributions, n^2 per operation)", highlight=False)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    error_console = Console(stderr=True, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args, console)
    except UsageError as exc:
        error_console.print(f"bftd: error: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    except ConfigError as exc:
        error_console.print(f"bftd: error: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
