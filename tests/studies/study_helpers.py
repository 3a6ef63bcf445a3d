"""Shared pieces of the experiment tests: a small checkpoint to run studies on, and the
check that a figure was written as PDF and PNG."""

import dynsys as ds
from dynsys.studies import config_for, run_study

# A one-layer model with spread-out logits (greedy margins far above float noise), saved as
# a local checkpoint so that a study loads it by path in a blink.
CFG = ds.ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                     max_position_embeddings=1024, initializer_range=0.2)


def save_checkpoint(tmp_path_factory, seed: int):
    """CFG with random weights drawn from `seed`, saved as a checkpoint; returns its path."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    ds.save_hf(ds.Model(CFG, ds.init_params(CFG, seed=seed)), ckpt)
    return ckpt


def small_study(tmp_path_factory, experiment: str, seed: int, overrides: dict):
    """(run, its config, the model): `experiment` at small scale with `overrides`, run on a
    checkpoint of CFG drawn from `seed`."""
    ckpt = save_checkpoint(tmp_path_factory, seed=seed)
    overrides = {**overrides, "model": str(ckpt)}
    run = run_study(experiment, tmp_path_factory.mktemp(experiment) / "run", "small",
                    overrides, progress=False)
    return run, config_for(experiment, "small", overrides), ds.load(ckpt)


def assert_figures(run, names, min_bytes: int = 1000) -> None:
    """Each figure name exists in the run as a PDF and a PNG of at least min_bytes."""
    for name in names:
        for suffix, magic in ((".pdf", b"%PDF"), (".png", b"\x89PNG\r\n\x1a\n")):
            path = run.figures / f"{name}{suffix}"
            assert path.read_bytes()[:len(magic)] == magic, path
            assert path.stat().st_size > min_bytes, path


def decided(passed: bool) -> str:
    """The verdict of a decided test."""
    return "holds" if passed else "fails"


def counting(calls: list, name: str, original):
    """`original`, appending `name` to `calls` at each call (to check what a resume recomputes)."""
    def call(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)
    return call


def brute_periodicity(trace, k=3) -> tuple[int, int]:
    """(period, onset): among p whose periodic suffix holds >= k copies, the longest suffix,
    ties to the smallest p; (0, len) if none."""
    G, best, onset = len(trace), 0, len(trace)
    for p in range(1, G // k + 1):
        start = G - p
        while start > 0 and trace[start - 1] == trace[start - 1 + p]:
            start -= 1
        if G - start >= k * p and start < onset:
            best, onset = p, start
    return best, onset
