"""dynsys: greedy decoding of decoder-only transformers as a dynamical system on token ids.

The package reads top-down as the data flows: config -> nn (the model) -> decode (the
engine) -> dynamics (maps, traces, orbits, kernels) and theory (dilution, bounds) ->
studies (the experiments) -> cli; io, data and train bring checkpoints, text and trained
models in, and surgery edits a model's weights. The names below are re-exported lazily:
`import dynsys` loads none of them.
"""

import importlib

# The distribution's name on the package index (`pip install dynsys-lm`; "dynsys" there is an
# unrelated project); the import name is dynsys. importlib.metadata knows it by this name.
DISTRIBUTION = "dynsys-lm"

_EXPORTS = {
    "dynsys.config": ("PRESETS", "Llama3Scaling", "ModelConfig", "from_hf_config", "preset",
                      "to_hf_config"),
    "dynsys.nn": ("Model", "Prefix", "RowCache", "edits", "empty_rows", "init_params",
                  "param_axes"),
    "dynsys.checks": ("NonFiniteError",),
    "dynsys.decode": ("GREEDY", "Sampler", "forward", "generate", "prefill", "sequence_logits",
                      "step"),
    "dynsys.io": ("load", "load_hf", "save_hf"),
    "dynsys.dynamics": ("Comparison", "MarkovMap", "Orbits", "Periodicity", "SampledFit",
                        "compare", "compare_sampled", "compare_to_null", "indegree_shuffle",
                        "lazy_orbit", "markov_map", "orbit_graph", "orbit_of", "orbits",
                        "periodicity", "periodicity_batch", "random_mapping",
                        "random_mapping_expectations", "suffix_map"),
    "dynsys.dynamics.kernels": ("absorption_probabilities", "absorption_times",
                                "kernel_classes"),
    "dynsys.dynamics.stationary": ("stationary_distributions",),
    "dynsys.theory": ("Certificate", "Drift", "Probe", "certify", "position_drift",
                      "probe_trace", "uniform_bound", "weight_constants"),
    "dynsys.surgery": ("NeuronEdit", "ablation_sweep", "apply_edit", "confirm", "judge",
                       "neuron_attribution", "save_edited"),
}
_MODULES = {"prompts": "dynsys.data.prompts", "traces": "dynsys.dynamics.traces",
            **{name: f"dynsys.{name}" for name in ("config", "nn", "decode", "io", "data",
                                                   "dynamics", "theory", "stats", "train",
                                                   "studies", "surgery")}}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_WHERE, *_MODULES])  # noqa: PLE0605 (the lazy tables above are the list)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'dynsys' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
