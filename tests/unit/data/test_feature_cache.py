import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from metamapper.data import feature_cache
from metamapper.data.fashion import FashionImageSource
from metamapper.data.feature_cache import FeatureCache
from metamapper.data.images import FolderImageSource


@pytest.fixture
def folder(tmp_path, write_image):
    root = tmp_path / "imgs"
    for i in range(10):
        write_image(root / f"{i}.png", (i * 20, 255 - i * 20, 7))
    return FolderImageSource(root)


def test_second_fill_does_no_forward_pass(fashion_root, tmp_path, make_encoder):
    source = FashionImageSource(fashion_root, "train")
    keys = [source.key(i) for i in range(2000)]
    enc = make_encoder()
    cache = FeatureCache(tmp_path / "cache", enc)
    report = cache.fill(source, keys, batch_size=256, progress=False)
    assert (report.encoded, report.skipped, enc.images) == (2000, [], 2000)
    assert enc.calls == 8
    assert cache.fill(source, keys, progress=False).encoded == 0
    # A new run (new process, new encoder object with the same identity): nothing to encode.
    enc2 = make_encoder()
    cache2 = FeatureCache(tmp_path / "cache", enc2)
    report2 = cache2.fill(source, keys + [source.key(2000)], progress=False)
    assert (report2.encoded, report2.cached, enc2.images) == (1, 2000, 1)
    feats = cache2.get(source, [keys[5], keys[1999], keys[5]])
    assert feats.shape == (3, 2, 4)
    want = make_encoder().encode([source.load(keys[5]), source.load(keys[1999])])
    torch.testing.assert_close(feats, torch.cat([want, want[:1]]))
    assert (source, keys[7]) in cache2 and (source, "train/059999") not in cache2
    assert cache2.missing(source, [keys[0], "train/059999"]) == ["train/059999"]


def test_get_round_trip_and_missing_key_error(tmp_path, folder, counting_encoder):
    cache = FeatureCache(tmp_path / "c", counting_encoder, shard_bytes=3 * 32)  # >= 3 rows a shard
    keys = folder.keys()
    cache.fill(folder, keys, batch_size=4, progress=False)
    assert len(list(cache.shard_dir.glob("*.safetensors"))) == 3  # 4 + 4 + 2 rows
    order = keys[::-1]
    want = counting_encoder.encode([folder.load(k) for k in order])
    torch.testing.assert_close(cache.get(folder.identity, order), want)
    with pytest.raises(KeyError, match="nope.png"):
        cache.get(folder, ["nope.png"])
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["identity"] == "counting:v1" and manifest["n_tokens"] == 2


def test_corrupt_and_partial_shards_are_removed_and_rebuilt(tmp_path, folder, make_encoder,
                                                            caplog):
    enc = make_encoder()
    cache = FeatureCache(tmp_path / "c", enc, shard_bytes=5 * 32)  # two shards of 5
    keys = folder.keys()
    cache.fill(folder, keys, batch_size=5, progress=False)
    shards = sorted(cache.shard_dir.glob("*.safetensors"))
    assert len(shards) == 2
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) - 7])  # partial write
    # A shard whose metadata lists fewer keys than rows.
    save_file({"features": torch.zeros(3, 2, 4)}, str(cache.shard_dir / "z.safetensors"),
              metadata={"keys": json.dumps([[folder.identity, "x"]])})
    (cache.shard_dir / "junk.safetensors").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="metamapper.data.feature_cache"):
        enc2 = make_encoder()
        reopened = FeatureCache(tmp_path / "c", enc2)
    text = caplog.text
    assert "partial" in text and "1 keys for 3 rows" in text and "junk.safetensors" in text
    assert sorted(p.name for p in cache.shard_dir.glob("*.safetensors")) == [shards[1].name]
    lost = reopened.missing(folder, keys)
    assert len(lost) == 5
    assert reopened.fill(folder, keys, progress=False).encoded == 5 and enc2.images == 5
    assert reopened.missing(folder, keys) == []


