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


def test_known_replicas_are_reached_directly_and_serves_proxy_backs_them_up(tmp_path):
    """Issue #18's fast path, as configuration: a backend with replica targets gets sections over its replicas
    (least connections; a model id hashed onto one replica), health-checked on the replica's /-/healthz, with
    Serve's proxy as the backup; a backend without targets keeps going through Serve's proxy."""
    api = RoutedEndpoint("api", "/api", {"v1": [[0, 500_000]], "v2": [[500_000, 1_000_000]]})
    targets = {"v1": [("127.0.0.1", 30001), ("10.0.0.7", 30001)], "other": [("127.0.0.1", 30009)]}
    text = render_config("127.0.0.1", 8000, 8001, [api], str(tmp_path / "haproxy.pid"), targets=targets)
    lines = text.splitlines()
    assert "    use_backend be_v1 if { var(txn.sc_b) -m str v1 }" in lines
    assert ("    use_backend bm_v1 if { req.hdr(serve_multiplexed_model_id) -m found } { var(txn.sc_b) -m str v1 }"
            in lines)
    assert lines.index("    use_backend bm_v1 if { req.hdr(serve_multiplexed_model_id) -m found } "
                       "{ var(txn.sc_b) -m str v1 }") < lines.index("    use_backend be_v1 if { var(txn.sc_b) -m str v1 }")
    assert not any("be_v2" in line or "be_other" in line for line in lines)  # no targets: Serve's proxy (default)
    section = lines[lines.index("backend be_v1"):]
    section = section[:next(i for i, line in enumerate(section[1:], 1) if line.startswith("backend "))]
    assert "    balance leastconn" in section and "    option httpchk GET /-/healthz" in section
    assert "    server r127_0_0_1_30001 127.0.0.1:30001 check" in section
    assert "    server r10_0_0_7_30001 10.0.0.7:30001 check" in section  # the same port on two nodes
    assert section[-1] == "    server serve 127.0.0.1:8001 backup"
    models = lines[lines.index("backend bm_v1"):]
    assert models[1:3] == ["    balance hdr(serve_multiplexed_model_id)", "    hash-type consistent"]
    assert "    server r127_0_0_1_30001 127.0.0.1:30001 check" in lines[lines.index("backend ws_v1"):]
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_replica_targets_are_checked_where_they_become_configuration(tmp_path):
    api = RoutedEndpoint("api", "/api", {"v1": [[0, 1_000_000]]})
    bad = {
        "an address with a newline": {"v1": [("127.0.0.1\n    server x 1.2.3.4", 30001)]},
        "a host name": {"v1": [("replica.example", 30001)]},
        "port 0": {"v1": [("127.0.0.1", 0)]},
        "a port given as text": {"v1": [("127.0.0.1", "30001")]},
        "one replica twice": {"v1": [("127.0.0.1", 30001), ("127.0.0.1", 30001)]},
        "a backend name with a space": {"v 1": [("127.0.0.1", 30001)]},
        "too many replicas": {"v1": [("127.0.0.1", port) for port in range(1, 1_003)]},
    }
    for why, targets in bad.items():
        try:
            render_config("127.0.0.1", 8000, 8001, [api], str(tmp_path / "haproxy.pid"), targets=targets)
        except ValueError as err:
            assert "\n" not in str(err), why
        else:
            raise AssertionError(f"{why}: accepted")


def test_shadow_copies_are_sent_by_the_proxy_through_a_listener_of_their_own(tmp_path):
    """With the Lua action written, a shadowed request waits for its body (1 s at most) and goes through the
    action; copies come back in on a unix socket to a section per shadow (its replicas, or Serve's proxy), with
    the shadow's own timeout — sections a reload never waits on. Without the script, or without a shadow,
    none of it is there (every copy is the primary's)."""
    from servectl.providers import shadow_copies
    from servectl.providers.front_proxy import proxy_threads

    api = RoutedEndpoint("api", "/api", {"v1": [[0, 1_000_000]]}, shadow={"canary": 0.1, "audit": 1.0},
                         timeouts={"canary": 2.5})
    script = shadow_copies.write_script(str(tmp_path))
    assert (tmp_path / "mirror.lua").stat().st_mode & 0o777 == 0o600
    targets = {"v1": [("127.0.0.1", 30001)], "canary": [("127.0.0.1", 30002)]}
    text = render_config("127.0.0.1", 8000, 8001, [api], str(tmp_path / "haproxy.pid"), targets=targets,
                         mirror_script=script)
    lines = text.splitlines()
    assert f"    lua-load {script}" in lines and f"    nbthread {proxy_threads()}" in lines
    waits = lines.index("    http-request wait-for-body time 1s if { req.hdr(x-servectl-shadow) -m found }")
    acts = lines.index("    http-request lua.servectl_mirror /_servectl/ if { req.hdr(x-servectl-shadow) -m found }")
    rewrite = next(i for i, line in enumerate(lines) if line.startswith("    http-request set-path /_servectl/"))
    assert rewrite < waits < acts  # the copy is made of the rewritten request
    assert "    http-request del-header x-servectl-mirrored" in lines  # a client cannot claim copies were sent
    assert "    bind unix@copies.sock mode 600" in lines
    canary = lines[lines.index("backend cp_canary"):]
    canary = canary[:next((i for i, line in enumerate(canary[1:], 1) if line.startswith("backend ")), len(canary))]
    assert "    server r127_0_0_1_30002 127.0.0.1:30002 check" in canary
    assert canary[-1] == "    http-request set-timeout server 2500ms"
    assert lines[lines.index("backend cp_audit") + 1] == "    server serve 127.0.0.1:8001"  # no targets: Serve's proxy
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    for plain in (render_config("127.0.0.1", 8000, 8001, [api], str(tmp_path / "haproxy.pid")),
                  render_config("127.0.0.1", 8000, 8001, [RoutedEndpoint("api", "/api", {"v1": [[0, 1_000_000]]})],
                                str(tmp_path / "haproxy.pid"), mirror_script=script)):
        assert "lua-load" not in plain and "lua." not in plain and "copies.sock" not in plain and "cp_" not in plain
    try:
        render_config("127.0.0.1", 8000, 8001, [api], str(tmp_path / "haproxy.pid"), mirror_script="mirror.lua\nx")
    except ValueError as err:
        assert "is not a plain absolute path" in str(err)
    else:
        raise AssertionError("a script path with a newline was rendered")
