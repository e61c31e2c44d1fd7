"""`invoke show` (a spec's effective model) and `invoke gen --diff` (what an edit would change)."""

from __future__ import annotations

from pathlib import Path

import yaml

from toolchain.spec import load_spec

from .test_spec_path import _invoke, _snapshot, scratch  # noqa: F401 - scratch is a fixture

ROOT = Path(__file__).resolve().parent.parent


def _show(repo: Path, *args: str) -> str:
    proc = _invoke(repo, "show", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_effective_spec_loads_to_the_same_model(tmp_path: Path) -> None:
    for name in ("read-only", "per-queue", "procq"):
        out = _show(ROOT, "--spec", name)
        body = "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))
        (tmp_path / f"{name}.yaml").write_text(body)
        effective = load_spec(tmp_path / f"{name}.yaml", tmp_path)
        shipped = load_spec(ROOT / "spec" / f"{name}.yaml", ROOT)
        assert effective.sha256 == shipped.sha256, name
        assert f"(model sha256 {shipped.sha256[:16]})" in out.splitlines()[0]
        # every key is written out, defaults included, or named as not applicable
        written = set(yaml.safe_load(body)["threading"])
        left_out = {
            line.split(": ", 1)[1].split(" ", 1)[0].removeprefix("threading.")
            for line in out.splitlines()
            if line.startswith("# not applicable here: threading.")
        }
        assert written | left_out == set(type(shipped.body.threading).model_fields), name
        assert not written & left_out


def test_show_names_the_features_and_every_key_that_differs_from_the_default() -> None:
    out = _show(ROOT, "--spec", "read-only").splitlines()
    assert (
        "# offered: VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO, "
        "VIRTIO_F_VERSION_1 (feature bits 0x100000026)"
    ) in out
    start = out.index("# against virtio-blk (hvisor-tool HEAD's device): 5 keys differ")
    assert out[start + 1 :] == [
        "#   device.serial: hvisor-ro (virtio-blk: hvisor-virblk)",
        "#   features.flush: false (virtio-blk: true)",
        "#   features.ro: true (virtio-blk: false)",
        "#   threading.irq: adaptive (virtio-blk: per-batch)",
        "#   backend.split_threads: 2 (virtio-blk: 1)",
    ]
    default = _show(ROOT).splitlines()
    assert default[-1] == "# this is virtio-blk, hvisor-tool HEAD's device"


def test_gen_diff_prints_what_an_edit_changes_and_writes_nothing(scratch: Path) -> None:  # noqa: F811
    proc = _invoke(scratch, "gen", "--diff")
    assert (proc.returncode, proc.stdout) == (0, "no change: generated files match the specs\n")
    spec = scratch / "spec" / "procq.yaml"
    spec.write_text(spec.read_text().replace("serial: hvisor-virblk", "serial: edited-blk"))
    before = _snapshot(scratch / "generated")
    proc = _invoke(scratch, "gen", "--diff", "--spec", "procq")
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(scratch / "generated") == before
    lines = proc.stdout.splitlines()
    assert "--- a/generated/procq/manifest.json" in lines
    assert '+  "serial": "edited-blk",' in lines
    assert '-  "serial": "hvisor-virblk",' in lines
    assert "+++ b/generated/procq/virtio_blk.h" in lines  # the banner's hash changed
    assert not [x for x in lines if x.startswith("+++ ") and "/procq/" not in x]
    # what gen then writes is exactly that diff
    assert _invoke(scratch, "gen", "--spec", "procq").returncode == 0
    again = _invoke(scratch, "gen", "--diff", "--spec", "procq")
    assert again.stdout == "no change: generated files match the specs\n"
