"""``bftd``: the command line. Thin: parse, call the library, render with rich.

Exit codes: 0 success, 1 a failed run or found violation, 2 bad usage or bad input (one
line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

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
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _members(text: str) -> int:
    value = _positive(text)
    if value < 4:
        raise argparse.ArgumentTypeError(f"a committee needs n >= 4 (n = 3f+1, f >= 1); got {value}")
    return value


EXAMPLES = {
    "demo": "examples:\n  bftd demo\n  bftd demo --json",
    "keys init": "examples:\n  bftd keys init --n 4 --dir keys\n"
                 "  bftd keys init --n 7 --clients 3 --dir /tmp/ks --base-port 9000",
    "keys check": "examples:\n  bftd keys check --committee keys/committee.json\n"
                  "  bftd keys check --committee keys/committee.json --key keys/agent-0.key",
    "bench core": "examples:\n  bftd bench core --n 4 --batch 100 --json\n"
                  "  bftd bench core --n 4,7,10,13,16 --batch 1,10,100 --requests 2000",
}


def _command(group, name: str, help_text: str, examples: str | None = None):  # noqa: ANN001
    """One sub-command with its examples shown under ``--help``."""
    return group.add_parser(name, help=help_text, epilog=examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def _group(parser: argparse.ArgumentParser, dest: str, metavar: str):  # noqa: ANN202
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
    demo.add_argument("--seed", type=int, default=7, help="seed of the run (default 7)")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(handler=cmd_demo)

    keys = _group(_command(commands, "keys", "genesis: key files and the committee manifest"),
                  "keys_command", "ACTION")
    init = _command(keys, "init", "write member/client keys and committee.json",
                    EXAMPLES["keys init"])
    init.add_argument("--n", type=_members, required=True, help="number of members (>= 4)")
    init.add_argument("--dir", type=Path, default=Path("keys"), help="keystore folder (default keys)")
    init.add_argument("--clients", type=int, default=1, help="authorised clients (default 1)")
    init.add_argument("--committee-id", default=None, help="committee id (default random)")
    init.add_argument("--host", default="127.0.0.1", help="members' host (default 127.0.0.1)")
    init.add_argument("--base-port", type=int, default=7000, help="member i listens on base+i")
    init.set_defaults(handler=cmd_keys_init)
    check = _command(keys, "check", "validate a committee manifest (and key files)",
                     EXAMPLES["keys check"])
    check.add_argument("--committee", type=Path, required=True, help="committee.json")
    check.add_argument("--key", type=Path, action="append", default=[],
                       help="a private key file that must belong to the committee (repeatable)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(handler=cmd_keys_check)

    bench = _group(_command(commands, "bench", "benchmarks (JSON with --json)"),
                   "bench_command", "KIND")
    core = _command(bench, "core", "replicas in one process, no network", EXAMPLES["bench core"])
    core.add_argument("--n", type=_int_list, default=[4, 7, 10, 13, 16], help="committee sizes")
    core.add_argument("--batch", type=_int_list, default=[1, 10, 100], help="batch sizes")
    core.add_argument("--requests", type=_positive, default=2000, help="requests per point")
    core.add_argument("--backend", choices=["pynacl", "cryptography"], default=None,
                      help="signature backend (default: pynacl if installed)")
    core.add_argument("--seed", type=int, default=1)
    core.add_argument("--json", action="store_true", help="print the report as JSON")
    core.set_defaults(handler=cmd_bench_core)
    return parser


# ------------------------------------------------------------------ commands


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.demo import run_demo

    result = run_demo(n=args.n, seed=args.seed)
    report = result.report
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK if result.ok else EXIT_FAILED
    console.print(f"[bold]bftd demo[/]: n={report['n']} f={report['f']} seed={report['seed']} "
                  f"committee {report['committee_digest'][:16]}… "
                  f"(member {report['byzantine_member']} is Byzantine)")
    ops = Table(title="Committed operations (each accepted on f+1 matching signed replies)")
    for column in ("operation", "key", "value", "result", "latency ms"):
        ops.add_column(column, no_wrap=column != "result")
    for row in report["operations"]:
        ops.add_row(row["operation"], row["key"], str(row["value"] or ""),
                    json.dumps(row["result"], separators=(",", ":")), f"{row['latency_ms']:.2f}")
    console.print(ops)
    replicas = Table(title="Replicas")
    for column in ("id", "role", "view", "executed", "stable cp", "state digest", "dropped"):
        replicas.add_column(column, no_wrap=column != "dropped")
    for r in report["replicas"]:
        replicas.add_row(str(r["id"]), r["role"], str(r["view"]), str(r["last_executed"]),
                         str(r["stable_checkpoint"]), r["state_digest"][:12] + "…",
                         ", ".join(f"{k}={v}" for k, v in r["dropped"].items()) or "-")
    console.print(replicas)
    messages = Table(title="Messages on the network")
    for column in ("type", "count", "bytes"):
        messages.add_column(column)
    for kind, counts in report["messages"].items():
        messages.add_row(kind, str(counts["count"]), str(counts["bytes"]))
    console.print(messages)
    verdict = "[green]equal[/]" if report["state_digests_equal"] else "[red]DIFFERENT[/]"
    console.print(f"state digests: {verdict}; all operations completed: "
                  f"{report['all_completed']}; virtual time {report['virtual_seconds']:.3f}s")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_keys_init(args: argparse.Namespace, console: Console) -> int:
    from bftdeliberate.committee import init_keystore

    if args.clients < 0:
        raise ConfigError(f"--clients must be >= 0, got {args.clients}")
    committee = init_keystore(args.dir, args.n, clients=args.clients,
                              committee_id=args.committee_id, host=args.host,
                              base_port=args.base_port)
    console.print(f"wrote {committee.n} member keys, {len(committee.clients)} client keys and "
                  f"{args.dir / 'committee.json'} (committee {committee.committee_id}, "
                  f"digest {committee.digest.hex()[:16]}…)")
    return EXIT_OK


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
