"""Decoding as a dynamical system: Markov maps of a prompt (markov), the smallest memory that
explains each step of a trace (memory), periodicity of traces
(traces), orbits of maps (orbits), classes and absorption of kernels (kernels) and their
stationary laws (stationary), the random-mapping null (nullmodel), and traces against maps
(compare)."""

from dynsys.dynamics.compare import Comparison, SampledFit, compare, compare_sampled
from dynsys.dynamics.kernels import (
    KernelClasses,
    absorption_probabilities,
    absorption_times,
    kernel_classes,
)
from dynsys.dynamics.markov import MarkovMap, lazy_orbit, markov_map, suffix_map
from dynsys.dynamics.memory import Memory, step_memory
from dynsys.dynamics.nullmodel import (
    compare_to_null,
    indegree_shuffle,
    random_mapping,
    random_mapping_expectations,
)
from dynsys.dynamics.orbits import Orbits, check_map, orbit_graph, orbit_of, orbits
from dynsys.dynamics.stationary import stationary_distributions
from dynsys.dynamics.traces import Periodicity, periodicity, periodicity_batch

__all__ = ["Comparison", "KernelClasses", "MarkovMap", "Memory", "Orbits", "Periodicity",
           "SampledFit", "absorption_probabilities", "absorption_times", "check_map", "compare",
           "compare_sampled", "compare_to_null", "indegree_shuffle", "kernel_classes", "lazy_orbit",
           "markov_map", "orbit_graph", "orbit_of", "orbits", "periodicity", "periodicity_batch",
           "random_mapping", "random_mapping_expectations", "stationary_distributions",
           "step_memory", "suffix_map"]
