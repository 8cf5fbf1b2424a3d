"""The adapter registry: checked names, atomic saves, and clear refusals of damaged or foreign adapters."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

import mtlora
from mtlora import (
    AdapterNotFoundError,
    BaseModelMismatchError,
    CorruptAdapterError,
    Registry,
    RegistryError,
    load_config,
)
from mtlora.modeling import load_adapter_model


@pytest.fixture
def registry_copy(trained_project: Path, tmp_path: Path) -> Registry:
    """A private copy of the trained registry, for tests that damage it."""
    source = load_config(trained_project).registry
    shutil.copytree(source, tmp_path / "adapters")
    return Registry(tmp_path / "adapters")


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", "/abs"])
def test_names_that_leave_the_registry_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="not allowed"):
        Registry(tmp_path).path(name)


def test_unknown_adapter_lists_the_stored_ones(registry_copy: Registry) -> None:
    with pytest.raises(AdapterNotFoundError, match=r"No adapter 'nope' in registry .*Available: paraphrase, qa, "
                                                   r"sentiment, similarity, support"):
        registry_copy.manifest("nope")


def test_listing_skips_internal_folders_and_folders_without_a_manifest(registry_copy: Registry) -> None:
    (registry_copy.root / "half-copied").mkdir()
    (registry_copy.root / "half-copied" / "adapter_config.json").write_text("{}")
    assert registry_copy.names() == ["paraphrase", "qa", "sentiment", "similarity", "support"]


def test_damaged_weights_are_refused(registry_copy: Registry, trained_project: Path) -> None:
    weights = registry_copy.path("sentiment") / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapterError, match="does not match its checksum; the adapter is damaged, retrain"):
        load_adapter_model(registry_copy, "sentiment", load_config(trained_project).backbone)


def test_missing_file_is_refused(registry_copy: Registry) -> None:
    (registry_copy.path("qa") / "adapter_config.json").unlink()
    with pytest.raises(CorruptAdapterError, match=r"adapter_config\.json is missing"):
        registry_copy.verified("qa")


def test_adapter_on_another_base_is_refused(registry_copy: Registry, other_tiny_bert: Path) -> None:
    with pytest.raises(BaseModelMismatchError, match=r"was trained on base model .* but the backbone given is"):
        load_adapter_model(registry_copy, "sentiment", str(other_tiny_bert))


def test_crash_during_save_leaves_the_previous_adapter(registry_copy: Registry) -> None:
    before = registry_copy.verified("sentiment")

    def crash(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry_copy.save("sentiment", crash, before)
    assert registry_copy.verified("sentiment") == before


def test_crash_during_first_save_leaves_nothing_loadable(registry_copy: Registry) -> None:
    manifest = registry_copy.manifest("sentiment").model_copy(update={"name": "fresh"})

    def crash(folder: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry_copy.save("fresh", crash, manifest)
    assert "fresh" not in registry_copy.names()
    with pytest.raises(AdapterNotFoundError):
        registry_copy.manifest("fresh")


def test_a_save_cut_between_its_renames_is_recovered_by_the_next_reader(registry_copy: Registry) -> None:
    before = registry_copy.verified("sentiment")
    registry_copy.staging.mkdir()
    # An older copy, left by an earlier crash, must not come back in place of the newest.
    older = registry_copy.staging / "sentiment.old-earlier"
    shutil.copytree(registry_copy.path("support"), older)
    os.utime(older, (1, 1))
    os.rename(registry_copy.path("sentiment"), registry_copy.staging / "sentiment.old-crashed")  # then the crash
    assert registry_copy.verified("sentiment") == before


def test_a_save_whose_new_folder_fails_to_move_in_leaves_the_old_one_to_come_back(
        registry_copy: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old folder is already aside when the new one's rename fails (a full disk, say): it must be
    kept where the next reader puts it back, and the new one, never complete in place, be gone."""
    before = registry_copy.verified("sentiment")
    rename = os.rename

    def failing_to_move_in(source: str | Path, destination: str | Path) -> None:
        if ".new-" in Path(source).name:
            raise OSError("no space left on device")
        rename(source, destination)

    monkeypatch.setattr(os, "rename", failing_to_move_in)
    with pytest.raises(OSError, match="no space left"):
        registry_copy.save("sentiment", lambda folder: shutil.copytree(registry_copy.path("support"), folder,
                                                                        dirs_exist_ok=True),
                           before.model_copy(update={"created_at": "the new one"}))
    monkeypatch.undo()
    assert [p.name.split("-")[0] for p in registry_copy.staging.iterdir()] == ["sentiment.old"]
    assert registry_copy.verified("sentiment") == before
    assert not any(registry_copy.staging.glob("*"))


def test_a_reader_waits_out_a_live_save_instead_of_undoing_it(registry_copy: Registry, tmp_path: Path) -> None:
    """Between a save's two renames the adapter's folder is gone, as after a crash there: a reader must
    not put the old one back then, or the save's second rename fails and the new adapter is lost."""
    target = registry_copy.path("sentiment")
    new = tmp_path / "new"
    shutil.copytree(target, new)
    manifest = registry_copy.manifest("sentiment").model_copy(update={"created_at": "the new one"})
    (new / "manifest.json").write_text(manifest.model_dump_json())
    registry_copy.staging.mkdir()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.append(registry_copy.manifest("sentiment").created_at))
    with registry_copy.swapping():  # the save's swap, as atomic.staged_folder makes it
        os.rename(target, registry_copy.staging / "sentiment.old-live")
        reader.start()
        reader.join(0.3)
        assert reader.is_alive(), "the reader did not wait for the swap"
        os.rename(new, target)
    reader.join(5)
    assert seen == ["the new one"]


