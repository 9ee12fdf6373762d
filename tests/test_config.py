"""Loading config modules: declarations, variables, and one clear error per mistake."""
from __future__ import annotations

import pytest

from servectl.errors import ConfigError
from servectl.loading.loader import load_config
from tests.conftest import EXAMPLES, write_config

BASIC = """
from servectl import Backend, Endpoint, LocalRay, var
LocalRay(num_cpus=2)
n = var("replicas", default=2)
a = Backend("a", "models:A", "x", num_replicas=n, ray_actor_options={"num_cpus": 0.5}, user_config={"t": 1})
Endpoint("ep", route="/a", backend=a)
"""
MODELS = """
class A:
    def __init__(self, x): self.x = x
    def __call__(self, request): return self.x
"""


def test_declarations_become_plain_attributes(tmp_path):
    desired = load_config(str(write_config(tmp_path, BASIC, models=MODELS)))
    backend = desired.resources["backend.a"].attributes
    assert backend["num_replicas"] == 2
    assert backend["init_args"] == ["x"]
    assert backend["ray_actor_options"]["num_cpus"] == 0.5
    assert backend["user_config"] == {"t": 1}
    assert backend["code"]["import_path"] == "models:A" and len(backend["code"]["sha256"]) == 64
    endpoint = desired.resources["endpoint.ep"]
    assert endpoint.attributes == {"route": "/a", "traffic": {"a": 1.0}, "shadow": {}}
    assert endpoint.depends_on == ["backend.a"]
    assert desired.resources["backend.a"].declared_at == "main.py:5"


def test_var_overrides_default_with_the_defaults_type(tmp_path):
    desired = load_config(str(write_config(tmp_path, BASIC, models=MODELS)), {"replicas": "4"})
    assert desired.resources["backend.a"].attributes["num_replicas"] == 4
    assert desired.variables == {"replicas": 4}


def test_code_hash_follows_the_module_source(tmp_path):
    config = write_config(tmp_path, BASIC, models=MODELS)
    before = load_config(str(config)).resources["backend.a"].attributes["code"]["sha256"]
    (config / "models.py").write_text(MODELS + "\n# changed\n")
    after = load_config(str(config)).resources["backend.a"].attributes["code"]["sha256"]
    assert before != after


def test_callable_in_config_is_imported_from_main_by_workers(tmp_path):
    desired = load_config(str(EXAMPLES / "scaling"))
    code = desired.resources["backend.my_scaled_endpoint_backend"].attributes["code"]
    assert code["import_path"] == "main:handle_request"


def test_loading_twice_does_not_leak_modules_between_dirs(tmp_path):
    one = write_config(tmp_path / "one", BASIC, models=MODELS)
    two = write_config(tmp_path / "two", BASIC, models=MODELS.replace("self.x = x", "self.x = x * 2"))
    h1 = load_config(str(one)).resources["backend.a"].attributes["code"]["sha256"]
    h2 = load_config(str(two)).resources["backend.a"].attributes["code"]["sha256"]
    assert h1 != h2


