"""The `dynsys` command line."""

from __future__ import annotations

import time

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from dynsys import prompts
from dynsys.decode import generate as generate_tokens
from dynsys.sampling import Sampler
from dynsys.traces import periodicity_batch
from dynsys.weights import load

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Greedy decoding as a dynamical system on token ids.")
console = Console()


@app.callback()
def main() -> None:
    """dynsys: why autoregressive transformers fall into loops."""


@app.command()
def generate(
    model: str = typer.Option("tiny", help="preset name or local Hugging Face checkpoint dir"),
    seed: int = typer.Option(0, help="seed of the random initialisation (presets)"),
    ngram: list[int] = typer.Option([1, 2, 3, 4], help="N of the repeated random N-gram"),
    prompts_per_n: int = typer.Option(4, help="random prompts per N"),
    length: int = typer.Option(256, help="prompt length in tokens"),
    new_tokens: int = typer.Option(256, help="tokens to generate"),
    rope: str = typer.Option("both", help="'on', 'off' or 'both'"),
    temperature: float = typer.Option(0.0, help="0 is greedy"),
    repeats: int = typer.Option(3, help="copies a period needs to count as a cycle"),
) -> None:
    """Generate from repeated-N-gram prompts and print each trace's period, onset and repeats."""
    if rope not in ("on", "off", "both"):
        raise typer.BadParameter(f"rope={rope!r} must be 'on', 'off' or 'both'")
    base = load(model, seed=seed)
    cfg = base.config
    batch = np.stack([prompts.repeated_ngram(cfg.vocab_size, n, length, seed=1000 * n + i)
                      for n in ngram for i in range(prompts_per_n)])
    labels = [(n, i) for n in ngram for i in range(prompts_per_n)]
    table = Table(title=f"{model}: {len(batch)} prompts of {length} tokens, "
                        f"{new_tokens} new tokens, temperature {temperature}")
    for column in ("rope", "N", "prompt", "period", "onset", "repeats", "last tokens"):
        table.add_column(column, justify="right")
    for use_rope in {"on": [True], "off": [False], "both": [True, False]}[rope]:
        start = time.perf_counter()
        with console.status(f"generating with RoPE {'on' if use_rope else 'off'}"):
            traces = np.asarray(generate_tokens(base.with_rope(use_rope), batch, new_tokens,
                                                sampler=Sampler(temperature=temperature),
                                                seed=seed))
        console.log(f"RoPE {'on' if use_rope else 'off'}: {traces.size} tokens in "
                    f"{time.perf_counter() - start:.1f} s")
        found = periodicity_batch(traces, k=repeats)
        for j, (n, i) in enumerate(labels):
            table.add_row("on" if use_rope else "off", str(n), str(i), str(found.period[j]),
                          str(found.onset[j]), str(found.repeats[j]),
                          " ".join(map(str, traces[j, -6:])))
    console.print(table)


if __name__ == "__main__":
    app()
