"""Every spec rule has a tiny bad spec and its exact expected message.

So has every way a template can break (tests/spec_errors/templates/: each
case stands in for virtio_blk.h.j2 in a scratch copy of templates/), and
every mistake on invoke's command line or in its environment
(tests/spec_errors/cli/: the exact stderr of `python3 -m invoke ...`).

Run `pytest tests/test_spec_errors.py --update-golden` to rewrite the .err
files after an intended change of wording, then review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain import cli
from toolchain.render import TemplateError, render_spec
from toolchain.spec import SpecError, load_spec

CASES = Path(__file__).parent / "spec_errors"
BAD_SPECS = sorted(CASES.glob("*.yaml"))
BAD_TEMPLATES = sorted((CASES / "templates").glob("*.j2"))


def check_golden(got: str, expected: Path, update: bool) -> None:
    """got must equal the golden file expected (rewritten instead when update)."""
    if update:
        expected.write_text(got)
    assert expected.is_file(), f"no golden file {expected.name}; run with --update-golden"
    assert got == expected.read_text()


@pytest.mark.parametrize("bad", BAD_SPECS, ids=[p.stem for p in BAD_SPECS])
def test_bad_spec_is_refused_with_the_expected_message(
    bad: Path, root: Path, update_golden: bool
) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(bad, root)
    check_golden(str(info.value) + "\n", bad.with_suffix(".err"), update_golden)


@pytest.mark.parametrize("bad", BAD_TEMPLATES, ids=[p.stem for p in BAD_TEMPLATES])
def test_broken_template_is_reported_as_template_line_and_message(
    bad: Path, root: Path, tmp_path: Path, update_golden: bool
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(root / "templates", templates)
    shutil.copyfile(bad, templates / "virtio_blk.h.j2")
    with pytest.raises(TemplateError) as info:
        render_spec(load_spec(root / "spec" / "virtio-blk.yaml", root), templates)
    check_golden(str(info.value) + "\n", bad.with_suffix(".err"), update_golden)


def test_every_golden_file_has_its_case() -> None:
    orphans = [e.name for e in CASES.glob("*.err") if not e.with_suffix(".yaml").is_file()]
    orphans += [
        e.name for e in (CASES / "templates").glob("*.err") if not e.with_suffix(".j2").is_file()
    ]
    assert orphans == []


def test_errors_name_file_line_col_and_key_path(root: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(CASES / "bad_threading_model.yaml", root)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.col) == (
        "tests/spec_errors/bad_threading_model.yaml",
        2,
        10,
    )
    assert problem.key == "threading.model"
    assert "(did you mean 'worker-drain'?)" in problem.message


def test_all_problems_of_a_spec_are_reported_together(root: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(CASES / "every_error_at_once.yaml", root)
    keys = [p.key for p in info.value.problems]
    assert keys == ["device.queue_size", "device.serail", "threading.model", "features.flush"]


def test_invoke_gen_on_a_bad_spec_exits_1_without_a_traceback(root: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "gen",
            "--check",
            "--spec",
            str(CASES / "unknown_key.yaml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "device.serail: unknown key 'serail'" in proc.stderr


def test_unknown_spec_name_suggests_the_near_miss(root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "gen", "--check", "--spec", "virtio-blc"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "did you mean 'virtio-blk'?" in proc.stderr


# Runs tasks.py as `python3 -m invoke` does, after patching the toolchain:
# what CLI_PRELUDE_<name> in the environment names happens inside the task.
CLI_PRELUDE = """
import os, signal, sys, time
from pathlib import Path
from toolchain import project
if os.environ.get("CLI_PRELUDE_SIGINT"):
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does, while the task runs
        time.sleep(30)
    project.generate = interrupted
if os.environ.get("CLI_PRELUDE_TEMPLATES"):
    project.Layout.template_dir = property(
        lambda self: Path(os.environ["CLI_PRELUDE_TEMPLATES"])
    )