@pytest.mark.parametrize(
    "main, variables, message",
    [
        ("from servectl import Backend\nBackend('a', 'models:A'\n", {}, "main.py:2: syntax error"),
        ("from servectl import Backend, Endpoint\na = Backend('a', 'models:A')\nEndpoint('e', route='/x', backend=b)\n",
         {}, "main.py:3: NameError: name 'b' is not defined"),
        ("from servectl import Backend, Endpoint\nBackend('a', 'models:A')\nEndpoint('e', route='/x', backend='nope')\n",
         {}, "main.py:3: endpoint 'e' sends traffic to unknown backend 'nope' (declared backends: a)"),
        ("from servectl import Backend, Endpoint\na = Backend('a', 'models:A')\nb = Backend('b', 'models:A')\n"
         "Endpoint('e1', route='/x', backend=a)\nEndpoint('e2', route='/x', backend=b)\n",
         {}, "main.py:5: endpoint 'e2' route '/x' is already used by endpoint 'e1'"),
        ("from servectl import Backend\nBackend('a', 'models:A', num_replicas=-1)\n",
         {}, "main.py:2: backend 'a': num_replicas: Input should be greater than or equal to 0 (got -1)"),
        ("from servectl import Backend\nBackend('a', 'models:A', num_replica=3)\n",
         {}, "main.py:2: backend 'a': num_replica: unknown setting (check the spelling)"),
        ("from servectl import Backend, Endpoint\na = Backend('a', 'models:A')\nb = Backend('b', 'models:A')\n"
         "Endpoint('e', route='/x', traffic={a: 0.7, b: 0.7})\n",
         {}, "main.py:4: endpoint 'e': traffic weights sum to 1.4; they must sum to 1"),
        ("from servectl import Backend, Endpoint\na = Backend('a', 'models:A')\nEndpoint('e', route='/x', traffic={a: -0.5})\n",
         {}, "main.py:3: endpoint 'e': weight for 'a' must be a non-negative number, got -0.5"),
        ("from servectl import Backend, Endpoint\na = Backend('a', 'models:A')\nEndpoint('e', route='/x', traffic={a: 10**400})\n",
         {}, "main.py:3: endpoint 'e': weight for 'a' must be a non-negative number, got 1" + "0" * 79
         + "… (321 more characters)"),
        ("from servectl import Backend\nBackend('a', 'models:A')\nBackend('a', 'models:A')\n",
         {}, "main.py:3: backend 'a' is declared twice (first at main.py:2)"),
        ("from servectl import Backend\nBackend('a', 'models:A', ray_actor_options={'num_gpus': 1.5})\n",
         {}, "num_gpus above 1 must be a whole number"),
        ("from servectl import var\nvar('n', default=2)\n", {"n": "many"}, "--var n='many': not a valid int"),
        ("from servectl import var\nvar('n', default=2)\n", {"m": "1"}, "--var m: no variable 'm' is declared"),
        ("from servectl import var\nvar('n')\n", {}, "main.py:2: variable 'n' has no default: pass --var n=VALUE"),
        ("import nonexistent_module\n", {}, "main.py:1: ModuleNotFoundError: No module named 'nonexistent_module'"),
        ("from servectl import Backend\nBackend('a', 'models:A', pip=['x==1'], conda='tf1')\n",
         {}, "main.py:2: backend 'a': give pip=[...] or conda=..., not both"),
        ("from servectl import Backend\nBackend('a', 'models:A', pip=['-r requirements.txt'])\n",
         {}, "main.py:2: backend 'a': pip requirement '-r requirements.txt' must be a requirement like 'pkg==1.2'"),
        ("from servectl import S3State\nS3State(bucket='Bad_Bucket', key='s.json', region='us-east-1')\n",
         {}, "main.py:2: S3State: bucket: not a valid S3 bucket name"),
        ("from servectl import S3State\nS3State(bucket='b-1', key='s.json', region='eu-west-1', kms_key_id='k')\n",
         {}, "main.py:2: S3State: kms_key_id is set but encrypt is False: set encrypt=True"),
        ("from servectl import S3State\nS3State(bucket='b-1', key='s.json')\n",
         {}, "main.py:2: S3State: region: Field required"),
        ("from servectl import S3State\nS3State(bucket='b-1', key='a.json', region='r')\nS3State(bucket='b-2', key='a.json', region='r')\n",
         {}, "main.py:3: a second state backend; declare S3State(...) once"),
        ("from servectl import Backend\nBackend('a', 'models:A', num_replicas=2, autoscaling={'max_replicas': 4})\n",
         {}, "main.py:2: backend 'a': give num_replicas or autoscaling={...}, not both"),
        ("from servectl import Backend\nBackend('a', 'models:A', autoscaling={'min_replicas': 5, 'max_replicas': 4})\n",
         {}, "main.py:2: backend 'a': autoscaling: autoscaling max_replicas 4 is below min_replicas 5"),
        ("from servectl import Backend\nBackend('a', 'models:A', autoscaling={'max_replicas': 4, 'target': 2})\n",
         {}, "main.py:2: backend 'a': autoscaling.target: unknown setting (check the spelling)"),
    ],
    ids=["syntax", "name-typo", "unknown-backend", "duplicate-route", "negative-replicas", "misspelt-setting",
         "weights-sum", "negative-weight", "huge-weight", "duplicate-backend", "gpu-split", "bad-var-type", "undeclared-var",
         "missing-var", "import-error", "pip-and-conda", "pip-option", "s3-bucket-name", "s3-kms-without-encrypt",
         "s3-no-region", "s3-twice", "replicas-and-autoscaling", "autoscaling-range", "autoscaling-typo"],
)
def test_config_mistakes_are_one_line_naming_the_place(tmp_path, main, variables, message):
    config = write_config(tmp_path, main, models=MODELS)
    with pytest.raises(ConfigError) as raised:
        load_config(str(config), variables)
    text = str(raised.value)
    assert message in text, text
    assert "\n" not in text


