"""The `dynsys` command line: verify, run, settings, train, figures, generate, map, orbits, sweep.

A user error (a bad setting, value or file) ends a command with one line, `error: ...`,
naming it, and exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from safetensors import SafetensorError

from dynsys import studies, testbeds
from dynsys.data import prompts
from dynsys.data.prompts import make_prompt
from dynsys.decode import generate as generate_tokens
from dynsys.decode.engine import check_generation_fits
from dynsys.decode.sampling import GREEDY, Sampler
from dynsys.distributed import process
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.nullmodel import compare_to_null
from dynsys.dynamics.orbits import check_map
from dynsys.dynamics.orbits import orbits as orbit_structure
from dynsys.dynamics.traces import periodicity_batch
from dynsys.io import load
from dynsys.nn.cache import bucket
from dynsys.runs import (
    atomic_path,
    check_npz_target,
    load_npz,
    open_run,
    read_run,
    save_npz_atomic,
)
from dynsys.sharding import parse_mesh
from dynsys.studies import training
from dynsys.studies.finding import RULE, summary, write_report
from dynsys.surgery import OPS, NeuronEdit, save_edited

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Greedy decoding as a dynamical system on token ids.")
console = Console()
errors = Console(stderr=True)
# What a user's input can raise: bad values, settings and files (RunError, UnreadableFile and
# JSON/TOML errors are ValueErrors), files that cannot be read or written, and checkpoints
# that safetensors cannot read.
USER_ERRORS = (ValueError, OSError, SafetensorError)
MODEL = typer.Option("tiny", help="preset name or local Hugging Face checkpoint directory")
SEED = typer.Option(0, help="seed of the random initialisation (presets)")
MESH = typer.Option(None, help="device mesh DATAxMODEL, e.g. 2x4 (as many devices as its size): "
                    "rows split over DATA, the model tensor-parallel over MODEL")


def _version(shown: bool) -> None:
    """--version: the installed distribution's version, then exit."""
    if shown:
        try:
            console.print(f"dynsys {importlib.metadata.version('dynsys')}")
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
                message = " ".join(str(e).splitlines())
                errors.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
                raise typer.Exit(2) from None

        return app.command(name)(checked)

    return register


def _settings(config: Path | None, assignments: list[str]) -> dict:
    """Experiment settings from a JSON/TOML file, then `key=value` pairs (values in JSON)."""
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
           experiments: list[str] = typer.Option(list(studies.STUDIES), "--experiment", "-e",
                                                 help="experiments to include"),
           as_json: bool = typer.Option(False, "--json", help="print the findings as JSON "
                                        "(progress goes to stderr)")) -> None:
    """The main job: every experiment at its small scale (its verify scale where it has one)
    on the tiny random-init model,
    RoPE on and off; prints the verdicts (tested claims, checks and premises apart, raw and
    corrected for multiplicity), writes OUT/findings.json and findings.csv and a run
    directory per experiment with its figures."""
    start = time.perf_counter()
    log = errors if as_json else console
    for name in experiments:
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
def run(experiment: str = typer.Argument(..., help=f"one of {', '.join(studies.STUDIES)}"),
        scale: str = typer.Option("small", help="'small' (minutes, CI) or 'paper'"),
        out: Path = typer.Option(None, help="run directory (default runs/EXPERIMENT-SCALE)"),
        config: Path = typer.Option(None, help="JSON or TOML file of settings"),
        set_: list[str] = typer.Option([], "--set", help="a setting key=value (repeatable)"),
        ) -> None:
    """Run (or resume) one experiment into a run directory and draw its figures."""
    _run_and_report(experiment, scale, out or Path("runs") / f"{experiment}-{scale}",
                    _settings(config, set_))


def _run_and_report(experiment: str, scale: str, out: Path, overrides: dict) -> None:
    studies.run_study(experiment, out, scale, overrides)
    _report(f"{experiment} ({scale}): {studies.study(experiment).TITLE}", out, False)
    console.print(f"wrote {out} (findings in {out}/findings.json)")


