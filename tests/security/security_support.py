"""Helpers of the security tests: the pickle exploit of issue 17 and how it is sent."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import httpx

PICKLE = "application/vnd.bentoml+pickle"
TOKEN_HEADER = "x-recsys-stage-token"


class TouchFile:
    """Unpickling this runs `touch <path>`: the payload of the issue, harmless but visible."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(TouchFile(marker), protocol=5)


def send_pickle(client: httpx.Client, path: str, marker: Path, **headers) -> httpx.Response:
    """POST the exploit to `path`; afterwards give a server that did unpickle it time to run it."""
    response = client.post(
        path, content=pickle_payload(marker), headers={"content-type": PICKLE, **headers}
    )
    time.sleep(0.3)
    return response