def test_missing_main_py_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file: a config directory needs a main.py"):
        load_config(str(tmp_path))


def test_code_hash_covers_local_helpers_the_module_imports(tmp_path):
    main = BASIC + 'other = Backend("b", "standalone:B")\n'
    config = write_config(
        tmp_path, main,
        models="from helpers import shout\n" + MODELS,
        helpers="def shout(x):\n    return x.upper()\n",
        standalone="class B:\n    def __call__(self, request): return 'b'\n",
    )
    def hashes():
        desired = load_config(str(config))
        return {n: desired.resources[f"backend.{n}"].attributes["code"]["sha256"] for n in ("a", "b")}
    before = hashes()
    (config / "helpers.py").write_text("def shout(x):\n    return x.upper() + '!'\n")
    after = hashes()
    assert after["a"] != before["a"]  # models.py imports helpers.py
    assert after["b"] == before["b"]  # standalone.py does not


def test_environment_gives_variables_as_tf_var_does(tmp_path, monkeypatch):
    config = str(write_config(tmp_path, BASIC, models=MODELS))
    monkeypatch.setenv("SERVECTL_VAR_replicas", "5")
    assert load_config(config).resources["backend.a"].attributes["num_replicas"] == 5
    assert load_config(config, {"replicas": "3"}).resources["backend.a"].attributes["num_replicas"] == 3  # --var wins
    monkeypatch.setenv("SERVECTL_VAR_replicas", "many")
    with pytest.raises(ConfigError, match=r"^SERVECTL_VAR_replicas='many': not a valid int \(declared at main.py:4\)$"):
        load_config(config)


def test_remote_state_example_declares_its_bucket(monkeypatch):
    monkeypatch.setenv("SERVECTL_VAR_state_bucket", "ci-bucket")
    spec = load_config(str(EXAMPLES / "remote_state")).state_backend
    assert (spec.bucket, spec.key, spec.region, spec.encrypt) == ("ci-bucket", "prod/serving.json", "eu-west-1", True)


def test_the_data_path_defaults_to_direct_with_head_only_and_the_environment_picks_it_where_the_config_is_silent(monkeypatch):
    from servectl.config.blocks import LocalRay
    from servectl.errors import ConfigError
    from servectl.loading.attributes import provider_spec

    monkeypatch.delenv("SERVECTL_INGRESS", raising=False)
    assert (LocalRay().ingress, LocalRay(http_location="EveryNode").ingress, LocalRay(http_location="NoServer").ingress) \
        == ("direct", "python", "python")
    assert "ingress" not in LocalRay().model_fields_set  # a default, not a choice: the environment may fill it
    monkeypatch.setenv("SERVECTL_INGRESS", "python")
    assert provider_spec(LocalRay()).ingress == "python"
    assert provider_spec(LocalRay(ingress="direct")).ingress == "direct"  # the config's word wins
    for bad, line in (("haproxy", "SERVECTL_INGRESS='haproxy' must be 'direct' or 'python'"),
                      ("direct", "SERVECTL_INGRESS='direct' needs http_location='HeadOnly' (got 'EveryNode')")):
        monkeypatch.setenv("SERVECTL_INGRESS", bad)
        with pytest.raises(ConfigError) as err:
            provider_spec(LocalRay(http_location="EveryNode"))
        assert str(err.value) == line


def test_the_http_port_from_the_environment_is_a_port(monkeypatch):
    from servectl.config.blocks import LocalRay
    from servectl.loading.attributes import provider_spec

    monkeypatch.setenv("SERVECTL_HTTP_PORT", "18123")
    assert provider_spec(LocalRay()).http_port == 18123
    for bad in ("99999", "0", "80a", "-1"):
        monkeypatch.setenv("SERVECTL_HTTP_PORT", bad)
        with pytest.raises(ConfigError) as err:
            provider_spec(LocalRay())
        assert str(err.value) == f"SERVECTL_HTTP_PORT={bad!r} is not a port number (1-65535)"
