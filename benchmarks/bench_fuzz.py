"""The fuzz campaign: builds over mutated clip files, counting crashes and bad publications.

    python -m benchmarks fuzz [--files 1000 --batch 100 --seed 0 --baseline-ref 0860500
                               --exclude name,...]

`preprocess.fuzz` makes `--files` mutated copies of three small synthetic clips (half damaged
byte by byte, half with value mutations through h5py) and builds one store per `--batch` of
them (beside good copies of the templates) with `python -m preprocess build` in a subprocess,
then checks every published store with `preprocess verify` and for implausible values. Target:
0 crashes (a build exiting other than 0/1, a traceback, an `unexpected_error` record) and 0 bad
publications (a published store verify rejects or with implausible values, a mutated file
neither used nor listed).

Baseline, in the same run and on the same mutated files: the `preprocess` and `shared` packages
of git revision `--baseline-ref` (exported with `git archive`; default BASELINE_REF, the code
before the issue-20 checks), built and verified the same way (skip with `--baseline-ref ''`).
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from preprocess import fuzz, synth

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_SEED = 7
BASELINE_REF = "0860500"  # main before issue 20's checks: the figures in BENCHMARKS.md


def code_of(ref: str, into: Path) -> Path:
    """The `preprocess` and `shared` packages of git revision `ref`, exported into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref, "preprocess", "shared"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _row(label: str, ours: object, baseline: object) -> str:
    return f"{label:<34} {ours!s:>12} {baseline!s:>14}"


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    exclude = frozenset(filter(None, args.exclude.split(",")))
    if exclude - set(fuzz.VALUE_MUTATIONS):
        parser.error(f"--exclude: unknown mutations {sorted(exclude - set(fuzz.VALUE_MUTATIONS))}")
    campaign = {"files": args.files, "batch": args.batch, "seed": args.seed, "exclude": exclude}

    with tempfile.TemporaryDirectory(prefix="bench_fuzz_") as tmp:
        workdir = Path(tmp)
        templates = synth.generate_dataset(
            workdir / "templates",
            recordings=3,
            clips_per_recording=1,
            seed=TEMPLATE_SEED,
            video_size=4,
        )
        ours = fuzz.run_campaign(templates, workdir / "ours", **campaign)
        baseline = None
        if args.baseline_ref:
            build, verify = fuzz.cli_at(code_of(args.baseline_ref, workdir / "baseline_code"))
            baseline = fuzz.run_campaign(
                templates, workdir / "baseline", **campaign, build=build, verify=verify
            )
    _print_report(args, ours, baseline)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument(
        "--exclude",
        default="",
        help=f"Value mutations left out, comma-separated, of {', '.join(fuzz.VALUE_MUTATIONS)} "
        f"(e.g. 'name': a baseline that stops at odd names then reaches the values).",
    )
    parser.add_argument("--show", type=int, default=5, help="Crashes/bad publications printed.")
    return parser


def _print_report(
    args: argparse.Namespace, ours: fuzz.CampaignReport, baseline: fuzz.CampaignReport | None
) -> None:
    """The table of this code against the baseline, then the outcomes and examples of each."""
    print(
        f"# fuzz campaign: {ours.files} mutated files (seed {args.seed}), {ours.builds} builds "
        f"of up to {args.batch} (plus 3 good templates each); baseline: "
        f"{args.baseline_ref or 'none'} on the same files"
        + (f"; value mutations left out: {args.exclude}" if args.exclude else "")
    )
    print(_row("", "this code", args.baseline_ref or "-"))

    def both(name: str) -> tuple[object, object]:
        value = getattr(ours, name)
        other = getattr(baseline, name) if baseline is not None else "-"
        return (
            (len(value), len(other) if baseline is not None else "-")
            if isinstance(value, list)
            else (value, other)
        )

    for label, name in (
        ("crashes", "crashes"),
        ("bad publications", "bad_publications"),
        ("builds published", "published"),
    ):
        print(_row(label, *both(name)))
    print(_row("seconds", f"{ours.seconds:.0f}", f"{baseline.seconds:.0f}" if baseline else "-"))
    print("# mutations:", ", ".join(f"{k} {n}" for k, n in ours.mutations.most_common()))
    for label, report in (("this code", ours), (args.baseline_ref, baseline)):
        if report is None:
            continue
        print(
            f"# outcomes ({label}):",
            ", ".join(f"{k} {n}" for k, n in report.outcomes.most_common()),
        )
        for kind, found in (("CRASH", report.crashes), ("BAD", report.bad_publications)):
            for line in found[: args.show]:
                print(f"  {kind} ({label}) {line[:600]}")


if __name__ == "__main__":
    main()
