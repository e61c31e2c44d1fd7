"""Spec loading and validation: YAML (with marks) -> typed, frozen model."""

from .errors import Problem, SpecError
from .model import IoBackend, Spec, SpecBody, ThreadingModel
from .validate import load_spec, load_specs, spec_paths

__all__ = [
    "IoBackend",
    "Problem",
    "Spec",
    "SpecBody",
    "SpecError",
    "ThreadingModel",
    "load_spec",
    "load_specs",
    "spec_paths",
]
