"""The annotation server's REST API: the token, ids that cannot leave the run folder, upload checks, MONAI Label
compatible answers, leases over HTTP; never a 500 for a bad request."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medloop.loop import ExperimentConfig
from medloop.serve import Runner, create_app
from tests.serve_support import AUTH, CHEST, TOKEN, png, square


@pytest.fixture
def runner(tmp_path):
    """A served run whose loop is not started: the initial batch is queued by hand (no model, no training)."""
    r = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", lease_seconds=60)
    r.oracle.submit(r.plan.method.initial_ids())
    return r


@pytest.fixture
def client(runner):
    with TestClient(create_app(runner, TOKEN, max_upload_bytes=64 * 1024), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One served run for the tests that change nothing (auth, traversal)."""
    r = Runner(ExperimentConfig.from_dict(CHEST), tmp_path_factory.mktemp("shared") / "run")
    r.oracle.submit(r.plan.method.initial_ids())
    with TestClient(create_app(r, TOKEN), raise_server_exceptions=False) as c:
        yield c


def first(client, who: str = "a") -> str:
    return client.post("/activelearning/uncertainty", headers=AUTH, json={"client_id": who}).json()["id"]


def put(client, image: str, data: bytes, params: dict | str | None = None, headers=AUTH, tag: str = "final"):
    params = {"class": 1, "client_id": "a"} if params is None else params
    return client.put("/datastore/label", params={"image": image, "tag": tag}, headers=headers,
                      files={"label": ("label.png", data, "image/png")},
                      data={"params": params if isinstance(params, str) else json.dumps(params)})


ENDPOINTS = [("get", "/info/"), ("post", "/activelearning/uncertainty"), ("get", "/datastore/?output=all"),
             ("get", "/datastore/image?image=cxr-0001"), ("get", "/datastore/label?label=cxr-0001&tag=final"),
             ("put", "/datastore/label?image=cxr-0001"), ("post", "/infer/mahapatra2018?image=cxr-0001"),
             ("get", "/api/status"), ("get", "/api/item?image=cxr-0001"), ("post", "/api/lease?image=cxr-0001"),
             ("post", "/api/release?image=cxr-0001"), ("get", "/"), ("get", "/static/main.js"),
             ("get", "/api/agreement"), ("get", "/auth/token/valid")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_but_health_needs_the_token(shared, method, path):
    client = shared
    assert client.get("/health/").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer ü-not-ascii".encode("latin-1")},
                    {"Authorization": f"Basic {TOKEN}"}):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path + ("&" if "?" in path else "?") + "token=nope").status_code == 401


def test_header_query_and_browser_cookie_are_accepted(client, runner):
    assert client.get("/info/", headers=AUTH).status_code == 200
    assert client.get(f"/info/?token={TOKEN}").status_code == 200
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # the token leaves the address bar
    cookie = r.headers["set-cookie"]
    assert f"medloop-{runner.run_id[:16]}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/")  # the test client keeps the cookie
    assert page.status_code == 200 and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/main.js").headers["content-type"].startswith("text/javascript")


def test_one_runs_token_and_cookie_do_not_open_another_runs_server(tmp_path, client):
    other = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "other")
    with TestClient(create_app(other, "another-token-123")) as c2:
        assert c2.get("/info/", headers=AUTH).status_code == 401
        client.get(f"/?token={TOKEN}", follow_redirects=False)
        c2.cookies.update(client.cookies)  # a browser that holds the first run's cookie
        assert c2.get("/api/status").status_code == 401
    sid = first(client)
    r = put(client, sid, png(square((32, 32))), {"class": 0, "run_id": other.run_id})
    assert r.status_code == 409 and "another run" in r.json()["detail"]


@pytest.mark.parametrize("path", [
    "/datastore/image?image=../config.yaml", "/datastore/image?image=..%2F..%2Fetc%2Fpasswd",
    "/datastore/image?image=/etc/passwd", "/datastore/image?image=images/cxr-0001.png",
    "/datastore/label?label=../../serve.json&tag=final", "/datastore/label?label=cxr-0001&tag=../../../serve",
    "/datastore/image/info?image=..", "/api/item?image=%00", "/static/..%2Fapp.py", "/static/../app.py",
    "/static/index.html/..", "/static/app.py", f"/t/{TOKEN}/datastore/image?image=../config.yaml",
    f"/t/{TOKEN}/static/..%2Fapp.py", f"/t/{TOKEN}/datastore/label?label=cxr-0001&tag=..%2F..%2Fserve", "/datastore/image?image=" + "x" * 5000])
