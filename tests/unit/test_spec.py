"""Session specs: every validation path, on real files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tffprod.errors import SpecError
from tffprod.sessions.spec import DPConfig, SessionSpec, dump_spec, load_spec

BASE = """\
name = "digits-dp"
task = "tffprod.examples.digits:task"
datasets = ["hospital-a/train", "hospital-b/train:2"]
rounds = 10
"""

FIXED = """
[dp]
mechanism = "gaussian_fixed"
noise_multiplier = 0.5
clip = 1.0
delta = 1e-5
"""

ADAPTIVE = """
[dp]
mechanism = "gaussian_adaptive"
noise_multiplier = 0.1
clip = 0.5
delta = 1e-5
"""


def write(tmp_path: Path, text: str, name: str = "session.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def spec_error(tmp_path: Path, text: str) -> str:
    """Loads ``text`` as a spec file and returns the one-line SpecError message."""
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# ------------------------------------------------------------------ valid specs


def test_minimal_spec_gets_defaults(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.name == "digits-dp"
    assert spec.task == "tffprod.examples.digits:task"
    assert spec.datasets == ("hospital-a/train", "hospital-b/train:2")
    assert spec.eval_datasets == ()
    assert (spec.rounds, spec.seed, spec.backend, spec.min_sites) == (10, 0, "local", 1)
    assert spec.round_timeout_s == 600.0
    assert spec.dp == DPConfig() and not spec.dp.enabled
    assert spec.source == str(tmp_path / "session.toml")
    assert spec.sites == ("hospital-a", "hospital-b")
    assert spec.clients_per_round == 2


def test_full_spec(tmp_path):
    text = BASE + """
