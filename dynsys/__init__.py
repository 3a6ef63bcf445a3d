"""dynsys: greedy decoding of decoder-only transformers as a dynamical system on token ids."""

from dynsys import bounds, dilution, prompts, traces
from dynsys.bounds import Certificate, certify, uniform_bound, weight_constants
from dynsys.cache import Prefix, RowCache, empty_rows
from dynsys.checks import NonFiniteError
from dynsys.config import PRESETS, Llama3Scaling, ModelConfig, from_hf_config, preset, to_hf_config
from dynsys.decode import forward, generate, prefill, sequence_logits, step
from dynsys.dilution import Drift, Probe, position_drift, probe_trace
from dynsys.compare import Comparison, SampledFit, compare, compare_sampled
from dynsys.kernels import (absorption_probabilities, absorption_times, kernel_classes,
                            stationary_distributions)
from dynsys.markov import MarkovMap, lazy_orbit, markov_map, suffix_map
from dynsys.model import Model, init_params
from dynsys.nullmodel import (compare_to_null, indegree_shuffle, random_mapping,
                              random_mapping_expectations)
from dynsys.orbits import Orbits, orbit_graph, orbit_of, orbits
from dynsys.sampling import GREEDY, Sampler
from dynsys.traces import Periodicity, periodicity, periodicity_batch
from dynsys.weights import load, load_hf, save_hf

__all__ = [
    "GREEDY", "PRESETS", "Certificate", "Comparison", "Drift", "Llama3Scaling", "MarkovMap",
    "Model", "ModelConfig", "NonFiniteError", "Orbits", "Periodicity", "Prefix", "Probe",
    "RowCache", "SampledFit",
    "Sampler", "absorption_probabilities", "absorption_times", "bounds", "certify", "compare",
    "compare_sampled", "compare_to_null", "dilution", "empty_rows", "forward", "from_hf_config",
    "generate", "indegree_shuffle", "init_params", "kernel_classes", "lazy_orbit", "load",
    "load_hf", "markov_map", "orbit_graph", "orbit_of", "orbits", "periodicity",
    "periodicity_batch", "position_drift", "prefill", "preset", "probe_trace", "prompts",
    "random_mapping", "random_mapping_expectations", "save_hf", "sequence_logits",
    "stationary_distributions", "step",
    "suffix_map", "to_hf_config", "traces", "uniform_bound", "weight_constants",
]
