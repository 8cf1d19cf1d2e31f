"""MONAI Label's client against ``medloop serve``, for both methods, called the way its 3D Slicer plugin calls it.

The ``monailabel`` package cannot be a test dependency: it pins ``monai[...]`` extras, torchvision and sam2
against our torch and monai pins, and weighs gigabytes. ``ClientWire`` sends instead exactly the requests of
MONAI Label 0.8.5's ``MONAILabelClient`` (``monailabel/client/client.py``) and reads the answers the way it does;
the Slicer plugin's own steps (``plugins/slicer/MONAILabel/MONAILabel.py`` of the same release: log in when
``/auth/`` says so, export the segments as a NIfTI label map on the image's grid with ``label_info``, ask
``/infer`` for ``.nrrd``) are written out in the test.
"""

from __future__ import annotations

import gzip
import http.client
import json
import mimetypes
import time
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import quote_plus, urlencode, urlparse

import nibabel as nib
import numpy as np
import pytest

from medloop.loop import CollaborativeConfig, ExperimentConfig
from medloop.serve import Runner, create_app
from medloop.serve.labelfile import decode_label
from tests.serve_support import CARDIAC, CHEST, TOKEN, LiveServer

pytestmark = pytest.mark.integration


class ClientError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"Status: {status}; Response: {body[:300]!r}")
        self.status, self.body = status, body