def test_a_manifest_rewrite_refuses_an_adapter_saved_again_since_it_was_read(registry_copy: Registry) -> None:
    """Evaluation writes its metrics into the manifest it evaluated, not into a retrained adapter's."""
    evaluated = registry_copy.manifest("sentiment")
    registry_copy.save("sentiment", lambda folder: shutil.copytree(registry_copy.path("support"), folder,
                                                                    dirs_exist_ok=True),
                       evaluated.model_copy(update={"created_at": "retrained"}))
    with pytest.raises(RegistryError, match=r"'sentiment' was saved again .* evaluate it again"):
        registry_copy.record_metrics("sentiment", evaluated, "validation", {"accuracy": 1.0})
    assert registry_copy.manifest("sentiment").metrics == evaluated.metrics


def test_an_adapters_version_is_its_save_and_an_unreadable_one_has_none(registry_copy: Registry) -> None:
    """Reports tell a retrained adapter by its version: metrics recorded keep it, a save changes it, and one
    damaged manifest leaves the others' versions readable (a listing is no place to fail)."""
    before = registry_copy.versions()
    evaluated = registry_copy.manifest("sentiment")
    assert before["sentiment"] == evaluated.version
    registry_copy.record_metrics("sentiment", evaluated, "test", {"accuracy": 0.5})
    assert registry_copy.manifest("sentiment").version == evaluated.version
    registry_copy.save("sentiment", lambda folder: shutil.copytree(registry_copy.path("sentiment"), folder,
                                                                    dirs_exist_ok=True),
                       evaluated.model_copy(update={"created_at": "retrained"}))
    assert registry_copy.manifest("sentiment").version != evaluated.version
    (registry_copy.path("support") / "manifest.json").write_text("{")
    after = registry_copy.versions()
    assert after["support"] is None and after["qa"] == before["qa"] and after["sentiment"] is not None


def test_evaluations_of_two_splits_both_keep_their_metrics(registry_copy: Registry) -> None:
    """Each adds its split to the manifest as it is when it writes, not as it was when it started."""
    evaluated = registry_copy.manifest("sentiment")  # both evaluations start from this
    registry_copy.record_metrics("sentiment", evaluated, "test", {"accuracy": 0.5})
    registry_copy.record_metrics("sentiment", evaluated, "train", {"accuracy": 0.9})
    metrics = registry_copy.manifest("sentiment").metrics
    assert metrics["test"] == {"accuracy": 0.5} and metrics["train"] == {"accuracy": 0.9}


def test_a_manifest_from_a_newer_mtlora_asks_for_an_upgrade(registry_copy: Registry) -> None:
    manifest_file = registry_copy.path("sentiment") / "manifest.json"
    raw = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**raw, "format_version": 99, "kind": {"a shape": "we cannot read"}}))
    with pytest.raises(RegistryError, match=r"written by a newer mtlora \(manifest format 99; .*upgrade mtlora"):
        registry_copy.manifest("sentiment")


def test_manifests_list_through_the_api(trained_project: Path) -> None:
    names = [m.name for m in mtlora.list_adapters(trained_project)]
    assert names == ["paraphrase", "qa", "sentiment", "similarity", "support"]


def test_stored_files_get_the_umask_mode_not_0600(trained_project: Path) -> None:
    """tempfile and safetensors write 0600: a registry shared by a team must stay readable by it."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder = load_config(trained_project).registry / "sentiment"
    modes = {file.name: file.stat().st_mode & 0o777 for file in folder.iterdir()}
    assert {"adapter_model.safetensors", "manifest.json"} <= modes.keys()
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_trainable_share_too_small_for_two_decimals_is_not_shown_as_none() -> None:
    from mtlora.registry import ParameterCounts, share_of

    assert share_of(770, 22_713_986) == "<0.01%"  # a head-only baseline on MiniLM read "0.00%"
    assert (share_of(0, 100), share_of(1, 200), share_of(1_491, 100_000)) == ("0.00%", "0.50%", "1.49%")
    assert ParameterCounts(trainable=770, total=22_713_986).share == "<0.01%"


def test_a_registry_that_is_a_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    """It read as "no adapters in mtlora.yaml yet: train them first"."""
    (tmp_path / "mtlora.yaml").write_text("tasks: []\n")
    with pytest.raises(mtlora.RegistryError, match=r"registry .*mtlora.yaml is a file, not a folder; set registry:"):
        Registry(tmp_path / "mtlora.yaml")


def test_counts_from_before_saved_ranks_stored_what_trained() -> None:
    from mtlora.registry import ParameterCounts

    assert ParameterCounts.model_validate_json('{"trainable": 5, "total": 10}').stored == 5
    assert ParameterCounts(trainable=5, total=10, stored=None).stored == 5
    assert ParameterCounts(trainable=5, total=10, stored=3).stored == 3
