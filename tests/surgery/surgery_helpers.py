"""Shared by the surgery tests: the tiny GELU model's config (its fixtures are in
surgery_fixtures), edit trees of the structures the instruments use, and a model with a
planted loop neuron."""

import jax.numpy as jnp
import numpy as np
from conftest import CONFIGS

from dynsys.nn import Model, norm_layer
from dynsys.nn.sites import edits

CFG = CONFIGS["neox-rot25"]  # GELU MLP and biases: a branch is removed by zeroing weights
G = 16
BOTH = ("attn_out", "mlp_out")
PLANT_TOKEN, PLANT_NEURON = 42, 7


def identity_tree():
    """Identity edits of the same structure as the sweep's: the same compiled program."""
    return edits({(c, i): {"scale": 1.0, "shift": np.zeros(CFG.hidden_size, np.float32)}
                  for c in BOTH for i in range(CFG.num_layers)}, CFG.num_layers)


def with_params(model, changes):
    """The model with params[block][module][name] replaced."""
    new = model.copy()
    for (block, module, name), value in changes.items():
        new.params[block][module][name] = value
    return new


def scaled(neuron, factor):
    """Edits scaling one mlp_hidden neuron by `factor` (the structure confirm uses)."""
    scales = np.ones((CFG.num_layers, CFG.intermediate_size), np.float32)
    scales[neuron] = factor
    return edits({("mlp_hidden", i): {"scale": scales[i], "shift": 0.0}
                  for i in range(CFG.num_layers)}, CFG.num_layers)


def plant(model):
    """Neuron 7 of layer 0 fires on token 42 alone (its up row is the normalised input of 42,
    bias −8) and its down column pushes 42's logit: a self-sustaining unigram loop."""
    p = model.copy().params
    x = norm_layer(CFG).apply({"params": p["blocks_0"]["norm2"]},
                              p["embed"]["embedding"][PLANT_TOKEN])
    mlp = p["blocks_0"]["mlp"]
    mlp["up"] = {"kernel": mlp["up"]["kernel"].at[PLANT_NEURON].set(2 * x / jnp.linalg.norm(x)),
                 "bias": mlp["up"]["bias"].at[PLANT_NEURON].set(-8.0)}
    push = p["lm_head"]["kernel"][PLANT_TOKEN] * p["final_norm"]["scale"]
    push = push - push.mean()
    mlp["down"] = {"kernel": mlp["down"]["kernel"].at[:, PLANT_NEURON].set(
        5 * push / jnp.linalg.norm(push)), "bias": mlp["down"]["bias"]}
    return Model(CFG, p)
