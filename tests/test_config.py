import pytest

from alignd.config import ConfigError, load_config


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "alignd.toml"
    path.write_text(
        'model = "/models/x"\nport = 6000\nobjectives = ["relevance", "positivity"]\n'
        "[default_weights]\nrelevance = 0.7\n[default_sampling]\ntemperature = 0.3\nmax_tokens = 64\n"
        "[limits]\nmax_candidates = 16\n"
    )
    config = load_config(path, port=7000, device=None)
    assert config.model == "/models/x" and config.port == 7000
    assert config.objectives == ("relevance", "positivity")
    assert config.default_weights == {"relevance": 0.7}
    assert config.default_sampling.temperature == 0.3 and config.default_sampling.max_tokens == 64
    assert config.limits.max_candidates == 16 and config.limits.max_tokens == 1024


def test_no_file_gives_the_embedded_defaults():
    config = load_config()
    assert config.model == "smollm2-135m-instruct" and config.port == 50051 and config.backend == "transformers"
    assert config.small_batch_matmul is True


@pytest.mark.parametrize(
    "text, message",
    [
        ("prot = 1\n", "prot: unknown setting"),
        ("[limits]\nmax_n = 3\n", "limits.max_n: unknown setting"),
        ("limits = 3\n", "limits: must be a table"),
        ("port = \n", "alignd.toml"),
        ('small_batch_matmul = "no"\n', "small_batch_matmul: must be true or false"),
        ("[auth]\nenabled = 1\n", "auth.enabled: must be true or false"),
        ("admin_rpcs = true\n", "admin_rpcs: replaced by API keys with the admin role"),
    ],
)
def test_config_errors_are_one_line_naming_the_setting(tmp_path, text, message):
    path = tmp_path / "alignd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/alignd.toml")


def test_the_experiment_store_is_a_path_a_postgresql_url_or_the_environments(monkeypatch, tmp_path):
    from pathlib import Path

    from alignd.config import STORE_ENV, ServerConfig, experiment_store_location
    from alignd.server.experiments.databases import redact

    monkeypatch.delenv(STORE_ENV, raising=False)
    assert experiment_store_location(ServerConfig(experiment_store=str(tmp_path / "s.sqlite"))) == Path(
        tmp_path / "s.sqlite"
    )
    url = "postgresql://alignd:secret@db:5432/ab"
    assert experiment_store_location(ServerConfig(experiment_store=url)) == url
    # The environment wins, so a password need not sit in the config file.
    monkeypatch.setenv(STORE_ENV, url)
    assert experiment_store_location(ServerConfig(experiment_store=str(tmp_path / "s.sqlite"))) == url
    assert (
        redact(url) == "postgresql://alignd:***@db:5432/ab" and redact("postgresql://a@db/x") == "postgresql://a@db/x"
    )
    assert redact("postgresql://a@db/x?password=p1") == "postgresql://a@db/x?password=***"
    # Set but empty, the environment turns the store off.
    monkeypatch.setenv(STORE_ENV, "")
    assert experiment_store_location(ServerConfig(experiment_store=str(tmp_path / "s.sqlite"))) is None


def test_serving_beyond_loopback_needs_a_word_on_authentication(tmp_path):
    from alignd.config import check_settings

    with pytest.raises(ConfigError, match=r"^auth\.enabled: serving on 0\.0\.0\.0 .* without authentication"):
        check_settings(load_config(host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"^auth\.enabled: serving on 10\.1\.2\.3"):
        check_settings(load_config(http={"enabled": True, "host": "10.1.2.3"}))
    check_settings(load_config(host="0.0.0.0", auth={"enabled": True}))
    check_settings(load_config(host="0.0.0.0", auth={"enabled": False}))  # said explicitly
    check_settings(load_config(host="127.0.0.1"))


@pytest.mark.parametrize(
    "auth, tls, message",
    [
        ({"anonymous_role": "root"}, {}, "auth.anonymous_role: must be one of"),
        ({"open_services": ["metrics"]}, {}, "auth.open_services: a list of"),
        ({}, {"cert_file": "nowhere.pem", "key_file": "nowhere.key"}, "tls.cert_file: no file 'nowhere.pem'"),
        ({}, {"client_ca_file": "{here}"}, "tls.client_ca_file: client certificates .* need TLS"),
        ({}, {"cert_file": "{here}"}, "tls: cert_file and key_file go together"),
    ],
)
def test_auth_and_tls_settings_are_checked(tmp_path, auth, tls, message):
    from alignd.config import check_settings

    here = tmp_path / "x.pem"
    here.write_text("")
    tls = {k: v.format(here=here) for k, v in tls.items()}
    with pytest.raises(ConfigError, match=message):
        check_settings(load_config(auth=auth or None, tls=tls or None))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[limits]\nmax_vector_strength = -1\n", r"limits\.max_vector_strength: must be a number >= 0"),
        ('backend = "vllm"\n[vllm]\nvector_presets = []\n', r"vllm\.vector_presets: must be a non-empty list"),
        (
            'backend = "vllm"\n[vllm]\nvector_presets = [1.0, 3.0]\n',
            r"vllm\.vector_presets\[1\]: must be a non-zero number within",
        ),
        ('backend = "vllm"\n[vllm]\nvector_presets = ["a"]\n', r"vllm\.vector_presets\[0\]"),
        ('backend = "vllm"\n[vllm]\nvector_presets = [0.0]\n', r"vllm\.vector_presets\[0\]"),
        ('default_sampling.steering = [["positivity", 1.0]]\n', r"default_sampling\.steering: unknown setting"),
        ("preference_vectors = 3\n", "preference_vectors: must be a string"),
    ],
)
def test_preference_vector_settings_are_checked(tmp_path, text, message):
    from alignd.config import check_settings

    path = tmp_path / "alignd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        check_settings(load_config(path))


def test_the_vllm_presets_do_not_bind_other_backends(tmp_path):
    """A transformers server may keep steering weaker than the vLLM presets it does not use."""
    from alignd.config import check_settings

    path = tmp_path / "alignd.toml"
    path.write_text("[limits]\nmax_vector_strength = 0.5\n")
    check_settings(load_config(path))
    path.write_text('backend = "vllm"\n[limits]\nmax_vector_strength = 0.5\n')
    with pytest.raises(ConfigError, match=r"vllm\.vector_presets\[0\]: must be a non-zero number within"):
        check_settings(load_config(path))
