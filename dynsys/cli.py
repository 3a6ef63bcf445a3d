"""The `dynsys` command line: verify, run, settings, train, figures, generate, map, orbits, sweep.

A user error (a bad setting, value or file) ends a command with one line, `error: ...`,
naming it, and exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from safetensors import SafetensorError
from typer._click import exceptions as usage  # typer's own click (typer >= 0.29)

from dynsys import DISTRIBUTION

if TYPE_CHECKING:
    import numpy as np

    from dynsys.decode.sampling import Sampler

# Only typer, rich and the standard library are imported here, so that `dynsys --help` (and
# every command's --help) answers at once; jax, flax and the studies are imported inside the
# command that runs. The choices below are therefore spelled here; tests/test_cli.py checks
# them against the tables they name.
STUDY_NAMES = ("e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10")  # studies.STUDIES
Study = enum.StrEnum("Study", {name: name for name in STUDY_NAMES})


class Scale(enum.StrEnum):
    """A study's scale: small (minutes, CI), verify (verify's, where a study has one), paper."""
    small = "small"
    verify = "verify"
    paper = "paper"


class TrainScale(enum.StrEnum):
    """The scale of `dynsys train` (a test bed's recipes have the same two)."""
    small = "small"
    paper = "paper"


class PromptKind(enum.StrEnum):
    """dynsys.data.prompts.PROMPT_KINDS."""
    ngram = "ngram"
    random = "random"


class Rope(enum.StrEnum):
    """--rope of a command that runs one model: RoPE on or off."""
    on = "on"
    off = "off"


class Ropes(enum.StrEnum):
    """--rope of a command that can run the model both ways: on, off, or both in turn."""
    on = "on"
    off = "off"
    both = "both"


class Op(enum.StrEnum):
    """dynsys.surgery.edit.OPS."""
    zero = "zero"
    flip = "flip"
    scale = "scale"


class Group(typer.core.TyperGroup):
    """The command group, whose usage errors (a value not among the choices, a missing
    option, a malformed number) end with one line, `error: ... (see COMMAND --help)`, and
    exit status 2, as the commands' own errors do."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except usage.NoArgsIsHelpError as e:
            e.show()
            sys.exit(0)
        except usage.ClickException as e:
            where = getattr(e, "ctx", None)
            _error(e.format_message() + (f" (see {where.command_path} --help)" if where else ""))
            sys.exit(e.exit_code)
        except typer.Abort:
            _error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=Group, no_args_is_help=True,
                  help="Greedy decoding as a dynamical system on token ids.")
# log_path=False: a log line's time without the file and line that printed it.
console = Console(log_path=False)
errors = Console(stderr=True, log_path=False)
# What a user's input can raise: bad values, settings and files (RunError, UnreadableFile and
# JSON/TOML errors are ValueErrors), files that cannot be read or written, and checkpoints
# that safetensors cannot read.
USER_ERRORS = (ValueError, OSError, SafetensorError)
MODEL = typer.Option("tiny", help="preset name or local Hugging Face checkpoint directory")
SEED = typer.Option(0, help="seed of the random initialisation (presets)")
MESH = typer.Option(None, help="device mesh DATAxMODEL, e.g. 2x4 (as many devices as its size): "
                    "rows split over DATA, the model tensor-parallel over MODEL")


def _error(message: str) -> None:
    """`error: MESSAGE` on stderr as one line, whatever the terminal's width (typer's
    'Value error, ' before a choice's message dropped)."""
    message = " ".join(message.replace("Value error, ", "").split())
    errors.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def _version(shown: bool) -> None:
    """--version: the installed distribution's version, then exit."""
    if shown:
        try:
            console.print(f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}")
        except importlib.metadata.PackageNotFoundError:
            console.print("dynsys (not installed as a distribution: version unknown)")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the installed version and exit")) -> None:
    """dynsys: why autoregressive transformers fall into loops."""


def command(name: str | None = None):
    """app.command(name), for a command whose USER_ERRORS end it with one line on stderr,
    `error: MESSAGE`, and exit status 2 instead of a traceback (the line is not wrapped,
    whatever the terminal's width)."""
    def register(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as e:
                _error(str(e))
                raise typer.Exit(2) from None

        # The listing of `dynsys --help`: the docstring's first sentence, on one line.
        first = re.split(r"(?<=\.)\s", " ".join(fn.__doc__.split()), maxsplit=1)[0]
        return app.command(name, short_help=first)(checked)

    return register


def _settings(config: Path | None, assignments: list[str]) -> dict:
    """Experiment settings from a JSON/TOML file, then `key=value` pairs (values in JSON)."""
    from dynsys import studies

    out = studies.read_overrides(config) if config else {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} must look like key=value")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text  # a bare string, e.g. model=pythia-70m
    return out


def _verdict_table(title: str, rows: list[dict]) -> Table:
    """Report rows (dynsys.studies.finding.report) as a table: the raw verdict and, for a
    tested claim, the verdict after the family's correction (RULE)."""
    table = Table(title=title)
    for column in ("exp", "kind", "claim", "measured", "verdict", "adjusted"):
        table.add_column(column, overflow="fold")
    marks = {"holds": "[green]holds[/green]", "fails": "[red]fails[/red]",
             "inconclusive": "[yellow]inconclusive[/yellow]",
             "not testable here": "[magenta]not testable here[/magenta]", None: "-"}
    kinds = {"test": "test", "check": "check", "manipulation": "premise", "describe": ""}
    for r in rows:
        adjusted = marks[r["adjusted_verdict"]] if r["p_adjusted"] is not None else ""
        table.add_row(r["experiment"], kinds[r["kind"]], r["claim"], r["measured"],
                      marks[r["verdict"]], adjusted)
    return table


def _report(title: str, out: Path, as_json: bool) -> list[dict]:
    """The findings of the run directory (or directories) `out`: written to OUT/findings.json
    and findings.csv, then printed as a table with the counts by kind, or as JSON."""
    from dynsys import studies
    from dynsys.studies.finding import RULE, summary, write_report

    rows = studies.report(out)
    write_report(out, rows)
    if as_json:
        print(json.dumps({"rule": RULE, "findings": rows}, indent=1))
    else:
        console.print(_verdict_table(title, rows))
        console.print(f"{summary(rows)}\nMultiplicity: {RULE}.")
    return rows


@command()
def verify(out: Path = typer.Option(Path("runs/verify"), help="run directory (resumes)"),
           experiments: list[Study] = typer.Option(list(Study), "--experiment", "-e",
                                                   help="experiments to include (repeatable)"),
           as_json: bool = typer.Option(False, "--json", help="print the findings as JSON "
                                        "(progress goes to stderr)")) -> None:
    """The main job: every experiment at its small scale (its verify scale where it has one)
    on the tiny random-init model,
    RoPE on and off; prints the verdicts (tested claims, checks and premises apart, raw and
    corrected for multiplicity), writes OUT/findings.json and findings.csv and a run
    directory per experiment with its figures."""
    from dynsys import studies

    start = time.perf_counter()
    log = errors if as_json else console
    for name in (e.value for e in experiments):
        module = studies.study(name)
        log.rule(f"{name}: {module.TITLE}")
        t = time.perf_counter()
        studies.run_study(name, out / name, "verify" if "verify" in module.SCALES else "small",
                          progress=not as_json)
        log.log(f"{name} done in {time.perf_counter() - t:.0f} s")
    _report("dynsys verify: the Markov-degeneration argument on tiny random-init models",
            out, as_json)
    log.print(f"Run directory: {out} (figures in {out}/*/figures, findings in "
              f"{out}/findings.json); {time.perf_counter() - start:.0f} s.")


@command()
def run(experiment: Study = typer.Argument(..., help="the experiment"),
        scale: Scale = typer.Option(Scale.small, help="small (minutes, CI), verify (verify's "
                                    "scale, where the experiment has one) or paper"),
        out: Path = typer.Option(None, help="run directory (default runs/EXPERIMENT-SCALE)"),
        config: Path = typer.Option(None, help="JSON or TOML file of settings"),
        set_: list[str] = typer.Option([], "--set", help="a setting key=value (repeatable)"),
        ) -> None:
    """Run (or resume) one experiment into a run directory and draw its figures."""
    _run_and_report(experiment.value, scale.value,
                    out or Path("runs") / f"{experiment.value}-{scale.value}",
                    _settings(config, set_))


def _run_and_report(experiment: str, scale: str, out: Path, overrides: dict) -> None:
    from dynsys import studies

    studies.run_study(experiment, out, scale, overrides)
    _report(f"{experiment} ({scale}): {studies.study(experiment).TITLE}", out, False)
    console.print(f"wrote {out} (findings in {out}/findings.json)")


@command()
def train(out: Path = typer.Option(None, help="run directory (resumes; default runs/train, "
                                               "with --testbed runs/testbeds/NAME-SCALE)"),
          scale: TrainScale = typer.Option(TrainScale.small, help="small (a 0.2M model, a "
                                           "minute) or paper (~13M parameters, an hour on 2 "
                                           "cores); a test bed's own small and paper recipes"),
          config: Path = typer.Option(None, help="JSON or TOML file of settings"),
          set_: list[str] = typer.Option([], "--set", help="a setting key=value (repeatable)"),
          testbed: str = typer.Option(None, help="train this test bed's recipe instead (a "
                                      "name of dynsys.testbeds.TESTBEDS, e.g. markov1; an "
                                      "unknown name is answered with the list)"),
          ) -> None:
    """Train a model from scratch on the offline corpus: tokenizer, training with checkpoints
    through time (Hugging Face directories under OUT/train/checkpoints), held-out losses.
    The settings are those of E7 and E8 (dynsys.studies.training.Training). With --testbed,
    the recipe of that test bed at --scale (settings: dynsys.testbeds), recorded in the
    registry testbeds.json beside OUT."""
    from dynsys import studies
    from dynsys.runs import open_run
    from dynsys.studies import training

    scale = scale.value
    if testbed is not None:
        return _train_testbed(testbed, scale, out, _settings(config, set_))
    out = out or Path("runs/train")
    overrides = {**(training.SMALL if scale == "small" else {}), **_settings(config, set_)}
    settings = studies.with_overrides(training.Training(), overrides, "train")
    run = open_run(out, "train", settings, seeds={"seed": settings.seed})
    training.checkpoints(run, settings)
    training.write_training_tables(run, settings)
    unigram = run.read_table("tokens")[0]["unigram_heldout_loss"]
    table = Table(title=f"{out}: held-out loss through training (unigram model: {unigram:.2f})")
    for column in ("step", "tokens", "held-out loss"):
        table.add_column(column, justify="right")
    for row in run.read_table("training"):
        table.add_row(str(row["step"]), str(row["tokens"]), f"{row['heldout_loss']:.3f}")
    console.print(table)
    console.print(f"checkpoints in {training.training_dir(run, settings) / 'checkpoints'}")


def _train_testbed(name: str, scale: str, out: Path | None, overrides: dict) -> None:
    """Train (or resume) a registered test bed and print its summary."""
    from dynsys import testbeds
    from dynsys.runs import read_run

    made = testbeds.recipe(name, scale, overrides)
    console.print(f"{made.key}: {testbeds.TESTBEDS[name].description}; "
                  f"{made.source.describe()}")
    summary = testbeds.train_testbed(made, out)
    table = Table(title=f"{summary.out_dir}: held-out loss through training "
                        f"(nats per token)")
    for column in ("step", "tokens", "held-out loss"):
        table.add_column(column, justify="right")
    for row in read_run(summary.out_dir).read_table("training"):
        table.add_row(str(row["step"]), str(row["tokens"]), f"{row['heldout_loss']:.4f}")
    console.print(table)
    console.print(_what_value(f"test bed {made.key} ({summary.key} in "
                              f"{summary.out_dir.parent / testbeds.REGISTRY})",
                              testbeds.summary_rows(summary)))
    console.print(f"checkpoints in {summary.out_dir / 'train' / 'checkpoints'}; a study names "
                  f"them {summary.key}@final, @latest or @step_XXXXXXX (dynsys.testbeds.resolve)")


def _what_value(title: str, rows) -> Table:
    """A two-column table (what, value) of (str, str) rows."""
    table = Table(title=title)
    table.add_column("what")
    table.add_column("value", justify="right")
    for what, value in rows:
        table.add_row(what, value)
    return table


@command("testbeds")
def testbeds_report(keys: list[str] = typer.Argument(None, help="registered KEYs (default: "
                                                                "all), or KEY@CHECKPOINT"),
                    root: Path = typer.Option(None, help="directory of the registry (default "
                                              "dynsys.testbeds.ROOT, runs/testbeds)")
                    ) -> None:
    """Every registered test bed at its latest checkpoint (dynsys.testbeds.report): size,
    context, tokens, time, held-out loss beside the references, attention concentration per
    layer, and copying (TP_1 and TP_8)."""
    from dynsys import testbeds

    root = testbeds.ROOT if root is None else root
    if not keys:
        registered = testbeds.read_registry(root)
        for key in registered:
            if not testbeds.checkpointed(key, root):
                console.print(f"{key}: registered, no checkpoint yet")
        keys = [key for key in registered if testbeds.checkpointed(key, root)]
    if not keys:
        raise ValueError(f"no test bed with a checkpoint is registered in "
                         f"{root / testbeds.REGISTRY}")
    for key in keys:
        report = testbeds.testbed_report(key, root)
        console.print(_what_value(f"test bed {report.summary.key}, step "
                                  f"{report.summary.step} of {report.summary.steps}",
                                  testbeds.report_rows(report)))


@command()
def settings(experiment: Study = typer.Argument(..., help="the experiment")) -> None:
    """An experiment's settings (its Config's fields): the value at each scale it has
    (small, verify, paper), as `run --set FIELD=VALUE` takes it, and the limit each is
    checked against (dynsys.studies.settings)."""
    from dynsys import studies

    module = studies.study(experiment.value)
    table = Table(title=f"{experiment.value}: {module.TITLE}")
    table.add_column("setting")
    for scale in module.SCALES:
        table.add_column(scale, overflow="fold")
    table.add_column("limit", overflow="fold")
    for field in dataclasses.fields(module.Config):
        values = [getattr(config, field.name) for config in module.SCALES.values()]
        table.add_row(field.name, *(v if isinstance(v, str) else json.dumps(v) for v in values),
                      _limit(module.Config.LIMITS.get(field.name), module.SCALES))
    console.print(table)


def _limit(limit, scales: dict) -> str:
    """A LIMITS entry (dynsys.studies.settings) in words; one set by other settings, as its
    value at each scale."""
    if limit is None:
        return ""
    if callable(limit):
        return "set by other settings: " + ", ".join(f">= {limit(config)} ({scale})"
                                                      for scale, config in scales.items())
    if isinstance(limit, tuple):
        return f"one of {', '.join(limit)}"
    return f">= {limit}"


@command()
def figures(run_dir: Path = typer.Argument(..., help="a run directory, or a directory of them")
            ) -> None:
    """Redraw the figures of stored runs (nothing is recomputed)."""
    from dynsys import studies

    for p in studies.render(run_dir):
        console.print(str(p))


@command()
def sweep(model: str = MODEL, seed: int = SEED,
          lengths: list[int] = typer.Option([64, 256, 1024, 4096], "--n", help="prompt lengths"),
          new_tokens: int = typer.Option(32, help="generation length G"),
          prompts_per_cell: int = typer.Option(8, help="random prompts per (RoPE, kind, n)"),
          out: Path = typer.Option(Path("runs/sweep"), help="run directory (resumes)")) -> None:
    """agreement(n, G) with the Markov map (experiment E2 with these settings)."""
    _run_and_report("e2", "small", out, {"model": model, "seed": seed, "lengths": lengths,
                                         "G": new_tokens, "prompts": prompts_per_cell})


@command("map")
def map_(model: str = MODEL, seed: int = SEED,
         kind: PromptKind = typer.Option(PromptKind.ngram, help="prompt: ngram (a repeated "
                                         "random N-gram) or random"),
         length: int = typer.Option(1024, help="prompt length n"),
         prompt_seed: int = typer.Option(0, help="seed of the random prompt"),
         offset: int = typer.Option(0, help="position offset τ of the current token"),
         rope: Rope = typer.Option(Rope.on, help="RoPE on or off"),
         out: Path = typer.Option(Path("map.npz"), help="where to write next/margin/prompt"),
         mesh: str = MESH) -> None:
    """The Markov map f_{P,τ} on all of V, written as an .npz (resumable: finished chunks
    are kept in OUT.chunks, which is removed once OUT is written; with several processes
    (DYNSYS_NUM_PROCESSES, docs/scaling.md) the chunks are shared out, process 0 writes OUT
    and OUT.chunks stays, as another process may still be reading it)."""
    import shutil

    from dynsys.data.prompts import make_prompt
    from dynsys.distributed import process
    from dynsys.dynamics.markov import markov_map
    from dynsys.io import load
    from dynsys.runs import check_npz_target, save_npz_atomic
    from dynsys.sharding import parse_mesh

    check_npz_target(out)
    net = load(model, seed=seed, mesh=None if mesh is None else parse_mesh(mesh))
    net = net.with_rope(rope is Rope.on)
    prompt = make_prompt(kind.value, net.config.vocab_size, length, prompt_seed)
    chunks = out.with_name(out.stem + ".chunks")
    fmap = markov_map(net, prompt, offset=offset, resume_dir=chunks)
    index, count = process()
    if index == 0:
        save_npz_atomic(out, next=fmap.next, margin=fmap.margin, prompt=prompt)
    if count == 1:
        shutil.rmtree(chunks)
    _print_orbits(fmap.next)
    console.print(f"wrote {out}")


@command()
def orbits(map_file: Path = typer.Argument(..., help="an .npz with an array 'next' (dynsys map)"),
           shuffles: int = typer.Option(20, help="in-degree-preserving shuffles for the null")
           ) -> None:
    """Cycles, tails and basins of a stored map next to the random-mapping null."""
    from dynsys.dynamics.orbits import check_map
    from dynsys.runs import load_npz

    saved = load_npz(map_file)
    if "next" not in saved:
        raise ValueError(f"{map_file} has no array 'next' (it holds: "
                         f"{', '.join(saved) or 'nothing'}); write one with `dynsys map`")
    try:
        nxt = check_map(saved["next"])
    except ValueError as e:
        raise ValueError(f"{map_file}: {e}") from None
    _print_orbits(nxt, shuffles)


def _print_orbits(nxt: np.ndarray, shuffles: int = 20) -> None:
    import numpy as np

    from dynsys.dynamics.nullmodel import compare_to_null
    from dynsys.dynamics.orbits import orbits as orbit_structure

    orb = orbit_structure(nxt)
    cycles = ", ".join(f"{len(orb.cycle(c))}:{orb.basin_size[c]}"
                       for c in np.argsort(-orb.basin_size)[:8])
    console.print(f"{orb.n_cycles} cycles (length:basin, largest first): {cycles}")
    table = Table(title=f"orbit statistics of f vs a uniform random mapping on {nxt.size} "
                        f"points and {shuffles} in-degree shuffles")
    for column in ("statistic", "f", "random mapping", "ratio", "shuffled"):
        table.add_column(column, justify="right")
    for name, row in compare_to_null(nxt, shuffles=shuffles, seed=0).items():
        table.add_row(name, f"{row.observed:.1f}", f"{row.expected:.1f}", f"{row.ratio:.2f}",
                      f"{row.shuffled_mean:.1f}")
    console.print(table)


@command()
def generate(
    model: str = MODEL, seed: int = SEED,
    ngram: list[int] = typer.Option([1, 2, 3, 4], help="N of the repeated random N-gram"),
    prompts_per_n: int = typer.Option(4, help="random prompts per N"),
    length: int = typer.Option(256, help="prompt length in tokens"),
    new_tokens: int = typer.Option(256, help="tokens to generate"),
    rope: Ropes = typer.Option(Ropes.both, help="RoPE on, off, or both in turn"),
    temperature: float = typer.Option(0.0, help="0 is greedy"),
    top_k: int = typer.Option(0, help="keep the k most likely tokens (0: off)"),
    top_p: float = typer.Option(1.0, help="keep the smallest set of probability >= p (1: off)"),
    repetition_penalty: float = typer.Option(1.0, help="CTRL's penalty rho on seen tokens "
                                             "(1: off)"),
    no_repeat_ngram_size: int = typer.Option(0, help="ban completing an n-gram already seen "
                                             "(0: off)"),
    dry_multiplier: float = typer.Option(0.0, help="DRY's multiplier m (0: off)"),
    dry_base: float = typer.Option(1.75, help="DRY's base"),
    dry_allowed_length: int = typer.Option(2, help="DRY's allowed match length"),
    dry_sequence_breaker: list[int] = typer.Option([], help="a token id that ends a DRY match "
                                                   "(repeatable)"),
    dry_penalty_last_n: int = typer.Option(0, help="DRY looks at the last n tokens (0: all)"),
    min_p: float = typer.Option(0.0, help="drop tokens below p times the top probability "
                                "(0: off)"),
    presence_penalty: float = typer.Option(0.0, help="subtracted from generated tokens' "
                                           "scores (0: off)"),
    frequency_penalty: float = typer.Option(0.0, help="subtracted per generated occurrence "
                                            "(0: off)"),
    repeats: int = typer.Option(3, help="copies a period needs to count as a cycle"),
    text: str = typer.Option(None, help="a text prompt instead of the N-gram prompts (a "
                             "checkpoint with a tokenizer.json): its continuation as ids and text"),
    out: Path = typer.Option(None, help="also write the traces to OUT: .npz (one array per "
                             "field, a row per trace) or .jsonl (one JSON object per trace)"),
    as_json: bool = typer.Option(False, "--json", help="print the traces as JSON instead of a "
                                 "table (progress goes to stderr)"),
    mesh: str = MESH,
) -> None:
    """Generate from repeated-N-gram prompts (or --text) and print each trace's period, onset
    and repeats. The sampler settings are dynsys.decode.sampling.Sampler's (Hugging Face's
    semantics, DRY as text-generation-webui's)."""
    from dynsys.decode.sampling import Sampler
    from dynsys.io import load
    from dynsys.sharding import parse_mesh

    sampler = Sampler(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                      dry_multiplier, dry_base, dry_allowed_length, tuple(dry_sequence_breaker),
                      dry_penalty_last_n, min_p, presence_penalty, frequency_penalty)
    if out is not None:
        _check_traces_target(out)
    devices = None if mesh is None else parse_mesh(mesh)
    if text is not None:
        records = _generate_text(load(model, seed=seed, mesh=devices), text, new_tokens,
                                 sampler, seed, repeats, as_json)
    else:
        records = _generate_ngrams(model, seed, devices, ngram, prompts_per_n, length,
                                   new_tokens, rope.value, sampler, repeats, as_json)
    if out is not None:
        _write_traces(out, records)
    if as_json:
        print(json.dumps(records))
    if out is not None:
        (errors if as_json else console).print(f"wrote {len(records)} traces to {out}")


def _describe(sampler: Sampler) -> str:
    """The sampler's settings that differ from greedy decoding's, or 'greedy'."""
    from dynsys.decode.sampling import GREEDY

    changed = [f"{f.name} {getattr(sampler, f.name)}" for f in dataclasses.fields(sampler)
               if getattr(sampler, f.name) != getattr(GREEDY, f.name)]
    return ", ".join(changed) or "greedy"


def _generate_ngrams(model: str, seed: int, devices, ngram: list[int], prompts_per_n: int,
                     length: int, new_tokens: int, rope: str, sampler: Sampler, repeats: int,
                     as_json: bool) -> list[dict]:
    """Traces from repeated-N-gram prompts, RoPE on, off or both: one record per trace (rope,
    N, prompt, prompt_ids, tokens, period, onset, repeats), printed as a table unless
    as_json."""
    import numpy as np

    from dynsys.data import prompts
    from dynsys.decode import generate as generate_tokens
    from dynsys.decode.engine import check_generation_fits
    from dynsys.dynamics.traces import periodicity_batch
    from dynsys.io import load
    from dynsys.nn.cache import bucket

    if prompts_per_n < 1:
        raise ValueError(f"--prompts-per-n={prompts_per_n} must be at least 1")
    base = load(model, seed=seed, mesh=devices)
    cfg = base.config
    check_generation_fits(cfg, len(ngram) * prompts_per_n, bucket(length), new_tokens)
    batch = np.stack([prompts.repeated_ngram(cfg.vocab_size, n, length, seed=1000 * n + i)
                      for n in ngram for i in range(prompts_per_n)])
    labels = [(n, i) for n in ngram for i in range(prompts_per_n)]
    log = errors if as_json else console
    records = []
    for use_rope in {"on": [True], "off": [False], "both": [True, False]}[rope]:
        start = time.perf_counter()
        with log.status(f"generating with RoPE {'on' if use_rope else 'off'}"):
            traces = np.asarray(generate_tokens(base.with_rope(use_rope), batch, new_tokens,
                                                sampler=sampler, seed=seed).tokens)
        log.log(f"RoPE {'on' if use_rope else 'off'}: {traces.size} tokens in "
                f"{time.perf_counter() - start:.1f} s")
        found = periodicity_batch(traces, k=repeats)
        records += [{"rope": "on" if use_rope else "off", "N": n, "prompt": i,
                     "prompt_ids": batch[j].tolist(), "tokens": traces[j].tolist(),
                     "period": int(found.period[j]), "onset": int(found.onset[j]),
                     "repeats": int(found.repeats[j])} for j, (n, i) in enumerate(labels)]
    if not as_json:
        table = Table(title=f"{model}: {len(batch)} prompts of {length} tokens, "
                            f"{new_tokens} new tokens, {_describe(sampler)}")
        for column in ("rope", "N", "prompt", "period", "onset", "repeats", "last tokens"):
            table.add_column(column, justify="right")
        for r in records:
            table.add_row(r["rope"], str(r["N"]), str(r["prompt"]), str(r["period"]),
                          str(r["onset"]), str(r["repeats"]), " ".join(map(str, r["tokens"][-6:])))
        console.print(table)
    return records


def _generate_text(model, text: str, new_tokens: int, sampler: Sampler, seed: int,
                   repeats: int, as_json: bool) -> list[dict]:
    """Continue one text prompt: one record (text, prompt_ids, tokens, period, onset,
    repeats); unless as_json, the prompt's and the continuation's ids printed beside their
    text with the continuation's period, onset and repeats."""
    import numpy as np

    from dynsys.decode import generate as generate_tokens
    from dynsys.dynamics.traces import periodicity_batch

    if model.tokenizer is None:
        raise ValueError("--text needs a checkpoint directory holding a tokenizer.json; the "
                         "model has none")
    if not text:
        raise ValueError("--text='' is empty")
    ids = np.asarray(model.tokenizer.encode(text).ids, np.int32)
    trace = np.asarray(generate_tokens(model, ids[None], new_tokens, sampler=sampler,
                                       seed=seed).tokens)[0]
    found = periodicity_batch(trace[None], k=repeats)
    record = {"text": text, "prompt_ids": ids.tolist(), "tokens": trace.tolist(),
              "period": int(found.period[0]), "onset": int(found.onset[0]),
              "repeats": int(found.repeats[0])}
    if not as_json:
        table = Table(title=f"{len(ids)} prompt tokens, {new_tokens} new tokens, "
                            f"{_describe(sampler)}: "
                            f"period {record['period']}, onset {record['onset']}, repeats "
                            f"{record['repeats']}", show_lines=True)
        table.add_column("", style="bold")
        table.add_column("ids")
        table.add_column("text")
        for name, part in (("prompt", ids), ("continuation", trace)):
            table.add_row(name, " ".join(map(str, part)),
                          Text(model.tokenizer.decode(part.tolist(), skip_special_tokens=False)))
        console.print(table)
    return [record]


def _check_traces_target(path: Path) -> None:
    """ValueError naming `path` unless traces can be written there: an .npz or a .jsonl file
    (dynsys.runs.check_file_target)."""
    from dynsys.runs import check_file_target

    if path.suffix not in (".npz", ".jsonl"):
        raise ValueError(f"--out {path} must end in .npz or .jsonl")
    check_file_target(path)


def _write_traces(path: Path, records: list[dict]) -> None:
    """The records, all with the same fields, to `path` whole or not at all: .npz, one array
    per field with a row per record (no pickled objects), or .jsonl, a record a line."""
    import numpy as np

    from dynsys.runs import atomic_path, save_npz_atomic

    if path.suffix == ".npz":
        save_npz_atomic(path, **{key: np.asarray([r[key] for r in records])
                                 for key in records[0]})
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _neurons(specs: list[str]) -> list[tuple[int, int]]:
    """--neuron values, each LAYER:INDEX or a comma list of them, as (layer, index) pairs."""
    pairs = []
    for item in ",".join(specs).split(","):
        found = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", item)
        if not found:
            raise ValueError(f"--neuron {item!r} must look like LAYER:INDEX, e.g. 3:1027")
        pairs.append((int(found[1]), int(found[2])))
    return pairs


@command()
def edit(checkpoint: str = typer.Argument(..., help="preset name or local Hugging Face "
                                                    "checkpoint directory"),
         neuron: list[str] = typer.Option(..., help="MLP neuron LAYER:INDEX (repeatable, or "
                                                    "a comma list)"),
         op: Op = typer.Option(..., help="zero the neurons, flip their sign, or scale their "
                               "down-projection columns by --factor"),
         factor: float = typer.Option(None, help="the factor of --op scale (needed there, "
                                      "refused with the others)"),
         out: Path = typer.Option(..., help="directory of the new checkpoint (must not exist)"),
         seed: int = SEED) -> None:
    """Zero, sign-flip or scale MLP neurons in the weights (neuron j of layer i writes
    h_j · W_down[:, j]; the column is scaled, and a zeroed neuron's input rows are zeroed
    too) and write the result as a new checkpoint, with edit.json recording the source, its
    digest and the edit."""
    if op is Op.scale and factor is None:
        raise ValueError("--op scale needs --factor (the factor on each neuron's "
                         "down-projection column, e.g. --factor 0.5)")
    from dynsys.surgery import NeuronEdit, save_edited

    change = NeuronEdit(_neurons(neuron), op.value, factor)
    save_edited(checkpoint, change, out, seed=seed)
    console.print(f"wrote {out}: {op.value}{'' if factor is None else f' x{factor:g}'} of "
                  f"{len(change.neurons)} neuron(s) of {checkpoint}")


if __name__ == "__main__":
    app()
