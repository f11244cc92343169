"""Transformers folders: a tokenizer is required, and a task head is not silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from manager.cli import main
from manager.errors import ArtifactError
from manager.publish import PublishOptions, publish


def hf_folder(
    path: Path, *, tokenizer: str | None = "vocab.txt", architectures: list[str] | None = None
) -> Path:
    """A folder that inspects as transformers (its weights are not loaded at publish)."""
    path.mkdir(parents=True)
    config: dict[str, object] = {"model_type": "bert", "hidden_size": 8}
    if architectures is not None:
        config["architectures"] = architectures
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer_config.json").write_text("{}")
    if tokenizer:
        (path / tokenizer).write_text("[PAD]\n[UNK]\n")
    return path


def test_a_folder_without_a_tokenizer_is_refused(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", tokenizer=None)
    with pytest.raises(ArtifactError, match=r"has no tokenizer .* every word would be \[UNK\]"):
        publish(repo, "emb", folder)
    assert repo.models() == []


@pytest.mark.parametrize("tokenizer", ["tokenizer.json", "vocab.txt", "vocab.json", "spiece.model"])
def test_any_tokenizer_vocabulary_is_enough(repo, tmp_path, tokenizer):
    result = publish(repo, "emb", hf_folder(tmp_path / "hf", tokenizer=tokenizer))
    assert result.format == "transformers" and result.notices == []


@pytest.mark.parametrize(
    "arch",
    ["BertForSequenceClassification", "RobertaForTokenClassification", "BertForQuestionAnswering"],
)
def test_a_task_head_is_refused_unless_asked_to_serve_embeddings(repo, tmp_path, arch):
    folder = hf_folder(tmp_path / "hf", architectures=[arch])
    with pytest.raises(ArtifactError, match=f"is a {arch}: .* --as-embedder"):
        publish(repo, "clf", folder)
    assert repo.models() == []
    result = publish(repo, "clf", folder, PublishOptions(as_embedder=True))
    assert result.notices == [
        f"{arch} is served as a text embedder of its base model (--as-embedder): the head is "
        "not used"
    ]


def test_a_language_model_head_is_published_with_a_notice(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForMaskedLM"])
    result = publish(repo, "mlm", folder)
    assert (
        len(result.notices) == 1
        and "BertForMaskedLM is served as a text embedder" in (result.notices[0])
    )


def test_a_sentence_transformers_folder_is_an_embedder_whatever_its_architecture(repo, tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"])
    (folder / "modules.json").write_text("[]")
    assert publish(repo, "st", folder).notices == []


def test_cli_prints_the_notice_and_refuses_a_classifier_in_one_line(tmp_path):
    folder = hf_folder(tmp_path / "hf", architectures=["BertForSequenceClassification"])
    args = ["--repo", str(tmp_path / "repo"), "publish", "clf", str(folder)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "--as-embedder" in refused.stderr
    assert "Traceback" not in refused.output
    ok = CliRunner().invoke(main, [*args, "--as-embedder"])
    assert ok.exit_code == 0, ok.output
    assert "note BertForSequenceClassification is served as a text embedder" in ok.stderr
    as_json = CliRunner().invoke(main, [*args, "--as-embedder", "--json"])
    assert json.loads(as_json.stdout)["notices"][0].startswith("BertForSequenceClassification")


def sentence_transformers_folder(path: Path, **pooling: bool) -> Path:
    folder = hf_folder(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = {
        "pooling_mode_mean_tokens": False,
        **{f"pooling_mode_{k}": v for k, v in pooling.items()},
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("mode", ["mean_tokens", "cls_token", "max_tokens"])
def test_a_sentence_transformers_pooling_the_runner_reproduces_is_published(repo, tmp_path, mode):
    result = publish(repo, "st", sentence_transformers_folder(tmp_path / "hf", **{mode: True}))
    assert (result.path / "hf" / "1_Pooling" / "config.json").is_file()


@pytest.mark.parametrize(
    "pooling",
    [{"weightedmean_tokens": True}, {"lasttoken": True}, {"cls_token": True, "max_tokens": True}],
)
def test_a_sentence_transformers_pooling_the_runner_cannot_serve_is_refused_at_publish(
    repo, tmp_path, pooling
):
    folder = sentence_transformers_folder(tmp_path / "hf", **pooling)
    with pytest.raises(
        ArtifactError,
        match=r"cannot be served by tritonctl's transformers runner: .*1_Pooling.config.json: "
        r"pooling \[.*\] is not supported",
    ):
        publish(repo, "st", folder)
    assert repo.models() == []


def test_a_sentence_transformers_module_the_runner_cannot_serve_is_refused_at_publish(
    repo, tmp_path
):
    folder = sentence_transformers_folder(tmp_path / "hf", mean_tokens=True)
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(ArtifactError, match="module 'Dense' is not supported"):
        publish(repo, "st", folder)


@pytest.mark.parametrize(
    ("file", "text", "match"),
    [
        ("modules.json", "{not json", "not valid JSON|Expecting"),
        ("modules.json", '{"0": "Pooling"}', "expected a list of modules"),
        ("sentence_bert_config.json", "{not json", "not valid JSON"),
        ("sentence_bert_config.json", "[1]", "expected an object of settings"),
    ],
)
def test_malformed_sentence_transformers_metadata_is_an_artifact_error(
    repo, tmp_path, file, text, match
):
    folder = hf_folder(tmp_path / "hf")
    if file != "modules.json":
        (folder / "modules.json").write_text("[]")
    (folder / file).write_text(text)
    with pytest.raises(ArtifactError, match=match):
        publish(repo, "emb", folder)
    assert repo.models() == []
