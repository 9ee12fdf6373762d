"""The front proxy's HAProxy configuration as text, checked by HAProxy itself (``haproxy -c``): no Ray needed."""
from __future__ import annotations

import subprocess

from servectl.providers.front_proxy import RoutedEndpoint, haproxy_binary, render_config


def test_a_model_id_routed_apart_is_matched_before_the_endpoints_own_traffic(tmp_path):
    llm = RoutedEndpoint(
        "llm", "/llm", {"base": [[0, 1_000_000]]},
        models={"adapter-7": {"tuned": [[0, 500_000]], "base": [[500_000, 1_000_000]]}, "org/m@v2": {"tuned": [[0, 1_000_000]]}},
    )
    text = render_config("127.0.0.1", 8000, 8001, [llm], str(tmp_path / "haproxy.pid"))
    lines = text.splitlines()
    model_rule = next(i for i, line in enumerate(lines) if "str(tuned) if ep0 ep0_m0" in line)
    own_rule = next(i for i, line in enumerate(lines) if "str(base) if ep0 !" in line)
    assert model_rule < own_rule  # the first rule that sets the backend wins
    assert "    acl ep0_m0 req.hdr(serve_multiplexed_model_id) -m str adapter-7" in lines
    assert "    acl ep0_m1 req.hdr(serve_multiplexed_model_id) -m str org/m@v2" in lines
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_websockets_go_through_a_section_per_backend_and_the_longest_delay_bounds_a_reload(tmp_path):
    api = RoutedEndpoint("api", "/api", {"v1": [[0, 500_000]], "v2": [[500_000, 1_000_000]]}, drain_s=20)
    llm = RoutedEndpoint("llm", "/llm", {"base": [[0, 1_000_000]]}, models={"m": {"tuned": [[0, 1_000_000]]}}, drain_s=45)
    text = render_config("127.0.0.1", 8000, 8001, [api, llm], str(tmp_path / "haproxy.pid"))
    lines = text.splitlines()
    assert "    hard-stop-after 45s" in lines  # one bound per HAProxy process: the longest endpoint's
    for backend in ("v1", "v2", "base", "tuned"):  # a model id's backend too
        assert f"backend ws_{backend}" in lines
        assert (f"    use_backend ws_{backend} if {{ req.hdr(upgrade) -m str -i websocket }} "
                f"{{ var(txn.sc_b) -m str {backend} }}") in lines
    assert render_config("127.0.0.1", 8000, 8001, [], str(tmp_path / "p")).count("hard-stop-after 300s") == 1
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