def test_bad_image_is_skipped_and_listed(tmp_path, folder, counting_encoder, caplog):
    (folder.root / "broken.jpg").write_bytes(b"not a jpeg")
    (folder.root / "empty.png").write_bytes(b"")
    cache = FeatureCache(tmp_path / "c", counting_encoder)
    with caplog.at_level(logging.WARNING, logger="metamapper.data.feature_cache"):
        report = cache.fill(folder, folder.keys(), batch_size=3, progress=False)
    assert report.encoded == 10
    assert [k for k, _ in report.skipped] == ["broken.jpg", "empty.png"]
    assert "0 bytes" in report.skipped[1][1]
    assert "skipped 2 image(s)" in caplog.text and "broken.jpg" in caplog.text
    assert cache.missing(folder, folder.keys()) == ["broken.jpg", "empty.png"]


def test_identity_and_dtype_select_separate_stores(tmp_path, folder, make_encoder):
    a, b = make_encoder("enc-a"), make_encoder("enc-b")
    FeatureCache(tmp_path, a).fill(folder, folder.keys(), progress=False)
    cache_b = FeatureCache(tmp_path, b)
    assert cache_b.missing(folder, folder.keys()) == folder.keys()
    half = FeatureCache(tmp_path, make_encoder("enc-a"), dtype=torch.float16)
    assert half.dir != FeatureCache(tmp_path, a).dir and len(half) == 0
    half.fill(folder, folder.keys()[:2], progress=False)
    assert half.get(folder, folder.keys()[:2]).dtype == torch.float16


def test_two_writers_share_one_store(tmp_path, folder, make_encoder):
    keys = folder.keys()
    w1, w2 = FeatureCache(tmp_path, make_encoder()), FeatureCache(tmp_path, make_encoder())
    w1.fill(folder, keys[:6], progress=False)
    w2.fill(folder, keys[4:], progress=False)  # sees w1's shards on refresh: encodes 6..9 only
    assert w2.get(folder, keys).shape == (10, 2, 4)
    assert w1.get(folder, keys[8:]).shape == (2, 2, 4)  # picks up w2's shard on a miss
    assert not list(w1.shard_dir.glob(".tmp-*"))


def test_interrupted_fill_keeps_written_work(tmp_path, folder, make_encoder):
    enc = make_encoder()
    calls = {"n": 0}
    original = enc.encode

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(images)

    enc.encode = flaky
    cache = FeatureCache(tmp_path, enc)
    with pytest.raises(RuntimeError, match="boom"):
        cache.fill(folder, folder.keys(), batch_size=2, progress=False)
    assert len(FeatureCache(tmp_path, make_encoder()).missing(folder, folder.keys())) == 6


def test_fill_skips_keys_another_writer_stored_meanwhile(tmp_path, folder, make_encoder,
                                                         monkeypatch):
    monkeypatch.setattr(feature_cache, "_REFRESH_S", 0.0)
    keys = folder.keys()
    other = FeatureCache(tmp_path, make_encoder())
    enc = make_encoder()
    original = enc.encode

    def encode(images):
        if enc.calls == 0:  # while we encode batch 1, another process stores batch 2
            other.fill(folder, keys[5:], progress=False)
        return original(images)

    enc.encode = encode
    report = FeatureCache(tmp_path, enc).fill(folder, keys, batch_size=5, progress=False)
    assert (report.encoded, report.cached, enc.images) == (5, 5, 5)


def test_a_mixture_shares_its_parts_features(tmp_path, folder, write_image, counting_encoder):
    from metamapper.data.images import FolderImageSource
    from metamapper.data.mixture import MixtureImageSource

    other_root = tmp_path / "other"
    for i in range(3):
        write_image(other_root / f"{i}.png", (7, i * 50, 9))
    other = FolderImageSource(other_root)
    cache = FeatureCache(tmp_path / "c", counting_encoder)
    cache.fill(folder, folder.keys()[:6], progress=False)  # a single-source run encoded these
    mix = MixtureImageSource({"a": folder, "b": other})
    keys = [f"a:{k}" for k in folder.keys()] + [f"b:{k}" for k in other.keys()]
    before = counting_encoder.images
    report = cache.fill(mix, keys, progress=False)
    assert (report.cached, report.encoded, counting_encoder.images - before) == (6, 7, 7)
    torch.testing.assert_close(cache.get(mix, ["a:3.png", "b:1.png"]),
                               torch.cat([cache.get(folder, ["3.png"]), cache.get(other, ["1.png"])]))
    assert (other, "2.png") in cache and (mix, "b:2.png") in cache
    assert cache.missing(MixtureImageSource({"a": folder, "c": other}), ["c:0.png"]) == []