from invoke.main import program
program.run(["invoke", *sys.argv[1:]])
"""


def run_invoke(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    prelude: bool = False,
    stdout: int = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """`python3 -m invoke ARGS` in the project, with no INVOKE_* settings but env's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    command = [sys.executable, "-c", CLI_PRELUDE] if prelude else [sys.executable, "-m", "invoke"]
    return subprocess.run(
        [*command, *args],
        cwd=root,
        env={**clean, **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


CLI_CASES = {
    # a non-number for a numeric option: int and float options alike
    "fuzz_seconds_not_a_number": (["fuzz", "--seconds", "abc"], {}),
    "fuzz_jobs_not_an_integer": (["fuzz", "--jobs", "1.5"], {}),
    "hvisor_jobs_not_a_number": (["hvisor", "--jobs", "x"], {}),
    "bench_seconds_not_a_number": (["bench", "--seconds", "ten"], {}),
    # a number setting in the environment that is not one
    "env_fuzz_seconds_not_a_number": (["gen", "--check"], {"INVOKE_BLKGEN_FUZZ_SECONDS": "ten"}),
    # a misspelt key in a settings file (~/.invoke.yaml, -f FILE): named, with the near miss
    "config_unknown_setting": (
        ["gen", "--check"],
        {"INVOKE_RUNTIME_CONFIG": "tests/spec_errors/cli/unknown_setting.yaml"},
    ),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_a_mistake_on_the_command_line_exits_1_with_one_line(
    case: str, root: Path, update_golden: bool
) -> None:
    args, env = CLI_CASES[case]
    proc = run_invoke(root, *args, env=env)
    assert proc.returncode == 1, proc.stderr
    check_golden(proc.stderr, CASES / "cli" / f"{case}.err", update_golden)


def test_every_cli_golden_file_has_its_case() -> None:
    assert sorted(e.stem for e in (CASES / "cli").glob("*.err")) == sorted(CLI_CASES)


def test_a_list_setting_in_the_environment_is_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = cli.Config()
    config.load_collection({"blkgen": {"targets": ["rk3588"], "flash": {"ssh_options": ["A=1"]}}})
    monkeypatch.setenv("INVOKE_BLKGEN_TARGETS", " host , host-asan,")
    monkeypatch.setenv("INVOKE_BLKGEN_FLASH_SSH_OPTIONS", "")
    config.load_shell_env()
    assert config.blkgen.targets == ["host", "host-asan"]
    assert config.blkgen.flash.ssh_options == []


def test_invoke_accepts_a_list_setting_from_the_environment(root: Path) -> None:
    proc = run_invoke(root, "gen", "--check", env={"INVOKE_BLKGEN_TARGETS": "host"})
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_broken_template_fails_invoke_gen_with_template_and_line(
    root: Path, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(root / "templates", templates)
    shutil.copyfile(CASES / "templates" / "undefined_attribute.j2", templates / "virtio_blk.h.j2")
    proc = run_invoke(
        root,
        "gen",
        "--check",
        "--spec",
        "virtio-blk",
        prelude=True,
        env={"CLI_PRELUDE_TEMPLATES": str(templates)},
    )
    expected = (CASES / "templates" / "undefined_attribute.err").read_text()
    assert (proc.returncode, proc.stderr) == (1, f"error: {expected}")


def test_ctrl_c_in_a_task_exits_130_saying_interrupted(root: Path) -> None:
    proc = run_invoke(root, "gen", "--check", prelude=True, env={"CLI_PRELUDE_SIGINT": "1"})
    assert (proc.returncode, proc.stderr) == (cli.INTERRUPTED, "interrupted\n")


def test_output_into_a_closed_pipe_ends_quietly(root: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as after `| head -0`
    try:
        proc = run_invoke(root, "gen", "--check", stdout=write_end)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (cli.BROKEN_PIPE, "")


def test_invoke_list_into_a_closed_pipe_ends_quietly(root: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # invoke's own output: no task, no Executor runs
    try:
        proc = run_invoke(root, "--list", stdout=write_end)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (cli.BROKEN_PIPE, "")


def test_the_readme_sample_error_is_what_the_loader_prints() -> None:
    """README's sample is the golden readme_example.err, named as spec/mine.yaml."""
    readme = (CASES.parent.parent / "README.md").read_text()
    golden = (CASES / "readme_example.err").read_text()
    sample = golden.replace("tests/spec_errors/readme_example.yaml", "spec/mine.yaml")
    assert f"```\n{sample}```" in readme