eval_datasets = ["hospital-a/test"]
seed = 7
backend = "remote"
min_sites = 2
round_timeout_s = 30
""" + FIXED
    spec = load_spec(write(tmp_path, text))
    assert spec.eval_datasets == ("hospital-a/test",)
    assert (spec.seed, spec.backend, spec.min_sites) == (7, "remote", 2)
    assert spec.round_timeout_s == 30.0 and isinstance(spec.round_timeout_s, float)
    assert spec.dp == DPConfig("gaussian_fixed", noise_multiplier=0.5, clip=1.0, delta=1e-5)
    assert spec.dp.enabled
    assert spec.dp.to_dict() == {"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 1.0, "delta": 1e-5,
                                "on_budget": "refuse", "noise_placement": "coordinator", "secure_aggregation": False}


def test_adaptive_defaults(tmp_path):
    spec = load_spec(write(tmp_path, BASE + ADAPTIVE))
    assert spec.dp.target_quantile == 0.5
    assert spec.dp.learning_rate == 0.2
    assert spec.dp.to_dict()["target_quantile"] == 0.5


def test_int_accepted_where_float_expected(tmp_path):
    spec = load_spec(write(tmp_path, BASE + FIXED.replace("clip = 1.0", "clip = 2")))
    assert spec.dp.clip == 2.0 and isinstance(spec.dp.clip, float)


def test_dp_mechanism_none_table(tmp_path):
    spec = load_spec(write(tmp_path, BASE + '[dp]\nmechanism = "none"\n'))
    assert spec.dp == DPConfig() and spec.dp.to_dict() == {"mechanism": "none"}


def test_relative_task_file_resolves_against_spec_folder(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    spec = load_spec(write(folder, BASE.replace("tffprod.examples.digits:task", "models/my_task.py:task")))
    assert spec.task == f"{folder / 'models' / 'my_task.py'}:task"
    absolute = load_spec(write(folder, BASE.replace("tffprod.examples.digits:task", "/opt/t.py:task")))
    assert absolute.task == "/opt/t.py:task"
    # Without a source file, the path stays as written.
    data = tomllib.loads(BASE.replace("tffprod.examples.digits:task", "t.py:task"))
    assert SessionSpec.from_dict(data).task == "t.py:task"


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dp", ["", FIXED, ADAPTIVE, '[dp]\nmechanism = "none"\n'])
def test_dump_load_round_trip(tmp_path, dp):
    text = BASE + 'eval_datasets = ["hospital-a/test"]\nseed = 3\nround_timeout_s = 12.5\n' + dp
    spec = load_spec(write(tmp_path, text))
    out = tmp_path / "out" / "copy.toml"
    out.parent.mkdir()
    dump_spec(spec, out)
    again = load_spec(out)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert SessionSpec.from_dict(spec.to_dict()) == spec


def test_dump_escapes_strings(tmp_path):
    spec = SessionSpec(name="m", task='/we"ird\\dir\n\x7f\tü/t.py:task', datasets=("a/b",), rounds=1)
    dump_spec(spec, tmp_path / "s.toml")
    assert load_spec(tmp_path / "s.toml") == spec


def test_dump_keeps_relative_task_of_code_built_spec_pointing_at_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = SessionSpec(name="m", task="t.py:task", datasets=("a/b",), rounds=1)
    (tmp_path / "out").mkdir()
    dump_spec(spec, tmp_path / "out" / "s.toml")
    assert load_spec(tmp_path / "out" / "s.toml").task == f"{tmp_path / 't.py'}:task"


def test_direct_construction_validates():
    with pytest.raises(SpecError, match="'rounds'"):
        SessionSpec(name="m", task="m:t", datasets=["a/b"], rounds=0)
    with pytest.raises(SpecError, match="'dp.clip'"):
        DPConfig("gaussian_fixed", noise_multiplier=1.0, clip=-1.0, delta=1e-5)


# ------------------------------------------------------------------ files and TOML


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match=r"nope\.toml: cannot read spec"):
        load_spec(path)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path)


def test_invalid_toml(tmp_path):
    message = spec_error(tmp_path, 'name = "x"\nrounds = = 3\n')
    assert "invalid TOML" in message and "line 2" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "session.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)


# ------------------------------------------------------------------ top-level keys


def test_unknown_key_suggests(tmp_path):
    message = spec_error(tmp_path, BASE.replace("rounds", "roundz"))
    assert message.endswith("unknown key 'roundz' (did you mean 'rounds'?)")


def test_unknown_key_without_suggestion(tmp_path):
    assert "unknown key 'colour'" in spec_error(tmp_path, BASE + 'colour = "red"\n')


def test_dp_key_at_top_level_points_to_table(tmp_path):
    assert "did you mean '[dp] noise_multiplier'" in spec_error(tmp_path, BASE + "noise_multiplier = 1.0\n")


@pytest.mark.parametrize("key", ["name", "task", "datasets", "rounds"])
def test_missing_required_key(tmp_path, key):
    text = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith(key))
    assert f"missing required key {key!r}" in spec_error(tmp_path, text)


@pytest.mark.parametrize(
    "line, key, problem",
    [
        ("name = 3", "name", "must be a string"),
        ('name = "Digits"', "name", "lowercase"),
        ('name = "-x"', "name", "lowercase"),
        ("task = 1", "task", "must be a string"),
        ('task = "no_colon"', "task", "module:attribute"),
        ('task = "pkg.mod:"', "task", "module:attribute"),
        ('task = "bad module:task"', "task", "module:attribute"),
        ('task = "pkg:not-an-attr"', "task", "module:attribute"),
        ('datasets = "a/b"', "datasets", "must be an array"),
        ("datasets = []", "datasets", "at least one"),
        ('datasets = ["just-a-name"]', "datasets", "SITE/NAME"),
        ('datasets = ["a/b:latest"]', "datasets", "SITE/NAME"),
        ('datasets = ["a/b/c"]', "datasets", "SITE/NAME"),
        ("datasets = [1]", "datasets", "SITE/NAME"),
        ('datasets = ["a/b", "a/b"]', "datasets", "more than once"),
        ('datasets = ["a/b:1", "a/b:2"]', "datasets", "more than once"),
        ("rounds = 0", "rounds", "between 1 and 1000000"),
        ("rounds = 99999999999999999999", "rounds", "between 1 and 1000000"),
        ("rounds = 2.0", "rounds", "must be an integer"),
        ("rounds = true", "rounds", "must be an integer, got boolean"),
        ('rounds = "10"', "rounds", "must be an integer, got string"),
    ],
)
def test_bad_required_values(tmp_path, line, key, problem):
    lines = [line if existing.startswith(f"{key} ") else existing for existing in BASE.splitlines()]
    message = spec_error(tmp_path, "\n".join(lines) + "\n")
    assert repr(key) in message and problem in message


def test_a_huge_value_is_cut_short_in_the_message(tmp_path):
    lines = ["rounds = 1" + "0" * 400 if existing.startswith("rounds ") else existing for existing in BASE.splitlines()]
    message = spec_error(tmp_path, "\n".join(lines) + "\n")
    assert message.endswith("'rounds' must be an integer between 1 and 1000000, got " + "1" + "0" * 56 + "...")


@pytest.mark.parametrize(
    "line, key, problem",
    [
        ('eval_datasets = "a/b"', "eval_datasets", "must be an array"),
        ('eval_datasets = ["a"]', "eval_datasets", "SITE/NAME"),
        ('eval_datasets = ["a/t", "a/t:3"]', "eval_datasets", "more than once"),
        ("seed = -1", "seed", ">= 0"),
        ("seed = 1.5", "seed", "must be an integer"),
        ("seed = false", "seed", "must be an integer"),
        ('backend = "remot"', "backend", "did you mean 'remote'"),
        ("backend = 1", "backend", "must be a string"),
        ("min_sites = 0", "min_sites", ">= 1"),
        ("min_sites = 3", "min_sites", "span only 2 site(s)"),
        ('min_sites = "2"', "min_sites", "must be an integer"),
        ("round_timeout_s = 0", "round_timeout_s", "> 0"),
        ("round_timeout_s = -5.0", "round_timeout_s", "> 0"),
        ("round_timeout_s = inf", "round_timeout_s", "> 0"),
        ("round_timeout_s = nan", "round_timeout_s", "> 0"),
        ("round_timeout_s = true", "round_timeout_s", "must be a number, got boolean"),
        ('round_timeout_s = "60"', "round_timeout_s", "must be a number, got string"),
        ("dp = 1", "dp", "must be a table"),
    ],
)
def test_bad_optional_values(tmp_path, line, key, problem):
    message = spec_error(tmp_path, BASE + line + "\n")
    assert repr(key) in message and problem in message


def test_min_sites_counts_distinct_sites(tmp_path):
    text = BASE.replace('["hospital-a/train", "hospital-b/train:2"]', '["a/x", "a/y", "a/z"]')
    assert "span only 1 site(s)" in spec_error(tmp_path, text + "min_sites = 2\n")


# ------------------------------------------------------------------ [dp]


def dp_text(mechanism: str, **values: object) -> str:
    lines = ["[dp]", f'mechanism = "{mechanism}"'] + [f"{k} = {v}" for k, v in values.items()]
    return BASE + "\n".join(lines) + "\n"


FIXED_OK = {"noise_multiplier": 0.5, "clip": 1.0, "delta": 1e-5}


def test_dp_unknown_key(tmp_path):
    message = spec_error(tmp_path, dp_text("gaussian_fixed", **FIXED_OK, clipp=1.0))
    assert "unknown key 'dp.clipp'" in message and "did you mean 'clip'" in message


def test_dp_missing_mechanism(tmp_path):
    assert "missing required key 'dp.mechanism'" in spec_error(tmp_path, BASE + "[dp]\nclip = 1.0\n")


def test_dp_unknown_mechanism_suggests(tmp_path):
    message = spec_error(tmp_path, dp_text("gausian_fixed", **FIXED_OK))
    assert "'dp.mechanism'" in message and "did you mean 'gaussian_fixed'" in message


@pytest.mark.parametrize("mechanism", ["gaussian_fixed", "gaussian_adaptive"])
@pytest.mark.parametrize("key", ["noise_multiplier", "clip", "delta"])
def test_dp_missing_required(tmp_path, mechanism, key):
    values = {k: v for k, v in {"noise_multiplier": 0.1, "clip": 1.0, "delta": 1e-5}.items() if k != key}
    assert f"missing required key 'dp.{key}'" in spec_error(tmp_path, dp_text(mechanism, **values))


@pytest.mark.parametrize(
    "mechanism, key",
    [
        ("gaussian_fixed", "target_quantile"),
        ("gaussian_fixed", "learning_rate"),
        ("none", "noise_multiplier"),
        ("none", "clip"),
        ("none", "delta"),
    ],
)
def test_dp_key_of_another_mechanism(tmp_path, mechanism, key):
    values = dict(FIXED_OK) if mechanism != "none" else {}
    values[key] = 0.5
    message = spec_error(tmp_path, dp_text(mechanism, **values))
    assert f"'dp.{key}' does not apply to mechanism {mechanism!r}" in message


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("noise_multiplier", -0.1, ">= 0"),
        ("noise_multiplier", '"0.5"', "must be a number, got string"),
        ("noise_multiplier", "true", "must be a number, got boolean"),
        ("clip", 0, "> 0"),
        ("clip", -1.0, "> 0"),
        ("delta", 0, "between 0 and 1"),
        ("delta", 1, "between 0 and 1"),
        ("delta", 1.5, "between 0 and 1"),
        ("target_quantile", 0, "between 0 and 1"),
        ("target_quantile", 1.0, "between 0 and 1"),
        ("learning_rate", -0.2, ">= 0"),
    ],
)
def test_dp_bad_values(tmp_path, key, value, problem):
    values = {"noise_multiplier": 0.1, "clip": 1.0, "delta": 1e-5, key: value}
    message = spec_error(tmp_path, dp_text("gaussian_adaptive", **values))
    assert f"'dp.{key}'" in message and problem in message


@pytest.mark.parametrize("placement", ["coordinator", "distributed", "local"])
def test_dp_noise_placement(tmp_path, placement):
    text = dp_text("gaussian_fixed", noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_placement=f'"{placement}"')
    assert load_spec(write(tmp_path, text)).dp.noise_placement == placement


def test_dp_noise_placement_unknown(tmp_path):
    text = dp_text("gaussian_fixed", noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_placement='"sites"')
    message = spec_error(tmp_path, text)
    assert "'dp.noise_placement'" in message and "distributed" in message


def test_dp_noise_placement_needs_a_fixed_clip(tmp_path):
    text = dp_text("gaussian_adaptive", noise_multiplier=0.1, clip=1.0, delta=1e-5, noise_placement='"local"')
    message = spec_error(tmp_path, text)
    assert "'dp.noise_placement' does not apply to mechanism 'gaussian_adaptive'" in message


def test_model_noise_multiplier_by_placement(tmp_path):
    def spec(placement: str):
        text = dp_text("gaussian_fixed", noise_multiplier=1.2, clip=1.0, delta=1e-5, noise_placement=f'"{placement}"')
        return load_spec(write(tmp_path, text.replace("rounds = ", "min_sites = 2\nrounds = ", 1)))

    assert spec("coordinator").model_noise_multiplier == 1.2
    assert spec("distributed").model_noise_multiplier == 1.2
    assert spec("local").model_noise_multiplier == pytest.approx(1.2 * 2**0.5)


def test_secure_aggregation_needs_distributed_noise_and_three_sites(tmp_path):
    three = BASE.replace('datasets = ["hospital-a/train", "hospital-b/train:2"]',
                         'datasets = ["hospital-a/train", "hospital-b/train", "hospital-c/train"]')
    ok = dp_text("gaussian_fixed", noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_placement='"distributed"',
                 secure_aggregation="true")
    assert load_spec(write(tmp_path, ok.replace(BASE, three))).dp.secure_aggregation is True
    assert "at least 3 training sites" in spec_error(tmp_path, ok)  # BASE spans two sites
    local = dp_text("gaussian_fixed", noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_placement='"local"',
                    secure_aggregation="true")
    assert "needs noise_placement = \"distributed\"" in spec_error(tmp_path, local.replace(BASE, three))
    wrong = dp_text("gaussian_fixed", noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_placement='"distributed"',
                    secure_aggregation='"yes"')
    assert "'dp.secure_aggregation'" in spec_error(tmp_path, wrong.replace(BASE, three))


def test_dp_zero_noise_is_allowed(tmp_path):
    spec = load_spec(write(tmp_path, dp_text("gaussian_fixed", noise_multiplier=0, clip=1.0, delta=1e-5)))
    assert spec.dp.noise_multiplier == 0.0


def test_adaptive_noise_must_be_below_tenth_of_clients(tmp_path):
    # Two datasets per round: noise_multiplier must be < 0.2.
    ok = load_spec(write(tmp_path, dp_text("gaussian_adaptive", noise_multiplier=0.19, clip=1.0, delta=1e-5)))
    assert ok.dp.noise_multiplier == 0.19
    message = spec_error(tmp_path, dp_text("gaussian_adaptive", noise_multiplier=0.2, clip=1.0, delta=1e-5))
    assert "'dp.noise_multiplier'" in message
    assert "0.1 * clients per round" in message and "2 dataset(s)" in message
    # The same noise is fine with fixed clipping, and zero noise is fine with adaptive clipping.
    load_spec(write(tmp_path, dp_text("gaussian_fixed", noise_multiplier=0.2, clip=1.0, delta=1e-5)))
    load_spec(write(tmp_path, dp_text("gaussian_adaptive", noise_multiplier=0, clip=1.0, delta=1e-5)))


# ------------------------------------------------------------------ import cost


def test_importing_spec_and_accounting_stays_light():
    code = (
        "import sys, tffprod.sessions.spec, tffprod.privacy.accounting\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_federated', 'dp_accounting', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}, timeout=60
    )
    assert out.stdout.strip() == ""


def test_on_budget_is_refuse_by_default_and_checked():
    dp = DPConfig.from_dict({"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5})
    assert dp.on_budget == "refuse"
    assert DPConfig(**{**dp.to_dict(), "on_budget": "stop"}).on_budget == "stop"
    with pytest.raises(SpecError, match="'dp.on_budget' must be one of 'refuse', 'stop'"):
        DPConfig(**{**dp.to_dict(), "on_budget": "ignore"})
    with pytest.raises(SpecError, match="does not apply to mechanism 'none'"):
        DPConfig(mechanism="none", on_budget="stop")
