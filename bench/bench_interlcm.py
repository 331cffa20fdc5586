"""Seconds per face and peak memory: LAFR's one step vs InterLCM 1-step and 3-step, one run.

    flock /tmp/lafr-heavy.lock python bench/bench_interlcm.py --rounds 3 --json bench/results/interlcm_cpu.json

What is timed, identically for every engine: aligned crops [B, 512, 512, 3] in (CPU, 0..1) ->
the engine's `restore` -> restored crops out (B = --batch faces in one chunk; the face pipeline
around it is the same for all engines and not timed). Full-size random-weight models of the real
configs, built on the user's path (bench/bench_engines.py). CPU fp32, or --device cuda fp16.

How the numbers stay comparable on a shared machine:
  * one persistent child process per engine, built one after the other (never two loads at once),
    each then making one warm-up call that is not timed; the models stay loaded;
  * then --rounds rounds; each round asks every child, in turn, for one timed call (round 1: lafr,
    interlcm-1, interlcm-3; round 2: the same...), so a load change hits all engines alike;
  * reported: the median seconds per face per engine, wall clock and the worker's CPU time (all
    its threads), the ratios interlcm-N / lafr WITHIN each round and their median (the robust
    figure), and the 1-minute load average before and after each round: on a quiet machine it
    stays near the threads the bench itself uses. On a loaded machine trust the CPU ratios and
    run with --threads 1 (a descheduled OpenMP thread makes its siblings spin, in wall and CPU);
  * peak memory is each child's own: the RSS high-water mark (ru_maxrss) from the warm-up on (the
    mark is reset after the models are built, so build-time copies do not count), or
    torch.cuda.max_memory_allocated on CUDA; "weights GB" is what the models keep resident.
The result prints as markdown (README-ready) and, with --json, is written with every raw time.
--tiny runs the same thing on toy models and 64 px crops in seconds (tests/test_bench_interlcm.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

ENGINES = ("lafr", "interlcm-1", "interlcm-3")  # what bench_engines builds
BASE = "lafr"


class Child:
    """One engine's persistent worker (bench_engines.serve), forked from a server that imported
    torch, diffusers and transformers once; driven message by message over a pipe."""

    def __init__(self, engine: str, args: argparse.Namespace, context) -> None:
        self.engine = engine
        self.conn, child_conn = context.Pipe()
        self.proc = context.Process(target=_serve, args=(child_conn, engine, args.batch, args.device, args.threads, args.tiny),
                                    name=f"bench-{engine}", daemon=True)
        self.proc.start()
        child_conn.close()

    def ask(self, command: str | None = None) -> dict:
        if command is not None:
            self.conn.send(command)
        try:
            reply = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"the {self.engine} worker died (exit code {self.proc.exitcode}; out of memory?)") from None
        if "error" in reply:
            raise RuntimeError(f"the {self.engine} worker failed: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


def _serve(*args) -> None:
    from bench_engines import serve

    serve(*args)


def worker_context():
    """forkserver preloading bench_engines: workers start without re-importing diffusers (10+ s
    each here) and fork from a process that never ran a torch op (fork-safe OpenMP, no CUDA)."""
    # Python 3.11's server ignores the parent's sys.path (it looks for a key get_preparation_data
    # does not write): it finds bench_engines and lafr_core through PYTHONPATH instead
    paths = [str(REPO / "bench"), str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bench_engines"])
    return context


def load1() -> float:
    return os.getloadavg()[0]


def machine(args: argparse.Namespace, gpu: str | None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=args.threads, gpu=gpu, device=args.device,
                dtype="fp16" if args.device.startswith("cuda") else "fp32", torch=version("torch"), python=platform.python_version())


def run_bench(args: argparse.Namespace, log=lambda message: print(message, file=sys.stderr, flush=True)) -> dict:
    """Everything but the printing: children up one by one, interleaved rounds, peaks, ratios."""
    engines = list(args.engines)
    context = worker_context()
    children: dict[str, Child] = {}
    ready: dict[str, dict] = {}
    load_start = load1()
    try:
        for engine in engines:  # sequential: one full-size load at a time
            children[engine] = Child(engine, args, context)
            ready[engine] = children[engine].ask()
            log(f"  {engine}: built in {ready[engine]['build_s']:.0f} s, warm-up {ready[engine]['warmup_s']:.1f} s")
        rounds = []
        for index in range(args.rounds):
            before = load1()
            calls = {engine: children[engine].ask("run") for engine in engines}
            wall = {e: c["seconds"] / args.batch for e, c in calls.items()}
            cpu = {e: c["cpu_seconds"] / args.batch for e, c in calls.items()}
            rounds.append(dict(round=index + 1, s_per_face=wall, cpu_s_per_face=cpu, load_before=before, load_after=load1(),
                               ratio={e: wall[e] / wall[BASE] for e in engines if BASE in wall},
                               cpu_ratio={e: cpu[e] / cpu[BASE] for e in engines if BASE in cpu},
                               peak_gb={e: c["peak_gb"] for e, c in calls.items()}))
            log(f"  round {index + 1}: " + ", ".join(f"{e} {wall[e]:.2f} s/face (CPU {cpu[e]:.2f} s)" for e in engines)
                + f"; load {before:.2f} -> {rounds[-1]['load_after']:.2f}")
            if args.json:  # a run cut short still leaves its finished rounds
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(dict(partial=True, ready=ready, rounds=rounds), indent=1))
        peaks = {engine: children[engine].ask("quit") for engine in engines}
        for child in children.values():
            child.proc.join(timeout=60)
    finally:
        for child in children.values():
            child.close()
    rows = []
    for engine in engines:
        times = [r["s_per_face"][engine] for r in rounds]
        cpu_times = [r["cpu_s_per_face"][engine] for r in rounds]
        ratios = [r["ratio"][engine] for r in rounds if engine in r["ratio"]]
        cpu_ratios = [r["cpu_ratio"][engine] for r in rounds if engine in r["cpu_ratio"]]
        rows.append(dict(engine=engine, network_steps=1 if engine == BASE else int(engine.split("-")[1]),
                         s_per_face=statistics.median(times), times=times,
                         cpu_s_per_face=statistics.median(cpu_times), cpu_times=cpu_times,
                         ratio_vs_lafr=statistics.median(ratios) if ratios else None, ratios=ratios,
                         cpu_ratio_vs_lafr=statistics.median(cpu_ratios) if cpu_ratios else None, cpu_ratios=cpu_ratios,
                         weights_gb=ready[engine]["weights_gb"], peak_gb=peaks[engine]["peak_gb"],
                         peak_from_warmup=peaks[engine]["peak_from_warmup"], build_s=ready[engine]["build_s"],
                         warmup_s=ready[engine]["warmup_s"], out_shape=ready[engine]["out_shape"]))
    gpu = next((r["gpu"] for r in ready.values() if r.get("gpu")), None)
    return dict(machine=machine(args, gpu), batch=args.batch, rounds=rounds, engines=rows, load_start=load_start,
                load_end=load1(), crop=ready[engines[0]]["out_shape"][1], tiny=args.tiny)


def markdown(result: dict) -> str:
    """The README table (one row per engine) and the per-round table beneath it."""
    m = result["machine"]
    where = f"{m['gpu']} ({m['dtype']})" if m["gpu"] else f"{m['cpu']} ({m['cores']} cores, torch threads {m['threads']}, {m['dtype']})"
    mem = "peak GPU GB" if m["gpu"] else "peak RSS GB"
    lines = [f"{where}, torch {m['torch']}; {result['batch']} face(s) of {result['crop']} px per call; "
             f"median of {len(result['rounds'])} interleaved rounds after a warm-up; "
             f"1-min load {result['load_start']:.2f} at start, {result['load_end']:.2f} at end.", "",
             f"| engine | network steps | s per face | CPU s per face | vs LAFR, wall | vs LAFR, CPU | weights GB | {mem} |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["engines"]:
        ratios = ["-" if row[k] is None else f"{row[k]:.2f}x" for k in ("ratio_vs_lafr", "cpu_ratio_vs_lafr")]
        lines.append(f"| {row['engine']} | {row['network_steps']} | {row['s_per_face']:.2f} | {row['cpu_s_per_face']:.2f} | "
                     f"{ratios[0]} | {ratios[1]} | {row['weights_gb']:.2f} | {row['peak_gb']:.2f} |")
    engines = [row["engine"] for row in result["engines"]]
    others = [e for e in engines if e != BASE and BASE in engines]
    lines += ["", "| round | " + " | ".join(f"{e} s/face (CPU s)" for e in engines)
              + "".join(f" | {e} / lafr, wall (CPU)" for e in others)
              + " | load before -> after |", "|---" * (2 + len(engines) + len(others)) + "|"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | " + " | ".join(f"{r['s_per_face'][e]:.2f} ({r['cpu_s_per_face'][e]:.2f})" for e in engines)
                     + "".join(f" | {r['ratio'][e]:.2f} ({r['cpu_ratio'][e]:.2f})" for e in others)
                     + f" | {r['load_before']:.2f} -> {r['load_after']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per engine, interleaved (default 3)")
    parser.add_argument("--batch", type=int, default=1, help="faces per call (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (fp32) or cuda / cuda:N (fp16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--tiny", action="store_true", help="toy models and 64 px crops: checks the plumbing in seconds")
    parser.add_argument("--json", type=Path, help="also write the result (every raw time) to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--rounds, --batch and --threads must be at least 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    elif args.device != "cpu":
        parser.error(f"--device {args.device!r}: use cpu, cuda or cuda:N")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run_bench(args)
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
