"""Write a synthetic world: the pipeline's input files plus the truth to score it against.

    python -m pipelines.generate --output DIR [--users N] [--hours H] [--seed S]
                                 [--start 2026-11-20T00:00:00+09:00] [--adversarial] [--gzip] [--quiet]
                                 [--live [--speed X]]

Same arguments, byte-identical files. ``--live`` writes the firehose to
standard output as it happens instead of to ``tweets.jsonl`` (the world is the
``--hours`` that have just ended unless ``--start`` is given; see ``synthetic.live``). See ``synthetic.world`` for what is
written and the formats of ``DIR/truth/``. Exit status 0 on success, 2 with a
one-line reason on stderr for a bad argument or an unwritable output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from synthetic.params import (DEFAULT_HOURS, DEFAULT_SEED, DEFAULT_START, DEFAULT_USERS, check_params,
                              prepare_output_dir)

# Worlds at least this big (users x hours) report their progress on stderr.
PROGRESS_FROM_USER_HOURS = 20_000


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # The contract: a bad argument gives a one-line reason, not a usage screen.
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv):
    parser = _OneLineParser(prog="python -m pipelines.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory to write (created if missing)")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"platform users (default {DEFAULT_USERS})")
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS, help=f"hours of activity (default {DEFAULT_HOURS:g})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--start", default=None, help=f"RFC 3339 start of the window (default {DEFAULT_START}; with --live, now minus --hours)")
    parser.add_argument("--adversarial", action="store_true",
                        help="add forged/replayed/one-sided taps and unparseable lines, labelled in truth/")
    parser.add_argument("--gzip", action="store_true", help="write the input files as NAME.jsonl.gz")
    parser.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    parser.add_argument("--live", action="store_true",
                        help="stream the firehose to stdout in event time instead of writing tweets.jsonl "
                             "(the world is the --hours just ended unless --start is given)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --live: event seconds per wall second (default 1; 0 = no waiting)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    verbose = not args.quiet
    progress = None
    if verbose and args.users * args.hours >= PROGRESS_FROM_USER_HOURS:
        progress = lambda message: print(f"  {message} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    hours = int(args.hours) if float(args.hours).is_integer() else float(args.hours)
    # Live, the world is the one that has just ended: its firehose is replayed in
    # event-time rhythm, and no record (ping, tap, tweet) is dated ahead of the wall
    # clock, which the pipeline and the gateway refuse (--max_event_future_s).
    start = args.start if args.start is not None else (
        float(int(time.time() - hours * 3600)) if args.live else DEFAULT_START)
    firehose = None
    try:
        # Refuse bad arguments before the slow imports below (Beam comes with the records).
        if args.speed != args.speed or args.speed < 0:
            raise ValueError(f"--speed must be >= 0, got {args.speed!r}")
        if args.gzip and args.live:
            raise ValueError("--gzip and --live do not go together: the live firehose is plain lines on stdout")
        t0 = check_params(args.users, hours, args.seed, start)
        prepare_output_dir(args.output)
        if args.live:
            from synthetic.live import stream_lines
            firehose = lambda lines: stream_lines(lines, int(t0 * 1000), args.speed, sys.stdout.buffer)
        from synthetic.world import write_world
        counts = write_world(args.output, users=args.users, hours=hours, seed=args.seed,
                             start=start, progress=progress, adversarial=args.adversarial,
                             compress=args.gzip, firehose=firehose)
    except BrokenPipeError:
        # The reader (the gateway, say) went away: what it took is all that was sent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        print("python -m pipelines.generate: error: --live: the firehose reader closed the pipe", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"python -m pipelines.generate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m pipelines.generate: error: cannot write {args.output!r}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    if verbose:
        total = sum(n for name, n in counts.items() if not name.startswith("truth/"))
        print(f"wrote {total} input lines ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
              f"to {args.output} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