def test_ids_cannot_reach_outside_the_datastore(shared, path):
    r = shared.get(path, headers=AUTH)
    assert 400 <= r.status_code < 500, r.text
    assert "run_id" not in r.text and "root:" not in r.text  # nothing of the files leaks


def test_monai_label_subset(client, runner):
    info = client.get("/info/", headers=AUTH).json()
    assert {"name", "version", "labels", "models", "strategies", "datastore"} <= set(info)
    assert info["labels"] == {"lung": 1} and list(info["strategies"]) == ["uncertainty"]
    assert info["medloop"]["class_names"] == ["normal", "nodule"] and info["medloop"]["needs_class"]
    assert info["models"]["mahapatra2018"]["labels"] == {"lung": 1} and "config" not in info  # Slicer refuses "config"
    nxt = client.post("/activelearning/uncertainty", headers=AUTH, json={"client_id": "a"}).json()
    initial = runner.plan.method.initial_ids()
    assert nxt["id"] == initial[0] and nxt["name"].endswith(".png") and nxt["path"].endswith(nxt["name"])
    assert nxt["strategy"]["uncertainty"]["client_id"] == "a" and nxt["rank"] == 0
    assert client.post("/activelearning/uncertainty", headers=AUTH).json()["id"] == initial[1]  # anonymous client
    assert client.post("/activelearning/random", headers=AUTH).status_code == 404
    ds = client.get("/datastore/?output=all", headers=AUTH).json()
    assert set(ds) == {"name", "description", "images_dir", "labels_dir", "objects"} and len(ds["objects"]) == 15
    assert client.get("/datastore/", headers=AUTH).json() == {"total": 15, "completed": 0, "label_tags": {}}
    image = client.get(f"/datastore/image?image={nxt['id']}", headers=AUTH)
    assert image.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(image.content))).shape == (32, 32)
    mask = square((32, 32))
    r = put(client, nxt["id"], png(mask), {"class": "nodule", "client_id": "a"})
    assert r.status_code == 200, r.text
    assert r.json() == {"image": nxt["id"], "label": nxt["id"], "tag": "final", "acknowledged": True,
                        "duplicate": False, "class": 1, "review": False, "reads": 1, "reads_per_image": 1,
                        "labeled": 1, "reviewed": 0, "budget": runner.plan.budget}
    back = client.get(f"/datastore/label?label={nxt['id']}&tag=final", headers=AUTH)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(back.content))), mask)
    assert client.get("/datastore/?output=train", headers=AUTH).json()[0]["label"].endswith(".png")
    assert client.get(f"/datastore/image/info?image={nxt['id']}", headers=AUTH).json()["labels"]["final"]["info"]["class"] == 1
    r = client.post(f"/infer/mahapatra2018?image={nxt['id']}", headers=AUTH)
    assert r.status_code == 409 and "no model yet" in r.json()["detail"]  # the loop has not trained
    assert client.post(f"/infer/other?image={nxt['id']}", headers=AUTH).status_code == 404


def test_the_same_label_twice_is_acknowledged_once_a_different_one_refused(client, runner):
    sid = first(client)
    assert put(client, sid, png(square((32, 32)))).json()["duplicate"] is False
    again = put(client, sid, png(square((32, 32))))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = put(client, sid, png(square((32, 32), at=10)))
    assert other.status_code == 409 and "already has a final label" in other.json()["detail"]
    assert len(runner.datastore.answers_path.read_text().splitlines()) == 1


NOISE = png(np.random.default_rng(0).integers(0, 2, (32, 32)))


