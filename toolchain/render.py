"""Rendering: a pure function from a validated Spec to {relative path: text}.

One top-level template per output file, named after it. C output is passed
through clang-format 14 with hvisor-tool's settings, so what is committed is
exactly what hvisor-tool's style check accepts.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import jinja2

from .spec import Spec
from .tools import require, run_filter

# The ABI shared by generated devices and the standalone runtime (its
# virtio.h defines HVISOR_STANDALONE_RUNTIME_ABI); bump both together.
RUNTIME_ABI = 1

# hvisor-tool's .clang-format, verbatim in meaning.
CLANG_FORMAT_STYLE = "{BasedOnStyle: LLVM, IndentWidth: 4, TabWidth: 4, UseTab: Never}"

# output file -> template; C files are formatted.
OUTPUTS: dict[str, str] = {
    "virtio_blk.h": "virtio_blk.h.j2",
    "virtio_blk.c": "virtio_blk.c.j2",
}


class TemplateError(Exception):
    """A template that does not render: template:line: what went wrong.

    The template is named relative to the template directory's parent
    (templates/virtio_blk.c.j2), so messages never carry a machine's path.
    """

    def __init__(self, template: str, line: int | None, message: str, spec: str) -> None:
        self.template = template
        self.line = line
        self.message = message
        self.spec = spec
        where = template if line is None else f"{template}:{line}"
        super().__init__(f"{where}: {message} (rendering spec '{spec}')")


def _template_error(exc: Exception, template_dir: Path, spec: str) -> TemplateError | None:
    """Where in the templates exc was raised (the innermost template frame), or None.

    Jinja rewrites tracebacks so that a template's frames name the template
    file and line; a syntax error carries them itself.
    """
    root = template_dir.resolve()
    if isinstance(exc, jinja2.TemplateSyntaxError):
        name, line = exc.name or exc.filename or "?", exc.lineno
        message = exc.message or "syntax error"
    else:
        frames = [
            (path, f.lineno)
            for f in traceback.extract_tb(exc.__traceback__)
            if (path := Path(f.filename).resolve()).is_relative_to(root)
        ]
        if not frames:
            return None
        name = frames[-1][0].relative_to(root).as_posix()
        line = frames[-1][1]
        if isinstance(exc, jinja2.TemplateNotFound):
            message = f"template '{exc.name}' not found"
        elif isinstance(exc, jinja2.TemplateError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
    return TemplateError(f"{template_dir.name}/{name}", line, message, spec)


def environment(template_dir: Path) -> jinja2.Environment:
    """The one Jinja environment: strict, whitespace-tidy, no autoescape (C)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def clang_format(text: str, filename: str) -> str:
    """Format C source with hvisor-tool's style."""
    exe = require("clang-format-14")
    return run_filter([exe, f"--style={CLANG_FORMAT_STYLE}", f"--assume-filename={filename}"], text)


def manifest(spec: Spec) -> str:
    """Machine-readable facts about a generated device (for tests and flash)."""
    data = {
        "spec": spec.name,
        "source": spec.source,
        "sha256": spec.sha256,
        "runtime_abi": RUNTIME_ABI,
        "features": spec.feature_macros,
        "feature_mask": spec.feature_mask,
        "num_queues": spec.device.num_queues,
        "queue_size": spec.device.queue_size,
        "seg_max": spec.device.seg_max,
        "size_max": spec.device.size_max,
        "serial": spec.device.serial,
        "threading": spec.threading.model.value,
        "backend": spec.backend.io.value,
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_spec(spec: Spec, template_dir: Path) -> dict[str, str]:
    """Every file of generated/<spec>/, keyed by path relative to generated/.

    Raises TemplateError (template:line: message) when a template does not render.
    """
    env = environment(template_dir)
    context = {"spec": spec, "runtime_abi": RUNTIME_ABI}
    out: dict[str, str] = {}
    for name, template in OUTPUTS.items():
        try:
            text = env.get_template(template).render(context)
        except Exception as exc:  # a template's bug, or the model's (then re-raised)
            located = _template_error(exc, template_dir, spec.name)
            if located is None:
                raise
            raise located from None
        out[f"{spec.name}/{name}"] = clang_format(text, name)
    out[f"{spec.name}/manifest.json"] = manifest(spec)
    return out
