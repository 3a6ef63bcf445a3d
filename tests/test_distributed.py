"""Sharding over a device mesh (dynsys.sharding) on 8 host devices: greedy generation, the
Markov map and the logits of every family agree with one device on meshes 8x1, 1x8 and 2x4.

JAX fixes its device count when it starts, so the default suite (one device) runs this module
again in a subprocess with 8 forced CPU devices (`test_on_eight_devices`); there the mesh
tests run and the launcher is skipped.
"""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import CONFIGS, random_model, small
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from typer.testing import CliRunner

from dynsys.cli import app
from dynsys.decode import generate, prefill, step
from dynsys.dynamics.markov import markov_map
from dynsys.io import load, load_hf, save_hf
from dynsys.nn import Model, param_axes
from dynsys.nn.cache import PREFIX_KEY_AXES
from dynsys.sharding import make_mesh, place, spec

EIGHT = jax.device_count() == 8
on_eight = pytest.mark.skipif(not EIGHT, reason="needs 8 devices (run by test_on_eight_devices)")
# Every model axis split: heads, kv heads, MLP and vocabulary divide 8 (llama-tp8) and 4.
DIVISIBLE = {"llama-tp8": small("llama", num_heads=8, num_kv_heads=8, head_dim=8,
                                vocab_size=256),
             "qwen2-g2-tp4": small("qwen2", num_heads=8, num_kv_heads=4, head_dim=8,
                                   vocab_size=256)}
ALL = {**CONFIGS, **DIVISIBLE}
# (config, mesh) pairs: every family, GQA with kv heads split, tied and untied heads split
# on the vocabulary, rows split, on every mesh shape, in 7 runs of 4 compiles. (Every config
# on every mesh passes too, in ten minutes: `compare` each.)
CASES = [("llama-tp8", (8, 1)), ("llama-tp8", (1, 8)), ("qwen2-g2-tp4", (2, 4)),
         ("neox-rot50-tied-seq", (2, 4))]


def test_on_eight_devices():
    if EIGHT:
        pytest.skip("already on 8 devices")
    flag = "--xla_force_host_platform_device_count=8"
    assert flag not in os.environ.get("XLA_FLAGS", ""), f"{flag} gave {jax.device_count()}"
    flags = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", __file__], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed, 1 skipped" in done.stdout, done.stdout[-2000:]  # skipped: this launcher


def test_cli_mesh_must_fit_the_devices():
    result = CliRunner().invoke(app, ["map", "--mesh", "3x3"])
    assert result.exit_code == 2
    assert f"a 3x3 mesh needs 9 devices; {jax.device_count()} are available" in result.output
    result = CliRunner().invoke(app, ["generate", "--mesh", "2by4"])
    assert result.exit_code == 2 and "'2by4' must look like DATAxMODEL" in result.output


def outputs(model: Model):
    """Greedy tokens of 8 ragged prompts, the Markov map of a prompt (chunks of 64 rows), and
    the logits of 8 rows of 3 tokens after that prompt's prefix."""
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, V, n) for n in range(5, 13)]
    prompt = rng.integers(0, V, 12)
    prefix = prefill(model, prompt)
    suffixes = rng.integers(0, V, (8, 3))
    positions = np.broadcast_to(np.arange(12, 15, dtype=np.int32), (8, 3))
    return dict(tokens=np.asarray(generate(model, prompts, 4).tokens),
                map=markov_map(model, prompt, chunk=64, prefix=prefix, progress=False),
                logits=step(model, prefix, suffixes, positions)[0], prefix=prefix)


@functools.cache
def single_device(name: str) -> tuple[Model, dict]:
    model = random_model(ALL[name], seed=3)
    return model, outputs(model)


def compare(name: str, shape: tuple[int, int]) -> tuple[float, float]:
    """Run `name` on a mesh of `shape` against one device: the tokens and maps must be
    identical and the arrays sharded by the rules. Returns the largest logit and margin
    differences, relative to the largest logit (sums split over "model" add in another
    order)."""
    model, one = single_device(name)
    mesh = make_mesh(*shape)
    got = outputs(Model(model.config, place(model.params, param_axes(model.config), mesh)))
    np.testing.assert_array_equal(got["tokens"], one["tokens"])
    np.testing.assert_array_equal(got["map"].next, one["map"].next)
    # the shared prefix is split by kv head, the logits by row (and vocabulary)
    key, logits = got["prefix"].k[0], got["logits"]
    for x, axes in ((key, PREFIX_KEY_AXES), (logits, ("batch", "seq", "vocab"))):
        assert x.sharding.is_equivalent_to(
            NamedSharding(mesh, spec(x.shape, axes, mesh.shape)), x.ndim)
    scale = float(np.abs(np.asarray(one["logits"])).max())
    return (float(np.abs(np.asarray(logits) - np.asarray(one["logits"])).max()) / scale,
            float(np.abs(got["map"].margin - one["map"].margin).max()) / scale)


@on_eight
@pytest.mark.parametrize("name, shape", CASES)
def test_sharded_runs_match_one_device(name, shape):
    assert max(compare(name, shape)) <= 1e-5


@on_eight
def test_load_hf_places_each_parameter_on_the_mesh(tmp_path):
    cfg = DIVISIBLE["qwen2-g2-tp4"]
    model = random_model(cfg, seed=4)
    save_hf(model, tmp_path / "ckpt")
    mesh = make_mesh(2, 4)
    loaded = load_hf(tmp_path / "ckpt", mesh=mesh)
    assert loaded.digest == model.digest
    attn = loaded.params["blocks_0"]["attn"]
    assert attn["q"]["kernel"].sharding.spec == P("model", None, None)  # output heads
    assert attn["o"]["kernel"].sharding.spec == P(None, "model", None)  # input heads
    assert loaded.params["blocks_0"]["mlp"]["down"]["kernel"].sharding.spec == P(None, "model")
    assert loaded.params["embed"]["embedding"].sharding.spec == P("model", None)  # vocabulary
    assert load(str(tmp_path / "ckpt"), mesh=mesh).digest == model.digest

