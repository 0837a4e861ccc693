"""List features (embeddings) through gRPC: packed columns, numpy matrices,
and torch tensors."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import redis

from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving.client import FeatureClient
from serving.server import start_server
from test_serving import NOW, PROJECT, LoopThread, put_row

EMB = ViewSpec("emb", "item", (("item_id", "int64"),), "e1e2e3e4", 300_000_000, None,
               row_features=(FeatureSpec("vec", "list<float32>", None, None),
                             FeatureSpec("tags", "list<string>", None, None),
                             FeatureSpec("price", "float64", None, None)),
               aggregations=())
MANIFEST = Manifest(PROJECT, {"emb": EMB}, {"items": (("emb", "*"),)})


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def client(loop, redis_url):
    with contextlib.closing(redis.Redis.from_url(redis_url)) as r:
        put_row(r, EMB, [1], NOW, [[0.5, -1.25, 3.0], ["a", "b"], 9.5])
        put_row(r, EMB, [2], NOW, [[1.0, 2.0, 4.0], [], None])
    server = loop.run(start_server(MANIFEST, redis_url, clock=lambda: NOW))
    try:
        with FeatureClient(server.address) as c:
            yield c
    finally:
        loop.run(server.stop(None))


def test_lists_as_python_numpy_and_pandas(client):
    got = client.get_online_features(service="items", entities={"item_id": [1, 3, 2]})
    d = got.to_dict()
    assert d["vec"] == [[0.5, -1.25, 3.0], None, [1.0, 2.0, 4.0]]
    assert d["tags"] == [["a", "b"], None, []]
    vec = got.to_numpy()["vec"]
    assert vec.shape == (3, 3) and vec.dtype == np.float32
    assert vec.mask[:, 0].tolist() == [False, True, False]
    assert vec[2].tolist() == [1.0, 2.0, 4.0]
    frame = got.to_pandas()
    assert frame["vec"][0].tolist() == [0.5, -1.25, 3.0] and frame["vec"][1] is None


def test_ragged_lists_stay_a_column_of_arrays(client):
    got = client.get_online_features(["emb:tags"], entities={"item_id": [1, 2]})
    tags = got.to_numpy()["tags"]
    assert tags.dtype == object and tags[0].tolist() == ["a", "b"]


def test_torch_tensors_with_masks(client):
    import torch  # the gpu extra, part of the dev install

    got = client.get_online_features(service="items", entities={"item_id": [1, 3, 2]})
    values, present = got.to_torch()
    assert set(values) == {"item_id", "vec", "price"}  # strings have no tensor form
    assert values["vec"].dtype == torch.float32 and values["vec"].shape == (3, 3)
    assert values["vec"][0].tolist() == [0.5, -1.25, 3.0]
    assert torch.isnan(values["vec"][1]).all()
    assert present["vec"].tolist() == [True, False, True]
    price = values["price"].tolist()
    assert price[0] == 9.5 and all(p != p for p in price[1:])  # NaN where not PRESENT
    with pytest.raises(TypeError, match="strings"):
        got.to_torch(names=["tags"])
