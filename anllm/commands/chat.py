"""``anllm chat``: a terminal chat that keeps one cache across turns (bounded memory in anchor mode)."""

from __future__ import annotations

import sys

from anllm.commands.common import add_model_args, load_from_args
from anllm.config import AnLLMError, GenerationConfig

HELP = "commands: /reset (start again), /stats (cache size), /save FILE (save cache + conversation), /quit"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal; one KV cache across turns, KV size shown after each turn")
    add_model_args(p)
    p.add_argument(
        "--policy", "--mode", dest="policy", default=None,
        help="cache policy: anchor | full | … (default: the model's; --mode: former name)",
    )  # fmt: skip
    p.add_argument("--cache", default=None, help="start from a file written by anllm compress or /save")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="no chat template: plain text turns")
    p.set_defaults(func=run)


def _kv_line(stats: dict) -> str:
    return (
        f"[{stats['policy'].split('(')[0]}] KV {stats['kv_entries']} entries / {stats['tokens_seen']} tokens seen "
        f"({stats['kv_kept_frac']:.1%}), {stats['kv_bytes'] / 2**20:.2f} MiB"
    )


def run(args) -> int:
    import torch

    from anllm.chat import ChatSession

    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    lm = load_from_args(args)
    if args.cache:
        session = ChatSession.load(lm, args.cache, args.policy, gen=gen)
    else:
        session = ChatSession(lm, args.policy or lm.default_mode, gen=gen, chat=not args.raw)
    print(f"anllm chat ({lm.name}, {_kv_line(session.stats())}); {HELP}", file=sys.stderr)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = _read_line()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if _command(session, line):
                return 0
            continue
        try:
            with torch.inference_mode():
                for r in session.ask(line):
                    sys.stdout.write(r.text)
                    sys.stdout.flush()
        except AnLLMError as e:  # a full context: say so and stay in the REPL
            print(f"error: {e}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        turn = session.turns[-1]
        print(f"{_kv_line(session.stats())}; turn {turn.turn}: {turn.seconds:.2f} s", file=sys.stderr)


def _read_line() -> str:
    """One line of stdin; bytes that are not UTF-8 are one error line (exit 2), not a tokenizer traceback."""
    fix = "send UTF-8 (in a terminal: a UTF-8 locale such as LANG=C.UTF-8)"
    try:
        line = sys.stdin.readline()
    except UnicodeDecodeError as e:
        raise AnLLMError(f"stdin is not valid UTF-8 (byte 0x{e.object[e.start]:02x}): {fix}") from None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable bytes kept as surrogates (a C/POSIX locale)
        raise AnLLMError(f"stdin is not valid UTF-8 (byte 0x{ord(line[e.start]) & 0xFF:02x}): {fix}") from None
    return line


def _command(session, line: str) -> bool:
    """Run a /command; True means quit."""
    name, _, arg = line.partition(" ")
    if name in ("/quit", "/exit"):
        return True
    if name == "/reset":
        session.reset()
        print(f"reset: {_kv_line(session.stats())}", file=sys.stderr)
    elif name == "/stats":
        s = session.stats()
        print(" ".join(f"{k}={v}" for k, v in s.items()), file=sys.stderr)
    elif name == "/save" and arg.strip():
        try:
            path = session.save(arg.strip())
            print(f"saved {path} ({path.stat().st_size / 2**20:.2f} MiB)", file=sys.stderr)
        except AnLLMError as e:
            print(f"error: {e}", file=sys.stderr)
    else:
        print(HELP, file=sys.stderr)
    return False