def bomb_png(width: int, height: int) -> bytes:
    """A one-bit PNG of ``width`` x ``height`` zeros: a few KB that decode to width * height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def coloured(shape):
    pixels = np.zeros((*shape, 3))
    pixels[0, 0] = (1, 0, 0)
    return png(pixels)


def transparent(shape):
    pixels = np.full((*shape, 4), 255)
    pixels[..., 0:3] = 0
    pixels[0, 0, 3] = 0
    return png(pixels)


BAD_UPLOADS = [
    (b"", None, 400, "empty"),
    (b"GIF89a not a png", None, 415, "not a PNG"),
    (png(np.zeros((32, 32))), "not json", 400, "JSON object"),
    (png(np.zeros((32, 32))), "[1, 2]", 400, "JSON object"),
    (png(np.zeros((16, 32))), None, 422, "is 32 x 16 (width x height) but the image is 32 x 32"),
    (bomb_png(20000, 20000), None, 422, "is 20000 x 20000 (width x height)"),
    (coloured((32, 32)), None, 422, "in colour"),
    (transparent((32, 32)), None, 422, "transparent"),
    (png(square((32, 32), value=7)), None, 422, "label values 7 of 'label.png'"),
    (png(np.full((32, 32), 255)), None, 422, "label values 255"),
    (b"NRRD0004\ntype: uchar\n", None, 422, "no end of header"),
    (b"\x1f\x8b" + bytes(40), None, 422, "cannot be decompressed"),
    (NOISE[: len(NOISE) // 2], None, 422, "cannot be decoded"),
    (png(np.zeros((32, 32))), {"client_id": "a"}, 422, "params.class"),
    (png(np.zeros((32, 32))), {"class": 2}, 422, "params.class"),
    (png(np.zeros((32, 32))), {"class": True}, 422, "params.class"),
    (png(np.zeros((32, 32))), {"class": "pneumonia"}, 422, "params.class"),
    (png(np.zeros((32, 32))), {"class": 0, "client_id": "x" * 65}, 400, "client_id"),
]


@pytest.mark.parametrize("data,params,status,message", BAD_UPLOADS, ids=[f"{b[2]}-{b[3]}" for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_naming_the_problem(client, runner, data, params, status, message):
    sid = first(client)
    r = put(client, sid, data, params)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert runner.datastore.answer(sid) is None


def test_other_bad_requests_are_4xx(client, runner):
    sid = first(client)
    big = put(client, sid, b"\x89PNG\r\n\x1a\n" + bytes(70 * 1024))
    assert big.status_code == 413 and "larger than" in big.json()["detail"]
    assert put(client, sid, png(np.zeros((32, 32))), tag="original").status_code == 400
    assert put(client, "nope", png(np.zeros((32, 32)))).status_code == 404
    no_file = client.put(f"/datastore/label?image={sid}", headers=AUTH, data={"params": "{}"})
    assert no_file.status_code == 422 and "label" in no_file.json()["detail"]
    not_asked = next(s for s in runner.datastore.ids if s not in runner.plan.method.initial_ids())
    r = put(client, not_asked, png(np.zeros((32, 32))))
    assert r.status_code == 409 and "not in the annotation queue" in r.json()["detail"]
    assert client.get("/datastore/?output=everything", headers=AUTH).status_code == 422
    r = client.post("/activelearning/uncertainty", headers={**AUTH, "Content-Type": "application/json"},
                    content=b"{bad json")
    assert r.status_code == 422
    assert client.get("/api/item", headers=AUTH).status_code == 422  # image missing
    assert client.post(f"/infer/mahapatra2018?image={sid}&output=nifti", headers=AUTH).status_code == 422


def test_leases_over_http(client, runner):
    a = first(client, "a")
    b = first(client, "b")
    assert a != b
    r = put(client, a, png(square((32, 32))), {"class": 0, "client_id": "b"})
    assert r.status_code == 409 and "another annotator" in r.json()["detail"]
    taken = client.post(f"/api/lease?image={a}&client_id=b", headers=AUTH)
    assert taken.status_code == 409
    assert client.post(f"/api/release?image={a}&client_id=a", headers=AUTH).status_code == 200
    assert client.post(f"/api/lease?image={a}&client_id=b", headers=AUTH).json()["yours"] is True
    queue = client.get("/api/status?client_id=b", headers=AUTH).json()["queue"]
    assert [q["id"] for q in queue] == runner.plan.method.initial_ids()
    assert {q["id"]: q["yours"] for q in queue}[a] is True


def test_lease_expiry_over_http(tmp_path):
    now = [1000.0]  # the leases' clock, moved by the test
    r = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", lease_seconds=300, clock=lambda: now[0])
    r.oracle.submit(r.plan.method.initial_ids())
    with TestClient(create_app(r, TOKEN)) as client:
        a = first(client, "a")
        now[0] += 299.5
        assert put(client, a, png(square((32, 32))), {"class": 0, "client_id": "b"}).status_code == 409
        now[0] += 0.5  # the lease ends exactly now
        assert put(client, a, png(square((32, 32))), {"class": 0, "client_id": "b"}).status_code == 200


def test_item_for_the_ui_holds_raw_arrays(client, runner):
    sid = first(client)
    item = client.get(f"/api/item?image={sid}", headers=AUTH).json()
    import base64

    pixels = np.frombuffer(base64.b64decode(item["image"]), np.uint8).reshape(item["height"], item["width"])
    assert np.array_equal(pixels, runner.datastore.image(sid))
    assert item["proposal"] is None and item["final"] is None and item["class"] is None
    put(client, sid, png(square((32, 32))))
    item = client.get(f"/api/item?image={sid}", headers=AUTH).json()
    final = np.frombuffer(base64.b64decode(item["final"]), np.uint8).reshape(32, 32)
    assert np.array_equal(final, square((32, 32))) and item["class"] == 1
    status = client.get("/api/status", headers=AUTH).json()
    assert status["labeled"] == 1 and status["phase"] == "waiting for labels" and status["run_id"] == runner.run_id


# ------------------------------------------------------------------------------ MONAI Label's client, 3D Slicer


def test_monai_label_auth_routes_exchange_and_check_the_run_token(shared):
    client = shared
    assert client.get("/auth/").json() == {"enabled": True, "client_id": "medloop", "realm": None}
    form = {"username": "slicer-user", "password": TOKEN, "grant_type": "password"}
    assert client.post("/auth/token", data=form).json() == {"access_token": TOKEN, "token_type": "Bearer"}
    wrong = client.post("/auth/token", data={**form, "password": "guess"})
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"] and TOKEN not in wrong.text
    assert client.post("/auth/token", data={**form, "grant_type": "client_credentials"}).status_code == 400
    assert client.get("/auth/token/valid").status_code == 401
    assert client.get("/auth/token/valid", headers=AUTH).json()["username"] == "annotator"


def test_a_server_url_that_carries_the_token(shared):
    """3D Slicer downloads images with a plain GET of <server URL>/datastore/image: /t/TOKEN authorizes it."""
    client = shared
    image = client.get("/datastore/?output=all", headers=AUTH).json()["objects"]
    sid = next(iter(image))
    r = client.get(f"/t/{TOKEN}/datastore/image", params={"image": sid})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get(f"/t/{TOKEN}/auth/").json()["enabled"] is False  # no login dialog: the URL is the login
    assert client.get(f"/t/{TOKEN}/info/").status_code == 200
    for bad in ("/t/wrong/info/", "/t//info/", f"/t/{TOKEN}x/info/", "/t/wrong/datastore/image?image=" + sid):
        assert client.get(bad).status_code == 401, bad
    assert client.get("/t/wrong/auth/").json()["enabled"] is True
    assert client.get("/t/wrong/info/", headers=AUTH).status_code == 401  # the URL's token is the one checked


def slicer_params(segments: list[tuple[str, int]]) -> dict:
    """``params`` as 3D Slicer's save_label sends them: its segments' names and values, the model."""
    return {"label_info": [{"name": n, "idx": i} for n, i in segments], "model": "mahapatra2018",
            "client_id": "user-xyz"}


def slicer_nifti(mask: np.ndarray) -> bytes:
    """The labelmap Slicer exports for a 2D image: x by y by 1, NIfTI, gzip."""
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(mask.T[:, :, None], np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes())


def put_file(client, image: str, data: bytes, name: str, params: dict, who: str = "user-xyz"):
    return client.put("/datastore/label", params={"image": image}, headers=AUTH,
                      files={"label": (name, data, "application/octet-stream")}, data={"params": json.dumps(params)})


def test_slicer_save_label_sets_the_class_by_a_segment_named_after_it(client, runner):
    sid = first(client, "user-xyz")
    lung = square((32, 32))
    missing = put_file(client, sid, slicer_nifti(lung), "label.nii.gz", slicer_params([("lung", 1)]))
    assert missing.status_code == 422 and "add an empty segment named after the class" in missing.json()["detail"]
    both = put_file(client, sid, slicer_nifti(lung), "label.nii.gz",
                    slicer_params([("lung", 1), ("normal", 2), ("class: nodule", 3)]))
    assert both.status_code == 422 and "more than one image class" in both.json()["detail"]
    # segments in another order than the run's values, the class segment painted by mistake: mapped by name
    painted = square((32, 32), value=2) + square((32, 32), value=1, at=20, size=3)
    r = put_file(client, sid, slicer_nifti(painted), "label.nii.gz", slicer_params([("Nodule", 1), ("lung", 2)]))
    assert r.status_code == 200, r.text
    assert r.json()["class"] == 1 and np.array_equal(runner.datastore.label(sid, "final"), lung)


def test_segments_that_are_not_labels_of_the_run_are_refused_by_name(client):
    sid = first(client, "user-xyz")
    r = put_file(client, sid, slicer_nifti(square((32, 32), value=1)), "label.nii.gz",
                 slicer_params([("liver", 1), ("normal", 2)]))
    assert r.status_code == 422 and "label values 1 (liver) of 'label.nii.gz'" in r.json()["detail"]
    bad = put_file(client, sid, png(square((32, 32))), "label.png", {"label_info": {"lung": 1}})
    assert bad.status_code == 400 and "params.label_info" in bad.json()["detail"]


def fake_model(runner, mask: np.ndarray | None, with_probs: bool = True):
    """The runner's latest model, as /infer sees it, without training one."""
    from medloop.loop import Proposal

    probs = np.array([0.25, 0.75]) if with_probs else None
    uncertainty = None if mask is None else np.full(mask.shape, 0.5)
    runner.infer = lambda sid: (3, Proposal(mask, probs, uncertainty))