@command()
def train(out: Path = typer.Option(None, help="run directory (resumes; default runs/train, "
                                               "with --testbed runs/testbeds/NAME-SCALE)"),
          scale: str = typer.Option("small", help="'small' (a 0.2M model, a minute) or 'paper' "
                                                   "(~13M parameters, an hour on 2 cores)"),
          config: Path = typer.Option(None, help="JSON or TOML file of settings"),
          set_: list[str] = typer.Option([], "--set", help="a setting key=value (repeatable)"),
          testbed: str = typer.Option(None, help="train this registered test bed instead "
                                                 f"({', '.join(testbeds.TESTBEDS)})"),
          ) -> None:
    """Train a model from scratch on the offline corpus: tokenizer, training with checkpoints
    through time (Hugging Face directories under OUT/train/checkpoints), held-out losses.
    The settings are those of E7 and E8 (dynsys.studies.training.Training). With --testbed,
    the recipe of that test bed at --scale (settings: dynsys.testbeds), recorded in the
    registry testbeds.json beside OUT."""
    if testbed is not None:
        return _train_testbed(testbed, scale, out, _settings(config, set_))
    if scale not in ("small", "paper"):
        raise ValueError(f"scale {scale!r} is not one of small, paper")
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
                    root: Path = typer.Option(testbeds.ROOT, help="directory of the registry")
                    ) -> None:
    """Every registered test bed at its latest checkpoint (dynsys.testbeds.report): size,
    context, tokens, time, held-out loss beside the references, attention concentration per
    layer, and copying (TP_1 and TP_8)."""
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
def settings(experiment: str = typer.Argument(..., help=f"one of {', '.join(studies.STUDIES)}")
             ) -> None:
    """An experiment's settings (its Config's fields): the value at each scale it has
    (small, verify, paper), as `run --set FIELD=VALUE` takes it, and the limit each is
    checked against (dynsys.studies.settings)."""
    module = studies.study(experiment)
    table = Table(title=f"{experiment}: {module.TITLE}")
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
         kind: str = typer.Option("ngram", help="prompt: 'ngram' (repeated) or 'random'"),
         length: int = typer.Option(1024, help="prompt length n"),
         prompt_seed: int = typer.Option(0, help="seed of the random prompt"),
         offset: int = typer.Option(0, help="position offset τ of the current token"),
         rope: bool = typer.Option(True, help="RoPE on (--rope) or off (--no-rope)"),
         out: Path = typer.Option(Path("map.npz"), help="where to write next/margin/prompt"),
         mesh: str = MESH) -> None:
    """The Markov map f_{P,τ} on all of V, written as an .npz (resumable: finished chunks
    are kept in OUT.chunks, which is removed once OUT is written; with several processes
    (DYNSYS_NUM_PROCESSES, docs/scaling.md) the chunks are shared out, process 0 writes OUT
    and OUT.chunks stays, as another process may still be reading it)."""
    check_npz_target(out)
    net = load(model, seed=seed, mesh=None if mesh is None else parse_mesh(mesh)).with_rope(rope)
    prompt = make_prompt(kind, net.config.vocab_size, length, prompt_seed)
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
    rope: str = typer.Option("both", help="'on', 'off' or 'both'"),
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
    sampler = Sampler(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                      dry_multiplier, dry_base, dry_allowed_length, tuple(dry_sequence_breaker),
                      dry_penalty_last_n)
    if out is not None:
        _check_traces_target(out)
    devices = None if mesh is None else parse_mesh(mesh)
    if text is not None:
        records = _generate_text(load(model, seed=seed, mesh=devices), text, new_tokens,
                                 sampler, seed, repeats, as_json)
    else:
        records = _generate_ngrams(model, seed, devices, ngram, prompts_per_n, length,
                                   new_tokens, rope, sampler, repeats, as_json)
    if out is not None:
        _write_traces(out, records)
    if as_json:
        print(json.dumps(records))
    if out is not None:
        (errors if as_json else console).print(f"wrote {len(records)} traces to {out}")


def _describe(sampler: Sampler) -> str:
    """The sampler's settings that differ from greedy decoding's, or 'greedy'."""
    changed = [f"{f.name} {getattr(sampler, f.name)}" for f in dataclasses.fields(sampler)
               if getattr(sampler, f.name) != getattr(GREEDY, f.name)]
    return ", ".join(changed) or "greedy"


def _generate_ngrams(model: str, seed: int, devices, ngram: list[int], prompts_per_n: int,
                     length: int, new_tokens: int, rope: str, sampler: Sampler, repeats: int,
                     as_json: bool) -> list[dict]:
    """Traces from repeated-N-gram prompts, RoPE on, off or both: one record per trace (rope,
    N, prompt, prompt_ids, tokens, period, onset, repeats), printed as a table unless
    as_json."""
    if rope not in ("on", "off", "both"):
        raise ValueError(f"rope={rope!r} must be 'on', 'off' or 'both'")
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
                                                sampler=sampler, seed=seed))
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
    if model.tokenizer is None:
        raise ValueError("--text needs a checkpoint directory holding a tokenizer.json; the "
                         "model has none")
    if not text:
        raise ValueError("--text='' is empty")
    ids = np.asarray(model.tokenizer.encode(text).ids, np.int32)
    trace = np.asarray(generate_tokens(model, ids[None], new_tokens, sampler=sampler,
                                       seed=seed))[0]
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
    """ValueError naming `path` unless traces can be written there: an .npz target
    (check_npz_target), or a .jsonl file, not a directory, in a directory that exists."""
    if path.suffix == ".npz":
        check_npz_target(path)
    elif path.suffix != ".jsonl":
        raise ValueError(f"--out {path} must end in .npz or .jsonl")
    elif path.is_dir():
        raise ValueError(f"{path} is a directory; give the name of the .jsonl file to write")
    elif not path.parent.is_dir():
        raise ValueError(f"{path.parent} (the directory of {path}) is not a directory")


def _write_traces(path: Path, records: list[dict]) -> None:
    """The records, all with the same fields, to `path` whole or not at all: .npz, one array
    per field with a row per record (no pickled objects), or .jsonl, a record a line."""
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
         op: str = typer.Option(..., help=f"one of {', '.join(OPS)} (flip: sign-invert)"),
         factor: float = typer.Option(None, help="the factor of --op scale"),
         out: Path = typer.Option(..., help="directory of the new checkpoint (must not exist)"),
         seed: int = SEED) -> None:
    """Zero, sign-flip or scale MLP neurons in the weights (neuron j of layer i writes
    h_j · W_down[:, j]; the column is scaled, and a zeroed neuron's input rows are zeroed
    too) and write the result as a new checkpoint, with edit.json recording the source, its
    digest and the edit."""
    change = NeuronEdit(_neurons(neuron), op, factor)
    save_edited(checkpoint, change, out, seed=seed)
    console.print(f"wrote {out}: {op}{'' if factor is None else f' x{factor:g}'} of "
                  f"{len(change.neurons)} neuron(s) of {checkpoint}")


if __name__ == "__main__":
    app()
