"""The command line: one-line errors, no tracebacks; client commands without torch."""

import subprocess
import sys

import pytest

from alignd import models
from alignd.cli import _parse_weights, main


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignd.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_with_a_missing_model_path_exits_with_one_line():
    done = run_cli("serve", "--model", "/nonexistent/model", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("alignd: error: model '/nonexistent/model' not found")
    assert "Traceback" not in done.stderr


def test_serve_with_a_bad_config_file_exits_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("workerz = 3\n")
    done = run_cli("serve", "--config", str(config))
    assert (
        done.returncode == 2
        and done.stderr.strip()
        == "alignd: error: workerz: unknown setting; known: " + done.stderr.strip().split("known: ", 1)[1]
    )


def test_generate_against_no_server_is_a_one_line_unavailable_error():
    done = run_cli("generate", "hello", "--target", "127.0.0.1:1", "--timeout", "5")
    assert done.returncode == 2 and done.stderr.startswith("alignd: error: UNAVAILABLE")
    assert "Traceback" not in done.stderr


def test_weights_option_parses_pairs():
    assert _parse_weights(["relevance=0.7,positivity=0.2", "harmlessness=0.1"]) == {
        "relevance": 0.7,
        "positivity": 0.2,
        "harmlessness": 0.1,
    }
    with pytest.raises(SystemExit):
        _parse_weights(["relevance"])


def test_models_list_shows_the_embedded_default(capsys):
    assert main(["models", "list"]) == 0
    assert models.DEFAULT_MODEL in capsys.readouterr().out


def test_registry_resolves_folders_and_explains_unknown_names(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == tmp_path
    with pytest.raises(models.ModelNotFound, match="not a Hugging Face checkpoint folder"):
        models.resolve(str(tmp_path.parent))
    with pytest.raises(models.ModelNotFound, match="not a registered name"):
        models.resolve("no-such-model")


def test_client_imports_without_torch():
    code = "import sys, alignd.clients, alignd.cli; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_param_option_parses_typed_values():
    from alignd.cli import _parse_params

    assert _parse_params(["num_candidates=8", "strength=0.5", "mode=tokenwise"]) == {
        "num_candidates": 8,
        "strength": 0.5,
        "mode": "tokenwise",
    }
    # Lists and maps (robust.objectives, robust.min_weights) are JSON.
    assert _parse_params(['objectives=["relevance", "harmlessness"]', 'min_weights={"harmlessness": 0.2}']) == {
        "objectives": ["relevance", "harmlessness"],
        "min_weights": {"harmlessness": 0.2},
    }
    with pytest.raises(SystemExit, match="min_weights: not valid JSON"):
        _parse_params(["min_weights={harmlessness: 0.2}"])


def test_keys_create_list_revoke(tmp_path, capsys):
    from alignd.server.auth.keys import KeyRing

    path = tmp_path / "keys.json"
    assert main(["keys", "create", "--keys-file", str(path), "--role", "admin", "--name", "ops", "--max-n", "4"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("alignd-") and secret not in path.read_text()
    assert KeyRing(path).verify(secret).quota.max_n == 4
    assert main(["keys", "list", "--keys-file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing and "admin" in listing and "max_n=4" in listing and secret not in listing
    assert main(["keys", "revoke", "--keys-file", str(path), "ops"]) == 0
    assert KeyRing(path).count == 0
    assert main(["keys", "revoke", "--keys-file", str(path), "nobody"]) == 2
    assert "no key with id or name 'nobody'" in capsys.readouterr().err
    assert main(["keys", "create", "--keys-file", str(path), "--concurrent", "-1"]) == 2
    assert capsys.readouterr().err.startswith("alignd: error: --concurrent: must be a whole number >= 0")
    for flags, message in (
        (["--tls-ca", str(tmp_path / "missing.pem")], "missing.pem: No such file or directory"),
        (["--tls-key", str(path)], "tls: cert_file and key_file go together"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["info", *flags])
        assert done.value.code == 2 and message in capsys.readouterr().err


def test_serving_a_network_address_needs_a_word_on_authentication():
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("alignd: error: auth.enabled: serving on 0.0.0.0 (not a loopback address)")
