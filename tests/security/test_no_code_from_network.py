"""No code runs from the network: the pickle exploit of issue 17 against every service port.

A pickled object whose `__reduce__` runs `touch <file>` is POSTed as
`application/vnd.bentoml+pickle` to each port of each deployment form, on real servers:

- split form (Kubernetes' layout): gateway, Retrieval and Ranking, each its own process;
- `bentoml serve` form: the gateway's TCP port and the stages' Unix sockets (found in the
  BENTOML_RUNNER_MAP that BentoML gives its workers);
- the single-process gateway (both stages inside it).

Every one must answer 415 with a JSON body saying why, and the file must never appear. The
stages are also sent the exploit *with* the valid stage token: the refusal is per port, not a
side effect of authentication. On the main before this change the stages unpickled the body
(the file appeared), which these tests catch.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest
from security_support import PICKLE, TOKEN_HEADER, pickle_payload, send_pickle

from recsys.ops.stack import serve_all, serve_stack, stage_token

pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]

STAGE_CALLS = {"Retrieval": "/retrieve", "Ranking": "/rank"}
GATEWAY_CALLS = ("/recommend", "/recommend_batch", "/similar_items", "/stages")


def assert_refused(response: httpx.Response, marker: Path) -> None:
    assert not marker.exists(), f"the pickle payload ran: {marker} was created"
    assert response.status_code == 415, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert "would run code" in response.json()["error"]


def probe_port(client: httpx.Client, paths, tmp_path: Path, name: str, **headers) -> None:
    for path in paths:
        marker = tmp_path / f"pwned-{name}-{path.strip('/')}"
        assert_refused(send_pickle(client, path, marker, **headers), marker)


@pytest.fixture(scope="module")
def split(saved_tags, bentoml_home):
    with serve_stack(env={"BENTOML_HOME": str(bentoml_home)}, form="split") as servers:
        yield servers


def test_split_gateway_refuses_pickle(split, tmp_path):
    with httpx.Client(base_url=split["Recommender"].url, timeout=20) as http:
        probe_port(http, GATEWAY_CALLS, tmp_path, "gateway")


@pytest.mark.parametrize("stage", ["Retrieval", "Ranking"])
@pytest.mark.parametrize("token", ["none", "valid"])
def test_split_stage_refuses_pickle(split, tmp_path, stage, token):
    headers = {TOKEN_HEADER: stage_token()} if token == "valid" else {}
    with httpx.Client(base_url=split[stage].url, timeout=20) as http:
        paths = [STAGE_CALLS[stage], "/similar_items", "/retrieve_batch"]
        probe_port(http, paths, tmp_path, stage, **headers)


@pytest.mark.parametrize(
    "headers",
    [
        # BentoML reads the first content-type header: a second, acceptable one must not help.
        [("content-type", PICKLE), ("content-type", "application/json")],
        [("content-type", "Application/VND.BentoML+Pickle")],
        [("content-type", f"{PICKLE}; charset=utf-8")],
        [("content-type", "application/x-python-pickle")],
    ],
    ids=["two-headers", "upper-case", "parameters", "other-pickle-type"],
)
def test_disguised_pickle_is_refused(split, tmp_path, headers):
    marker = tmp_path / "pwned-disguised"
    headers = [*headers, (TOKEN_HEADER, stage_token())]
    response = httpx.post(
        f"{split['Retrieval'].url}/retrieve",
        content=pickle_payload(marker),
        headers=headers,
        timeout=20,
    )
    assert response.status_code == 415, response.text
    assert not marker.exists()


def test_split_gateway_still_serves(split, warm_user):
    """The gateway reaches its stages with JSON (pickle is refused now) and the token."""
    with httpx.Client(base_url=split["Recommender"].url, timeout=20) as http:
        answer = http.post("/recommend", json={"user_id": warm_user, "k": 5}).json()
    assert answer["degraded"] is False, answer
    assert len(answer["items"]) == 5


def _stage_sockets(server) -> dict[str, str]:
    """Where `bentoml serve`'s stage workers listen, from the map BentoML hands its workers."""
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            mapping = process.environ().get("BENTOML_RUNNER_MAP")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if mapping:
            return json.loads(mapping)
    raise AssertionError("no BENTOML_RUNNER_MAP in the workers of `bentoml serve`")


def _client_for(uri: str) -> httpx.Client:
    from bentoml._internal.utils.uri import uri_to_path

    if uri.startswith("file://"):
        transport = httpx.HTTPTransport(uds=uri_to_path(uri))
        return httpx.Client(transport=transport, base_url="http://stage", timeout=20)
    return httpx.Client(base_url=uri.replace("tcp://", "http://"), timeout=20)


def test_bentoml_serve_refuses_pickle_on_every_port(saved_tags, bentoml_home, tmp_path, warm_user):
    with serve_all(env={"BENTOML_HOME": str(bentoml_home)}) as server:
        with httpx.Client(base_url=server.url, timeout=20) as http:
            probe_port(http, GATEWAY_CALLS, tmp_path, "serve-gateway")
            answer = http.post("/recommend", json={"user_id": warm_user, "k": 5}).json()
            assert answer["degraded"] is False, answer
        sockets = _stage_sockets(server)
        assert set(STAGE_CALLS) <= set(sockets), sockets
        for stage, path in STAGE_CALLS.items():
            with _client_for(sockets[stage]) as http:
                probe_port(http, [path], tmp_path, f"serve-{stage}")
                # The same port without the token: a local user reaching the socket gets 401.
                refused = http.post(path, json={"user_id": "u1"})
                assert refused.status_code == 401, refused.text


def test_single_process_gateway_refuses_pickle(saved_tags, bentoml_home, tmp_path, warm_user):
    with (
        serve_stack(env={"BENTOML_HOME": str(bentoml_home)}, form="single") as server,
        httpx.Client(base_url=server.url, timeout=20) as http,
    ):
        probe_port(http, GATEWAY_CALLS, tmp_path, "single")
        answer = http.post("/recommend", json={"user_id": warm_user, "k": 5}).json()
        assert answer["degraded"] is False, answer


def test_any_method_with_a_body_is_checked_probes_without_one_are_not(split, tmp_path):
    """A body on a GET is refused like one on a POST; a probe without a body passes whatever
    type a proxy stamps on it (aiohttp adds application/octet-stream)."""
    url = split["Retrieval"].url
    marker = tmp_path / "pwned-get"
    response = httpx.request(
        "GET",
        f"{url}/retrieve",
        content=pickle_payload(marker),
        headers={"content-type": PICKLE, TOKEN_HEADER: stage_token()},
        timeout=20,
    )
    assert response.status_code == 415 and not marker.exists()
    probe = httpx.get(
        f"{url}/readyz", headers={"content-type": "application/octet-stream"}, timeout=20
    )
    assert probe.status_code == 200
