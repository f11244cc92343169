"""The version policy a model's owner wrote, kept while endpoints manage config.pbtxt's.

Endpoints serve exactly the versions they route to (and those already loaded) by writing a
``specific`` version policy into the model's ``config.pbtxt``: that is what Triton reads on
every load. The policy that was there before (none: Triton's default, the latest version)
is kept in ``<repo>/.tritonctl/version_policies.json``, so that ``tritonctl load NAME``
still serves what the model's owner asked for (a newly published version, say) beside the
versions endpoints route to, and it is put back once no endpoint needs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from manager.repository import read_json_entries, write_json_atomic
from manager.settings import META_DIR

POLICIES_FILE = "version_policies.json"
_KEY = "policies"


def _path(repo: Path) -> Path:
    return Path(repo) / META_DIR / POLICIES_FILE


def _lock(repo: Path) -> FileLock:
    path = _path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(POLICIES_FILE + ".lock")), timeout=60)


def owner_policy(repo: Path, model: str, config: mc.ModelConfig) -> mc.ModelVersionPolicy:
    """The version policy ``model``'s owner wrote: the kept one while endpoints manage the
    model's config, else ``config``'s own."""
    entry = read_json_entries(_path(repo), _KEY, "version policies").get(model)
    if entry is None:
        return config.version_policy
    policy = mc.ModelVersionPolicy()
    json_format.ParseDict(entry.get("policy") or {}, policy)
    return policy


def kept_models(repo: Path) -> set[str]:
    """The models whose owner's policy is kept aside (endpoints manage theirs)."""
    return set(read_json_entries(_path(repo), _KEY, "version policies"))


def has_owner_policy(repo: Path, model: str) -> bool:
    """Whether ``model``'s owner policy is kept aside (endpoints manage config.pbtxt's)."""
    return model in read_json_entries(_path(repo), _KEY, "version policies")


def keep_owner_policy(repo: Path, model: str, config: mc.ModelConfig) -> None:
    """Call before tritonctl writes ``model``'s version policy: the first time, keep the
    one ``config`` (the model's config.pbtxt as it is) has."""
    with _lock(repo):
        entries = read_json_entries(_path(repo), _KEY, "version policies")
        if model in entries:
            return
        policy = json_format.MessageToDict(config.version_policy, preserving_proto_field_name=True)
        entries[model] = {"policy": policy}
        write_json_atomic(_path(repo), {_KEY: entries})


def forget_owner_policy(repo: Path, model: str) -> None:
    """Drop the kept record of ``model`` (the config it was taken from is back as it was:
    an endpoint change that kept it failed before any endpoint routed to the model)."""
    with _lock(repo):
        entries = read_json_entries(_path(repo), _KEY, "version policies")
        if entries.pop(model, None) is not None:
            write_json_atomic(_path(repo), {_KEY: entries})


def with_owner_policy(repo: Path, model: str, config: mc.ModelConfig) -> mc.ModelConfig:
    """``config`` with its owner's version policy back (none if none was kept); the kept
    record is dropped: endpoints no longer manage the model's policy."""
    with _lock(repo):
        entries = read_json_entries(_path(repo), _KEY, "version policies")
        entry = entries.pop(model, None)
        out = mc.ModelConfig()
        out.CopyFrom(config)
        out.ClearField("version_policy")
        if entry is not None:
            json_format.ParseDict(entry.get("policy") or {}, out.version_policy)
            write_json_atomic(_path(repo), {_KEY: entries})
        return out


def selected_versions(policy: mc.ModelVersionPolicy, on_disk: Sequence[int]) -> list[int]:
    """The versions ``policy`` makes Triton serve among the version folders ``on_disk``:
    latest N (default 1), all, or specific."""
    ordered = sorted(on_disk)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        return sorted(set(policy.specific.versions) & set(ordered))
    count = int(policy.latest.num_versions) if choice == "latest" else 1
    return ordered[-max(count, 1) :]