def parse_multipart(response) -> dict[str, tuple[str | None, bytes]]:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content)
    return {part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()}


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".png", None])
def test_infer_answers_monai_labels_multipart_in_the_asked_format(client, runner, ext):
    from medloop.serve.labelfile import decode_label

    sid = first(client)
    fake_model(runner, square((32, 32)))
    params = {"result_extension": ext, "result_dtype": "uint8", "client_id": "user-xyz"} if ext else {}
    r = client.post("/infer/mahapatra2018", params={"image": sid}, headers=AUTH, data={"params": json.dumps(params)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/form-data")
    parts = parse_multipart(r)
    answer = json.loads(parts["params"][1])
    assert answer["label_names"] == {"lung": 1} and answer["model_round"] == 3
    assert answer["class_probabilities"] == {"normal": 0.25, "nodule": 0.75} and answer["uncertainty_mean"] == 0.5
    filename, data = parts["image"]
    assert filename == f"{sid}{ext or '.png'}"
    assert np.array_equal(decode_label(data, filename, (32, 32)).mask, square((32, 32)))


def test_infer_without_a_mask_still_answers_the_clients_format(client, runner):
    sid = first(client)
    fake_model(runner, None)  # method 1 before its segmenter trains: class probabilities only
    r = client.post("/infer/mahapatra2018", params={"image": sid}, headers=AUTH, data={"params": "{}"})
    parts = parse_multipart(r)
    assert set(parts) == {"params"} and "segmenter" in json.loads(parts["params"][1])["note"]
    assert client.post(f"/infer/mahapatra2018?image={sid}&output=json", headers=AUTH).json()["model_round"] == 3
    image = client.post(f"/infer/mahapatra2018?image={sid}&output=image", headers=AUTH)
    assert image.status_code == 409 and "output=json" in image.json()["detail"]


def test_infer_refuses_what_it_cannot_do_with_a_4xx(client, runner):
    sid = first(client)
    fake_model(runner, square((32, 32)))
    for query, body, message in [
            ({"image": sid}, {"params": '{"result_extension": ".dcm"}'}, "result_extension"),
            ({"image": sid}, {"params": "[]"}, "JSON object"),
            ({}, {"params": "{}"}, "'image' query parameter"),
            ({"image": sid, "session_id": "s1"}, {"params": "{}"}, "no sessions")]:
        r = client.post("/infer/mahapatra2018", params=query, headers=AUTH, data=body)
        assert 400 <= r.status_code < 500 and message in r.json()["detail"], (query, r.text)
    r = client.post("/infer/mahapatra2018", params={"image": sid}, headers=AUTH,
                    files={"file": ("x.nii.gz", b"x")}, data={"params": "{}"})
    assert r.status_code == 422 and "uploaded images" in r.json()["detail"]


def test_the_ui_is_told_why_an_image_has_no_uncertainty_map(client, runner):
    sid = first(client)
    item = client.get(f"/api/item?image={sid}", headers=AUTH).json()
    assert item["uncertainty"] is None and "no model has seen this image" in item["no_uncertainty"]
    info = client.get("/info/", headers=AUTH).json()["medloop"]
    assert set(info["hints"]) == {"task", "proposal", "uncertainty", "no_uncertainty"}
    assert "image class" in info["hints"]["task"] and info["labels"] == {"lung": 1}


def test_two_annotators_read_the_same_image_and_see_their_agreement(tmp_path):
    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", reads_per_image=2)
    runner.oracle.submit(runner.plan.method.initial_ids())
    with TestClient(create_app(runner, TOKEN), raise_server_exceptions=False) as client:
        assert client.get("/info/", headers=AUTH).json()["medloop"]["reads_per_image"] == 2
        sid = first(client, "a")
        assert first(client, "b") == sid  # the second read of the first image
        assert first(client, "c") != sid
        r = put(client, sid, png(square((32, 32), size=8)), {"class": 1, "client_id": "a"})
        assert r.status_code == 200 and r.json()["reads"] == 1 and r.json()["labeled"] == 0
        mine = client.get("/api/status?client_id=a", headers=AUTH).json()
        assert mine["reads_per_image"] == 2 and mine["reads"] == 1
        assert {q["id"]: (q["read_by_you"], q["open"]) for q in mine["queue"]}[sid] == (True, False)
        again = put(client, sid, png(square((32, 32), at=6)), {"class": 1, "client_id": "a"})
        assert again.status_code == 409 and "already labeled" in again.json()["detail"]
        assert client.get("/api/agreement", headers=AUTH).json()["images_read"] == 0
        r = put(client, sid, png(square((32, 32), size=4)), {"class": 1, "client_id": "b"})
        assert r.json()["reads"] == 2 and r.json()["labeled"] == 1
        consensus = Image.open(io.BytesIO(client.get(f"/datastore/label?label={sid}", headers=AUTH).content))
        assert np.array_equal(np.asarray(consensus), square((32, 32), size=4))  # the pixels both painted
        agreement = client.get("/api/agreement", headers=AUTH).json()
    assert agreement["reads_per_image"] == 2 and agreement["images_read"] == 1
    assert [a["annotator"] for a in agreement["annotators"]] == ["a", "b"]
    assert agreement["annotators"][0]["dice"]["lung"] == pytest.approx(2 * 16 / (64 + 16))
    assert agreement["most_disagreement"][0]["image"] == sid


def test_reads_per_image_is_an_experiment_key_that_serve_honours_and_run_refuses(tmp_path):
    from medloop.errors import ConfigError
    from medloop.loop import run_experiment

    config = ExperimentConfig.from_dict({**CHEST, "reads_per_image": 2})
    assert Runner(config, tmp_path / "served").reads_per_image == 2  # the experiment asks for two readers
    assert Runner(config, tmp_path / "cli", reads_per_image=3).reads_per_image == 3  # the CLI option wins
    with pytest.raises(ConfigError, match="medloop serve"):
        run_experiment(config, tmp_path / "run", progress=False)  # the ground truth reads each image once
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="reads_per_image"):
        ExperimentConfig.from_dict({**CHEST, "reads_per_image": 0})
