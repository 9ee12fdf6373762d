"""`servectl validate --json` (Terraform's `validate -json`) through the real CLI: it contacts no cluster, so no Ray."""
from __future__ import annotations

import json

from tests.conftest import run_cli, write_config

MAIN = '''
from servectl import Backend, Endpoint, LocalRay, var
LocalRay()
n = var("replicas", default=1)
key = var("key_n", default=1, sensitive=True)
b = Backend("vb", "models:M", num_replicas=n, user_config={"key": key})
Endpoint("ve", route="/ve", backend=b)
'''
MODELS = "class M:\n    def __call__(self, request):\n        return 'ok'\n"


def validated(config, *args: str) -> tuple[int, dict, str]:
    result = run_cli(config, "validate", "--json", *args)
    return result.code, json.loads(result.stdout), result.stderr


def test_validate_json_says_valid_or_names_the_file_line_and_address_of_the_error(tmp_path):
    config = write_config(tmp_path / "v", MAIN, models=MODELS)
    code, body, stderr = validated(config)
    assert (code, stderr) == (0, "")
    assert body == {"format_version": 1, "valid": True, "error_count": 0, "diagnostics": [], "backends": 1, "endpoints": 1}

    (config / "main.py").write_text(MAIN.replace('Endpoint("ve", route="/ve"', 'Endpoint("ve", route="ve"'))
    code, body, stderr = validated(config)
    assert (code, stderr, body["valid"], body["error_count"]) == (1, "", False, 1)
    (found,) = body["diagnostics"]
    assert (found["severity"], found["file"], found["line"], found["address"]) == ("error", "main.py", 7, "endpoint.ve")
    plain = run_cli(config, "validate")  # the same error as the one line the text form prints
    assert plain.stderr.strip() == f"Error: {found['summary']}" and found["summary"].endswith(found["detail"])

    (config / "main.py").write_text(MAIN)
    code, body, _ = validated(config, "--var", "replicas=many")
    (found,) = body["diagnostics"]
    assert (code, found["file"], found["line"], found["address"]) == (1, None, None, "var.replicas")
    assert found["summary"] == "--var replicas='many': not a valid int (declared at main.py:4)"

    # The resource an error names is its address wherever the line names it; a config's own print() goes to stderr.
    (config / "main.py").write_text(MAIN + 'print("from the config")\nBackend("vb", "models:M")\n')
    code, body, stderr = validated(config)
    (found,) = body["diagnostics"]
    assert (code, found["line"], found["address"]) == (1, 9, "backend.vb") and "declared twice" in found["detail"]
    assert stderr.strip() == "from the config"
    (config / "main.py").write_text(MAIN)

    # A sensitive value in the error is masked as in every other output.
    code, body, _ = validated(config, "--var", "key_n=Canary1234")
    (found,) = body["diagnostics"]
    assert code == 1 and "Canary1234" not in json.dumps(body) and found["address"] == "var.key_n"
    assert found["summary"].startswith("--var key_n=(sensitive): not a valid int")
