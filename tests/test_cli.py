import json


from plabel_kit import LabelSet
from tests.conftest import run_plabel


def test_help_plugins_components_through_the_console_script():
    result = run_plabel("--help", check=True)
    assert "synth" in result.stdout and "Try it:" in result.stdout
    plugins = json.loads(run_plabel("plugins", "--json", check=True).stdout)
    baseline = next(p for p in plugins if p["name"] == "baseline")
    assert baseline["package"] == "plabel-kit"
    assert set(baseline["components"]["label_source"]) >= {"background", "whole_image"}
    rows = json.loads(run_plabel("components", "--kind", "label_source", "--json", check=True).stdout)
    whole = next(r for r in rows if r["name"] == "whole_image")
    assert whole["parameters"] == [{"name": "multi", "type": "str", "default": "ignore", "required": False}]
    assert "whole_image" in run_plabel("components", check=True).stdout


def test_synth_evaluate_acceptance(tmp_path):
    data = tmp_path / "e"
    run_plabel("synth", "evolving", data, "--n", 60, check=True)
    run_plabel("source", "whole_image", "--data", data / "index.csv", "--out", tmp_path / "ls", check=True)
    result = run_plabel("evaluate", "--data", data / "index.csv", "--labels", tmp_path / "ls", check=True)
    assert "mIoU" in result.stdout and "fwIoU" in result.stdout


def test_unknown_component_did_you_mean(cli_run, tiny, tmp_path):
    result = cli_run("source", "whole_imag", "--data", tiny, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "did you mean 'whole_image'" in result.output
    result = cli_run("source", "whole_image", "--data", tiny, "--out", tmp_path / "x", "--set", "mutli=first")
    assert result.exit_code == 1 and "did you mean 'multi'" in result.output
    result = cli_run("source", "whole_image", "--data", tiny, "--out", tmp_path / "x", "--set", "multi")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = cli_run("components", "--kind", "refinr")
    assert result.exit_code == 2 and "did you mean 'refiner'" in result.output


def test_source_resume_and_refusal_to_mix(cli_run, tiny, tmp_path):
    out = tmp_path / "ls"
    assert cli_run("source", "whole_image", "--data", tiny, "--out", out, "--set", "multi=first").exit_code == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    (out / "labels" / "t1.png").unlink()
    assert cli_run("source", "whole_image", "--data", tiny, "--out", out, "--set", "multi=first").exit_code == 0
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first
    label = LabelSet(out).read_label("t2")
    assert (label == 1).all()  # multi=first: the lowest tagged id
    result = cli_run("source", "whole_image", "--data", tiny, "--out", out)
    assert result.exit_code == 1 and "refusing to mix" in result.output
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first
