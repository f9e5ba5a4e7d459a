"""FID Inception port: the published weights' layout, pool3 features, where the weights come
from (configured file, cache, download) and how it fails when they cannot be had."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from trainers.metrics.inception import (
    CACHE_DIR_ENV,
    OFFLINE_ENV,
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_SHA256,
    WEIGHTS_URL,
    FIDInception,
    InceptionWeightsUnavailable,
    inception_weights_path,
    load_fid_inception,
)

PUBLISHED_KEYS = Path(__file__).parent / "data" / "pt_inception_2015_12_05_keys.txt"


def published_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) per line of the published key list; 'scalar' is a 0-d tensor."""
    rows = []
    for line in PUBLISHED_KEYS.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape = line.split("\t")
        rows.append((name, () if shape == "scalar" else tuple(int(n) for n in shape.split(","))))
    return rows


@pytest.fixture(scope="module")
def model() -> FIDInception:
    torch.manual_seed(0)
    return FIDInception().eval()


@pytest.fixture
def empty_cache(monkeypatch, tmp_path) -> Path:
    """No configured weights file, downloads allowed, and an empty cache folder."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    return cache


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not see it
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_state_dict_is_the_published_files(model):
    published = published_shapes()
    ours = [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]
    assert len(ours) == len(published)
    assert dict(ours) == dict(published)


def test_pinned_digest_agrees_with_the_file_name():
    """torch.hub's convention: the 8 hex digits in the name start the file's sha256."""
    name_prefix = re.fullmatch(r"pt_inception-2015-12-05-([0-9a-f]{8})\.pth", WEIGHTS_FILENAME)
    assert name_prefix and WEIGHTS_SHA256.startswith(name_prefix.group(1))
    assert WEIGHTS_URL.endswith("/" + WEIGHTS_FILENAME)


def test_features_are_pool3(model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        features = model(images)
    assert features.shape == (2, 2048)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert (features >= 0).all()  # average of ReLU outputs
    assert features.sum() > 0


def test_loader_reads_the_configured_file(monkeypatch, tmp_path):
    torch.manual_seed(1)
    source = FIDInception()
    for buffer in source.buffers():
        if buffer.is_floating_point():  # running stats away from their defaults
            buffer.uniform_(0.5, 1.5)
    weights = tmp_path / "inception.pth"
    torch.save(source.state_dict(), weights)
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    monkeypatch.setenv(OFFLINE_ENV, "1")

    loaded = load_fid_inception()

    expected = source.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    assert not loaded.training
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_configured_file_missing_names_the_variable(monkeypatch, tmp_path):
    missing = tmp_path / "absent.pth"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(InceptionWeightsUnavailable, match=WEIGHTS_ENV) as error:
        load_fid_inception()
    assert str(missing) in str(error.value)


def test_offline_without_weights_says_how_to_supply_them(empty_cache, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(InceptionWeightsUnavailable) as error:
        inception_weights_path()
    message = str(error.value)
    assert WEIGHTS_ENV in message
    assert WEIGHTS_URL in message
    assert str(empty_cache / WEIGHTS_FILENAME) in message
    assert list(empty_cache.iterdir()) == []


def test_cached_file_is_used_without_network(empty_cache, monkeypatch):
    cached = empty_cache / WEIGHTS_FILENAME
    cached.write_bytes(b"weights")
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert inception_weights_path() == cached


def test_download_with_the_wrong_digest_is_rejected(empty_cache, file_server):
    served, base_url = file_server
    content = b"not the inception weights\n" * 4096
    assert not hashlib.sha256(content).hexdigest().startswith(WEIGHTS_SHA256[:8])
    (served / WEIGHTS_FILENAME).write_bytes(content)

    with pytest.raises(InceptionWeightsUnavailable, match="sha256"):
        inception_weights_path(url=f"{base_url}/{WEIGHTS_FILENAME}")
    assert list(empty_cache.iterdir()) == []


def test_failed_download_says_how_to_supply_the_file(empty_cache, file_server):
    _, base_url = file_server
    url = f"{base_url}/{WEIGHTS_FILENAME}"  # nothing served: 404
    with pytest.raises(InceptionWeightsUnavailable, match="could not download") as error:
        inception_weights_path(url=url)
    assert WEIGHTS_ENV in str(error.value) and url in str(error.value)
    assert list(empty_cache.iterdir()) == []
