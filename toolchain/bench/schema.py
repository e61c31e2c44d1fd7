"""JSON Schema of results.json (schema_version 1); docs/bench.md explains each field."""

from __future__ import annotations

from typing import Any

_NUM = {"type": "number"}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_METRIC_KEYS = [
    "iops",
    "mib_s",
    "lat_p50_us",
    "lat_p99_us",
    "lat_p99_99_us",
    "cpu_s_per_mreq",
    "peak_rss_mib",
    "kicks_per_io",
    "interrupts_per_io",
]
_METRICS = {
    "type": "object",
    "properties": {k: _NUM for k in _METRIC_KEYS},
    "additionalProperties": False,
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


_RUN = {
    "type": "object",
    "properties": {
        "backend": _STR,
        "job": _STR,
        "index": _INT,
        "ok": {"type": "boolean"},
        "error": _STR,
        "exit_code": {"type": ["integer", "null"]},
        "backend_comm": _STR,
        "loadgen_command": _STR,
        "backend_cpu_s": _NUM,
        "peak_rss_kib": _INT,
        "iops": _NUM,
        "mib_s": _NUM,
        "lat_p50_us": _NUM,
        "lat_p99_us": _NUM,
        "lat_p99_99_us": _NUM,
        "lat_max_us": _NUM,
        "ios": _INT,
        "total_ios": _INT,
        "errors": _INT,
        "cpu_s_per_mreq": _NUM,
        "kicks_per_io": _NUM,
        "interrupts_per_io": _NUM,
        "client_cpu_s": _NUM,
        "loadgen": {"type": "object"},
    },
    "required": ["backend", "job", "index", "ok", "exit_code"],
    "additionalProperties": False,
    "if": {"properties": {"ok": {"const": True}}},
    "then": {
        "required": [
            "backend_cpu_s",
            "peak_rss_kib",
            "iops",
            "mib_s",
            "lat_p50_us",
            "lat_p99_us",
            "lat_p99_99_us",
            "cpu_s_per_mreq",
            "kicks_per_io",
            "interrupts_per_io",
            "loadgen",
        ]
    },
    "else": {"required": ["error"]},
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "hvisor-blkgen benchmark results",
    **_obj(
        {
            "schema_version": {"const": 1},
            "created": _STR,
            "command": _STR,
            "machine": _obj(
                {
                    "cpu_model": _STR,
                    "cores": _INT,
                    "kernel": _STR,
                    "machine": _STR,
                    "load_avg_start": {"type": "array", "items": _NUM, "minItems": 3},
                    "load_avg_end": {"type": "array", "items": _NUM, "minItems": 3},
                }
            ),
            "settings": _obj(
                {
                    "target": _STR,
                    "transport": {"enum": ["vhost-user", "hvisor"]},
                    "runs": {"type": "integer", "minimum": 1},
                    "seconds": _NUM,
                    "warmup_s": _NUM,
                    "image_bytes": _INT,
                    "image_dir": _STR,
                    "placement": _obj(
                        {"pinned": {"type": "boolean"}, "backend_cpus": _STR, "client_cpus": _STR}
                    ),
                    "order": _STR,
                }
            ),
            "memcpy": _obj({"block_bytes": _INT, "mib_s": _NUM, "gib_s": _NUM}),
            "backends": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "role": _STR,
                        "kind": {"enum": ["spec", "peer", "upstream", "daemon"]},
                        "num_queues": {"type": ["integer", "null"]},
                        "binary": _STR,
                        "spec": _STR,
                        "hvisor_tool_revision": _STR,
                    }
                ),
            },
            "jobs": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "rw": {"enum": ["read", "write", "randread", "randwrite", "randrw"]},
                        "bs": _INT,
                        "qd": _INT,
                        "queues": _INT,
                        "rwmixread": _INT,
                        "mode": {"enum": ["interrupt", "poll"]},
                        "event_idx": {"type": "boolean"},
                    }
                ),
            },
            "runs": {"type": "array", "items": _RUN},
            "skipped": {
                "type": "array",
                "items": _obj({"backend": _STR, "job": _STR, "reason": _STR}),
            },
            "summary": {
                "type": "array",
                "items": _obj(
                    {
                        "job": _STR,
                        "backend": _STR,
                        "runs": _INT,
                        "ok_runs": _INT,
                        "median": _METRICS,
                        "min": _METRICS,
                        "max": _METRICS,
                        "memcpy_fraction": {"type": ["number", "null"]},
                    }
                ),
            },
            "comparisons": {
                "type": "array",
                "items": _obj({"job": _STR, "baseline": _STR, "other": _STR, "ratios": _METRICS}),
            },
            "seed_comparisons": {
                "type": "array",
                "items": _obj(
                    {
                        "what": _STR,
                        "job": _STR,
                        "baseline": _STR,
                        "other": _STR,
                        "ratios": {
                            "type": "object",
                            "additionalProperties": _obj(
                                {
                                    "median": _NUM,
                                    "low": _NUM,
                                    "high": _NUM,
                                    "within_noise": {"type": "boolean"},
                                }
                            ),
                        },
                    }
                ),
            },
        }
    ),
}