class ClientWire:
    """The wire behaviour of MONAI Label 0.8.5's ``MONAILabelClient``: one ``http.client`` connection a call, the
    server URL's path as a prefix, ``client_id`` added to every ``params``, ``Authorization: <token_type>
    <access_token>`` once logged in, its multipart encoder (fixed boundary, fields before files, a file's type
    guessed from its name), and multipart answers split into form fields and files named by their file names."""

    BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"

    def __init__(self, server_url: str, client_id: str = "user-xyz"):
        self.server_url, self.client_id, self.headers = server_url.rstrip("/"), client_id, {}

    # --------------------------------------------------------------------------------------- transport

    def _send(self, method: str, selector: str, body: bytes | str | None = None, content_type: str | None = None,
              headers: dict | None = None):
        parsed = urlparse(self.server_url)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        headers = dict(headers or {})
        if body:
            headers.update({"content-type": content_type, "content-length": str(len(body))})
        conn.request(method, parsed.path.rstrip("/") + "/" + selector.lstrip("/"), body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("content-type", "application/json")
        if "multipart" in kind and response.status == 200:
            message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + data)
            form, files = {}, {}
            for part in message.iter_parts():
                if part.get_filename():
                    files[part.get_filename()] = part.get_payload(decode=True)
                else:
                    form[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode()
            return response.status, form, files, response.headers
        return response.status, data, None, response.headers

    def _json(self, method: str, selector: str, body: dict | None = None):
        status, data, _, _ = self._send(method, selector, json.dumps(body) if body else None, "application/json",
                                        self.headers)
        if status != 200:
            raise ClientError(status, data)
        return json.loads(data)

    def _multipart(self, method: str, selector: str, fields: dict, files: dict[str, tuple[str, bytes]]):
        lines: list[bytes | str] = []
        for key, value in fields.items():
            lines += ["--" + self.BOUNDARY, f'Content-Disposition: form-data; name="{key}"', "", value]
        for key, (filename, data) in files.items():
            lines += ["--" + self.BOUNDARY, f'Content-Disposition: form-data; name="{key}"; filename="{filename}"',
                      f"Content-Type: {mimetypes.guess_type(filename)[0] or 'application/octet-stream'}", "", data]
        lines += ["--" + self.BOUNDARY + "--", ""]
        body = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\r\n" for line in lines)
        return self._send(method, selector, body, f"multipart/form-data; boundary={self.BOUNDARY}", self.headers)

    def _params(self, params: dict | None) -> dict:
        return {**(params or {}), "client_id": self.client_id}

    # --------------------------------------------------------------------------------------- the client's API

    def auth_enabled(self) -> bool:
        status, data, _, _ = self._send("GET", "/auth/")
        return status == 200 and bool(json.loads(data).get("enabled", False))

    def auth_token(self, username: str, password: str) -> dict:
        body = urlencode({"username": username, "password": password, "grant_type": "password"})
        status, data, _, _ = self._send("POST", "/auth/token", body, "application/x-www-form-urlencoded")
        if status != 200:
            raise ClientError(status, data)
        return json.loads(data)

    def update_auth(self, token: dict) -> None:
        self.headers["Authorization"] = f"{token['token_type']} {token['access_token']}"

    def auth_valid_token(self) -> bool:
        return self._send("GET", "/auth/token/valid", headers=self.headers)[0] == 200

    def info(self) -> dict:
        return self._json("GET", "/info/")

    def next_sample(self, strategy: str, params: dict | None) -> dict:
        return self._json("POST", f"/activelearning/{quote_plus(strategy)}", self._params(params))

    def datastore(self) -> dict:
        return self._json("GET", "/datastore/?output=all")

    def download_label(self, label_id: str, tag: str) -> tuple[str, bytes]:
        status, data, _, headers = self._send("GET", f"/datastore/label?label={quote_plus(label_id)}&tag={tag}",
                                              headers=self.headers)
        if status != 200:
            raise ClientError(status, data)
        return headers.get("content-disposition"), data

    def save_label(self, image_id: str, label: tuple[str, bytes], params: dict | None = None) -> dict:
        status, data, _, _ = self._multipart("PUT", f"/datastore/label?image={quote_plus(image_id)}",
                                             {"params": json.dumps(self._params(params))}, {"label": label})
        if status != 200:
            raise ClientError(status, data)
        return json.loads(data)

    def infer(self, model: str, image_id: str, params: dict) -> tuple[tuple[str, bytes] | None, object]:
        """As the client: ``(file, params)``; without a file it hands back the whole form."""
        status, form, files, _ = self._multipart("POST", f"/infer/{quote_plus(model)}?image={quote_plus(image_id)}",
                                                 {"params": json.dumps(self._params(params))}, {})
        if status != 200:
            raise ClientError(status, form)
        params = form.get("params") if files else form
        params = json.loads(params) if isinstance(params, str) else params
        return (next(iter(files.items())) if files else None), params


def slicer_login(client: ClientWire, password: str) -> None:
    """``MONAILabelLogic._client()``: ask /auth/, log in with the dialog's user name and password, check."""
    if client.auth_enabled():
        client.update_auth(client.auth_token(client.client_id, password))
        assert client.auth_valid_token()


def slicer_label(mask: np.ndarray, segments: list[str], image_class: str | None) -> tuple[tuple[str, bytes], dict]:
    """What 3D Slicer's save_label sends: the segments exported as a NIfTI label map on the image's grid (x by y
    by 1; segment i is value i) and ``{"label_info": [{"name", "idx"}], "model"}``; an image class as one more,
    empty, segment named after it."""
    names = segments + ([image_class] if image_class else [])
    data = gzip.compress(nib.Nifti1Image(mask.T[:, :, None].astype(np.uint8),
                                         np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes())
    return ("label.nii.gz", data), {"label_info": [{"name": n, "idx": i + 1} for i, n in enumerate(names)]}


@pytest.mark.parametrize("kind", ["chest", "cardiac"])
def test_monai_label_client_labels_a_run_to_the_end(tmp_path, kind):
    config = ExperimentConfig.from_dict(CHEST) if kind == "chest" else CollaborativeConfig.from_dict(CARDIAC)
    runner = Runner(config, tmp_path / "run").start()
    server = LiveServer(create_app(runner, TOKEN))
    try:
        client = ClientWire(server.url)
        with pytest.raises(ClientError) as err:  # no login yet
            client.info()
        assert err.value.status == 401
        with pytest.raises(ClientError) as err:
            client.auth_token("user-xyz", "not the token")
        assert err.value.status == 401
        slicer_login(client, TOKEN)
        info = client.info()
        model, strategy = next(iter(info["models"])), next(iter(info["strategies"]))
        segments = list(info["labels"])  # Slicer makes one segment per name, in this order
        assert info["models"][model]["labels"] == info["labels"]
        assert list(info["labels"].values()) == list(range(1, len(segments) + 1)) and "config" not in info
        classes = info["medloop"]["class_names"]
        ds = runner.plan.images
        inferred, proposals, answered = [], [], 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            sample = client.next_sample(strategy, {})
            if not sample.get("id"):
                if runner.phase in ("finished", "error"):
                    break
                time.sleep(0.05)
                continue
            sid = sample["id"]
            assert (tmp_path / "run" / "datastore" / "images" / sample["name"]).is_file()  # Slicer's local load
            if runner.model_round is None:
                with pytest.raises(ClientError) as err:
                    client.infer(model, sid, {"result_extension": ".nrrd", "result_dtype": "uint8"})
                assert err.value.status == 409 and b"no model yet" in err.value.body
            else:
                result, params = client.infer(model, sid, {"result_extension": ".nrrd", "result_dtype": "uint8"})
                assert result is not None and result[0].endswith(".nrrd") and params["label_names"] == info["labels"]
                assert decode_label(result[1], result[0], tuple(ds[ds.sample_ids.index(sid)].mask.shape)).mask.max() \
                    <= max(info["labels"].values())
                inferred.append(sid)
                if "original" in client.datastore()["objects"][sid]["labels"]:
                    disposition, data = client.download_label(sid, "original")
                    assert disposition.endswith('.png"') and data.startswith(b"\x89PNG")
                    proposals.append(sid)
            truth = ds[ds.sample_ids.index(sid)]
            label, params = slicer_label(truth.mask.numpy(), segments, classes[truth.label] if classes else None)
            answer = client.save_label(sid, label, {**params, "model": model})
            assert answer["acknowledged"] and answer["class"] == (truth.label if classes else None)
            answered += 1
        assert runner.phase == "finished", runner.error
        assert answered == len(runner.datastore.answers) == runner.status()["labeled"]
        assert inferred and proposals  # the model proposed masks for what it asked, read as Slicer reads them
        for sid in runner.datastore.answers:  # every label stored as painted, mapped through its segment names
            truth = ds[ds.sample_ids.index(sid)]
            assert np.array_equal(runner.datastore.label(sid, "final"), truth.mask.numpy())

        # a server URL that carries the token: no login, and Slicer's plain image downloads are authorized
        direct = ClientWire(f"{server.url}/t/{TOKEN}")
        assert not direct.auth_enabled() and direct.info()["name"] == info["name"]
        status, data, _, _ = direct._send("GET", f"/datastore/image?image={quote_plus(sid)}")
        assert status == 200 and data.startswith(b"\x89PNG")
    finally:
        server.stop()
