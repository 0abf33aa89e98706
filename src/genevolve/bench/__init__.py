"""Benchmarking: dataset loaders, the resumable agent -> render -> judge runner, KScore/WiScore
summaries and the HTML report. See genevolve.bench.runner for the run folder layout."""

from genevolve.bench.datasets import BenchItem, Dataset, DatasetError, load_dataset
from genevolve.bench.runner import Backends, BenchRun
from genevolve.bench.summary import kscore_table, summarize, write_summary

__all__ = ["Backends", "BenchItem", "BenchRun", "Dataset", "DatasetError", "kscore_table", "load_dataset",
           "summarize", "write_summary"]
