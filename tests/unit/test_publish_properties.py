"""Property: any name and any dims either publish a parseable config or are refused cleanly."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manager.errors import ManagerError
from manager.modelconfig import read_config
from manager.names import validate_model_name
from manager.publish import PublishOptions, publish
from manager.repository import Repository
from tests.modelfactory import make_onnx

names = st.one_of(
    st.text(min_size=0, max_size=20),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,15}", fullmatch=True),
)
dims = st.lists(
    st.one_of(st.integers(min_value=1, max_value=6), st.just("n")), min_size=1, max_size=3
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, in_dims=dims, batch=st.sampled_from([0, 4]))
def test_random_names_and_dims_publish_or_are_refused_cleanly(name, in_dims, batch):
    work = Path(tempfile.mkdtemp())
    try:
        artifact = work / "m.onnx"
        make_onnx(artifact, in_dims=(*in_dims, 3))
        repo = Repository(work / "repo")
        try:
            result = publish(
                repo, name, artifact, PublishOptions(runtime="native", max_batch_size=batch)
            )
        except ManagerError:
            # refused: nothing may be visible in the repository
            assert repo.models() == []
            return
        validate_model_name(name)
        config = read_config(repo.config_path(name))
        assert config.name == name
        assert config.max_batch_size == batch
        expected = [-1 if d == "n" else d for d in (*in_dims, 3)]
        if batch:
            assert expected[0] == -1
            expected = expected[1:]
        assert list(config.input[0].dims) == expected
        assert repo.versions(name) == [result.version]
    finally:
        shutil.rmtree(work, ignore_errors=True)
