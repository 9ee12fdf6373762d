"""Sensitive values as units: redaction, the output mask, sealing for the cluster, and what ships in a bundle."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from servectl.loading import bundle
from servectl.config import Registry, var
from servectl.config.registry import reset_registry, set_registry
from servectl.errors import ConfigError
from servectl.planning.planner import reasons_for
from servectl.model.plan import AttributeDiff
from servectl.runtime.sealed import SealError, key_from_token, seal, unseal
from servectl.sensitive import MARK, MaskedStream, Sensitive, learn, mask, reveal, sensitive
from servectl.state.document import StateDocument


def test_a_reason_never_shows_a_sensitive_value_before_or_after():
    diffs = [
        AttributeDiff("env_vars.API_TOKEN", {MARK: "old-token-value"}, {MARK: "new-token-value"}, True),
        AttributeDiff("init_args", ["plain", {MARK: "old-argument-x"}], ["plain", {MARK: "new-argument-y"}], True),
    ]
    text = "; ".join(reasons_for(diffs))
    assert "old-token-value" not in text and "new-token-value" not in text and "argument" not in text, text
    assert "env_vars.API_TOKEN (sensitive) → (sensitive) (replicas restart)" in text


def test_the_mask_hides_every_remembered_value_in_any_form():
    secret = 'pa"ss\\word-\u00e9-1234'
    sensitive(secret)
    stream = io.StringIO()
    masked = MaskedStream(stream)
    masked.write(f"plain {secret} json {json.dumps(secret)} repr {secret!r} end\n")
    assert stream.getvalue() == "plain (sensitive) json \"(sensitive)\" repr '(sensitive)' end\n"
    assert mask("short 12345") == "short 12345"  # below MIN_MASKED_LENGTH: left to structural redaction
    sensitive("abcdefgh")
    sensitive("ghijklmn")
    assert mask("x abcdefghijklmn y") == "x (sensitive) y"  # overlapping values leave nothing of either
    sensitive({"keyname-secret": "value-secret"})
    assert mask("keyname-secret: value-secret") == "(sensitive): (sensitive)"


def test_values_read_from_a_state_are_masked_too(tmp_path):
    document = StateDocument.new()
    text = document.to_json().replace('"resources": {}', json.dumps({"resources": {"backend.a": {
        "kind": "backend", "name": "a", "attributes": {"user_config": {"key": {MARK: "state-held-secret"}}}}}})[1:-1])
    StateDocument.from_json(text, "test")
    assert mask("an error naming state-held-secret") == "an error naming (sensitive)"
    learn({"nested": [{MARK: {"deeper": "history-held-secret"}}]})
    assert "history-held-secret" not in mask("x history-held-secret y")


def test_a_sensitive_variable_that_fails_conversion_is_not_echoed(tmp_path):
    registry = Registry(config_dir=str(tmp_path), variables_given={"port": "not-a-port-secret", "shape": "[1, 2]"})
    token = set_registry(registry)
    try:
        with pytest.raises(ConfigError) as err:
            var("port", default=1, sensitive=True)
        assert "not-a-port-secret" not in str(err.value) and "--var port=(sensitive): not a valid int" in str(err.value)
        with pytest.raises(ConfigError) as err:  # a dict default takes a JSON object, not any JSON
            var("shape", default={"a": 1})
        assert "--var shape='[1, 2]': not a valid JSON object" in str(err.value)
    finally:
        reset_registry(token)
    assert repr(Sensitive("x")) == "sensitive(…)"


def test_sealing_is_deterministic_opens_only_with_its_token_and_keeps_plain_values():
    key = key_from_token("token-one")
    value = {"plain": 1, "list": ["a", {MARK: "sealed-secret"}], "whole": {MARK: {"k": {MARK: 2}}}}
    sealed = seal(value, key)
    assert "sealed-secret" not in json.dumps(sealed) and sealed["plain"] == 1 and sealed["list"][0] == "a"
    assert seal(value, key) == sealed  # the same bytes every apply: Serve restarts nothing for it
    assert unseal(sealed, key) == {"plain": 1, "list": ["a", "sealed-secret"], "whole": {"k": 2}}
    with pytest.raises(SealError):
        unseal(sealed, key_from_token("token-two"))
    for edited in (5, None, ["x"], sealed["list"][1]["__servectl_sealed__"] + "*\n"):
        with pytest.raises(SealError):  # an edited config in Serve: one clear error, never a TypeError
            unseal({"__servectl_sealed__": edited}, key)
    assert reveal(value)["whole"] == {"k": 2}


def test_the_bundle_leaves_out_ignored_files_saved_plans_and_servectls_own(tmp_path):
    (tmp_path / "main.py").write_text("x = 1\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id.pem").write_text("KEY")
    (tmp_path / "prod.env").write_text("TOKEN=1")
    (tmp_path / "keep.env").write_text("PUBLIC=1")
    (tmp_path / "renamed-plan.json").write_text('{"format": "servectl-plan", "format_version": 1}')
    (tmp_path / ".servectl").mkdir()
    (tmp_path / ".servectl" / "ray-token").write_text("t")
    (tmp_path / "servectl.state.json").write_text("{}")
    (tmp_path / ".servectlignore").write_text("keys/\n*.env\n!keep.env\n# a comment\n\n.servectl/\n!servectl.state.json\n")
    listing = bundle.listing(str(tmp_path))
    assert listing.included == [".servectlignore", "keep.env", "main.py"]
    assert listing.ignored == ["keys/", "prod.env"] and listing.saved_plans == ["renamed-plan.json"]
    frozen = zipfile.ZipFile(io.BytesIO(bundle.freeze(str(tmp_path))))
    assert frozen.namelist() == listing.included
    assert listing.summary() == {"files": 3, "ignored": ["keys/", "prod.env"], "saved_plans": ["renamed-plan.json"],
                                 "servectl_files": []}


def test_servectls_own_files_are_found_by_content_and_ignore_files_apply_below_their_directory(tmp_path):
    import os

    (tmp_path / "main.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pretty.plan.json").write_text(json.dumps({"format_version": 1, "format": "servectl-plan"}, indent=2))
    state = StateDocument.new()
    (tmp_path / "sub" / "state-copy.json").write_text(state.to_json())
    (tmp_path / "servectl.state.json").write_text(state.to_json())
    os.link(tmp_path / "servectl.state.json", tmp_path / "hardlink-state.json")
    (tmp_path / "notes.txt").write_text('the key was {"__servectl_sensitive__": "x"}')
    (tmp_path / "sub" / ".servectlignore").write_text("*.pem\n")
    (tmp_path / "sub" / "key.pem").write_text("KEY")
    (tmp_path / "top.pem").write_text("not ignored above sub/")
    listing = bundle.listing(str(tmp_path))
    assert listing.included == ["main.py", "sub/.servectlignore", "top.pem"]
    assert listing.saved_plans == ["sub/pretty.plan.json"] and listing.ignored == ["sub/key.pem"]
    assert sorted(listing.servectl_files) == ["hardlink-state.json", "notes.txt", "sub/state-copy.json"]
