"""dynsys.testbeds: named, registered test beds — a data source with known answers where it
has them (in-context Markov chains and their Bayes-optimal predictor; long documents for the
long-context RoPE and NoPE twins), a model and a training at each scale — trained by
`train_testbed` and named by `resolve("NAME@CHECKPOINT")`."""

from dynsys.testbeds.language import DocumentSource
from dynsys.testbeds.markov import (
    MarkovSource,
    bayes_losses,
    bayes_map,
    bayes_predictive,
    bayes_trace,
    counts,
    sample,
)
from dynsys.testbeds.registry import (
    REGISTRY,
    ROOT,
    TESTBEDS,
    LanguageScale,
    MarkovScale,
    Recipe,
    Scale,
    Source,
    Testbed,
    TestbedSummary,
    read_registry,
    recipe,
    resolve,
    summary_rows,
    train_testbed,
)
from dynsys.testbeds.report import TestbedReport, checkpointed, report_rows, testbed_report

__all__ = [
    "REGISTRY", "ROOT", "TESTBEDS", "DocumentSource", "LanguageScale", "MarkovScale",
    "MarkovSource", "Recipe", "Scale", "Source", "Testbed", "TestbedReport", "TestbedSummary",
    "bayes_losses", "bayes_map", "bayes_predictive", "bayes_trace", "checkpointed", "counts",
    "read_registry", "recipe", "report_rows", "resolve", "sample", "summary_rows",
    "testbed_report", "train_testbed",
]
